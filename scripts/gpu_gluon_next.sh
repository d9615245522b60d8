#!/usr/bin/env bash
# GPU calls for issue 7 (docs/hopper.md, last sections; run on an H100 on 2026-12-06:
# docs/results/h100-2026-12-06/). Sections, in the order given (default: all; "suite" fills most of one 600 s
# call, bwd + fp8 + diagnose a second, c3 a third):
#  suite     the GPU suite of the exact kernel with HWATTN_FWD_KERNEL=auto, -v so that every result is named as
#            it lands; the failed ones again, alone, with their tracebacks;
#  bwd       the Gluon backward experiment: float64 check, then TFLOP/s beside the portable backward and cuDNN's;
#  fused     the same for the one-launch Gluon backward (FA3's five matmuls, dQ by TMA reduce-add);
#  fp8       the FP8 variant of the Gluon forward: float64 check, then TFLOP/s beside the portable FP8 forward;
#  c3        three consumer warpgroups (192-row tiles) against two at D = 64 (check, then forward TFLOP/s);
#  diagnose  is the short causal forward host-bound? `hwattn diagnose attention` (overhead verdict) at
#            D = 128, N = 1024, B = 16, causal, with auto (not yet run).
#     bash scripts/gpu_gluon_next.sh suite; ... bwd fp8 diagnose; ... c3        (on the device; writes under $OUT)
set -u
mkdir -p "$OUT"
sections="${*:-suite bwd fp8 c3 diagnose}"
for section in $sections; do
    case "$section" in
    suite)
        HWATTN_FWD_KERNEL=auto timeout "${SUITE_S:-330}" python -m pytest -v -m gpu tests/ops/test_flash_hopper.py \
            tests/ops/test_flash.py -n 8 -p no:cacheprovider > "$OUT/suite_auto.log" 2>&1
        echo "suite (auto): $(grep -c ' PASSED' "$OUT/suite_auto.log") passed," \
             "$(grep -c ' FAILED' "$OUT/suite_auto.log") failed"
        failed=$(grep -o 'FAILED tests/[^ ]*' "$OUT/suite_auto.log" | sed 's/^FAILED //' | sort -u)
        echo "$failed"
        grep -E '^E  ' "$OUT/suite_auto.log" | head -30
        if [ -n "$failed" ]; then  # again, alone, with their tracebacks
            timeout 120 python -m pytest -v --tb=short -n 4 -p no:cacheprovider $failed > "$OUT/suite_again.log" 2>&1
            echo "the failed ones again:"
            grep -E '(PASSED|FAILED|^E  )' "$OUT/suite_again.log" | head -40
        fi ;;
    bwd)
        timeout "${BWD_S:-200}" python scripts/exp_gluon_bwd.py --check --bench > "$OUT/gluon_bwd.log" 2>&1
        echo "gluon backward rc=$?"; tail -25 "$OUT/gluon_bwd.log" ;;
    fused)
        timeout "${FUSED_S:-400}" python scripts/exp_gluon_bwd.py --check --bench --variants fused \
            --d "${FUSED_D:-128,64}" --n "${FUSED_N:-1024,4096,16384}" > "$OUT/gluon_fused.log" 2>&1
        echo "gluon fused backward rc=$?"; grep -v "^OK " "$OUT/gluon_fused.log" | tail -30; grep -c "^OK " "$OUT/gluon_fused.log" ;;
    fp8)
        timeout "${FP8_S:-150}" python scripts/gpu_gluon.py --out "$OUT/fp8" --sections fp8 > "$OUT/gluon_fp8.log" 2>&1
        echo "gluon fp8 rc=$?"; tail -12 "$OUT/gluon_fp8.log" ;;
    c3)
        timeout "${C3_S:-250}" python scripts/gpu_gluon.py --out "$OUT/c3" --sections check,bench --d 64 \
            --n 1024,4096,16384 --variants default,c3 > "$OUT/gluon_c3.log" 2>&1
        echo "gluon c3 rc=$?"; grep -v "OK " "$OUT/gluon_c3.log" | tail -10 ;;
    diagnose)
        HWATTN_FWD_KERNEL=auto timeout 150 python -c "from hwattn.cli import main; main('diagnose attention --batch 16 \
--n 1024 --heads 16 --d 128 --causal --impl hwattn,sdpa'.split())" > "$OUT/diagnose.log" 2>&1
        echo "diagnose rc=$?"; tail -25 "$OUT/diagnose.log" ;;
    *) echo "unknown section $section (suite, bwd, fused, fp8, c3, diagnose)"; exit 2 ;;
    esac
done
