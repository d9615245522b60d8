#!/usr/bin/env bash
# One GPU call, several checks: run the named sections in order, each under its own time limit, logs and
# CSVs under $OUT/work, then one archive $OUT/results.tgz (the device tool returns at most 8 files).
#   bash scripts/gpu_all.sh tests bench masks        (sections below; unknown names are refused)
# Each section's last lines are printed as it ends, so the call's output tail holds the figures.
# ab: scripts/ab_flash.py over AB_ROOTS (default .snap_old,. : `git archive HEAD hwattn | tar -x -C .snap_old`, carried).
set -u
OUT=${OUT:-results/gpu_all}
W=$OUT/work
mkdir -p "$W"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T0=$(date +%s)

run() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    local t=$(date +%s)
    echo "=== $name (limit ${limit}s) ==="
    timeout --kill-after=10 "$limit" "$@" > "$W/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL_LINES:-25}" "$W/$name.log"
    echo "=== $name: rc=$rc, $(( $(date +%s) - t ))s (total $(( $(date +%s) - T0 ))s) ==="
}

for s in "$@"; do
    case "$s" in
        env) run env 60 $PY -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), torch.backends.cudnn.version())" ;;
        tests) HWATTN_AUTOTUNE=0 run tests "${TESTS_LIMIT:-150}" $PY -m pytest -q -m "${TESTS_MARK:-gpu}" -p no:cacheprovider ${TESTS:-tests/ops} ;;
        bench) run bench "${BENCH_LIMIT:-330}" $PY scripts/gpu_flash.py --out "$W/bench" --sections bench \
                   --bench-args "${BENCH_ARGS:---d 128 --n 2048,4096,8192,16384 --providers hwattn,sdpa_cudnn,sdpa_flash,flex}" ;;
        bench64) run bench64 200 $PY scripts/gpu_flash.py --out "$W/bench64" --sections bench \
                     --bench-args "--d 64 --n 2048,8192,16384 --providers hwattn,sdpa_cudnn,sdpa_flash,flex" ;;
        ab) run ab "${AB_LIMIT:-240}" $PY scripts/ab_flash.py --roots "${AB_ROOTS:-.snap_old,.}" --out "$W/ab" ${AB_ARGS:-} ;;
        big) run big 90 $PY scripts/gpu_flash.py --out "$W/big" --sections big ;;
        masks) HWATTN_AUTOTUNE=${MASKS_AUTOTUNE:-0} run masks "${MASKS_LIMIT:-150}" $PY scripts/gpu_masks.py --out "$W/masks" ${MASKS_ARGS:-} ;;
        varlen) run varlen "${VARLEN_LIMIT:-150}" $PY scripts/gpu_varlen_decode.py --out "$W/varlen" \
                    --budget "${VARLEN_BUDGET:-120}" ${VARLEN_ARGS:-} ;;
        hopper) run hopper "${HOPPER_LIMIT:-200}" $PY scripts/exp_hopper_fwd.py --out "$W/hopper" --n "${HOPPER_N:-16384}" \
                    --configs "${HOPPER_CONFIGS:-6}" --modes "${HOPPER_MODES:-}" ;;
        fp8) HWATTN_AUTOTUNE=${FP8_AUTOTUNE:-1} run fp8 "${FP8_LIMIT:-200}" $PY scripts/gpu_fp8.py --out "$W/fp8" ${FP8_ARGS:-} ;;
        fp8exp) run fp8exp "${FP8EXP_LIMIT:-200}" $PY scripts/exp_fp8_fwd.py --out "$W/fp8exp" ${FP8EXP_ARGS:-} ;;
        lowrank) run lowrank "${LOWRANK_LIMIT:-200}" bash -c "${LOWRANK_CMD:?set LOWRANK_CMD}" ;;
        *) echo "unknown section $s" ;;
    esac
done
tar czf "$OUT/results.tgz" -C "$W" . && ls -la "$OUT/results.tgz"
echo "total $(( $(date +%s) - T0 ))s"
