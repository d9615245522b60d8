#!/usr/bin/env bash
# hwattn's GPU tests, the benchmark and the warp-specialisation experiments under triton 3.9 on the lent GPU
# (which has triton 3.6). Wheels: `bash scripts/gpu_wheels.sh triton39`, then two calls while warm:
#   call 1:    mkdir -p /tmp/tw && cp .tw/a/a.part /tmp/tw/      carry [".tw/a"]
#   call 2:    bash scripts/gpu_triton39.sh                       carry [".tw/b"]
# Results under $OUT/t39. BUDGET (s, default 560) bounds the whole call; later sections get what is left.
set -u
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET:-560}))
W=$OUT/t39; mkdir -p $W /tmp/t39
[ -d /tmp/t39/triton ] || cat /tmp/tw/a.part .tw/b/b.part | xz -dc -T4 | tar xf - -C /tmp/t39 || { echo unpack failed; exit 1; }
export PYTHONPATH=/tmp/t39 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache39
sec() {  # name limit cmd...
  local name=$1 lim=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) - 5 )); [ $left -lt $lim ] && lim=$left
  [ $lim -lt 20 ] && { echo "=== $name skipped (no time) ==="; return; }
  local t=$(date +%s); echo "=== $name (limit ${lim}s) ==="
  timeout --kill-after=5 $lim "$@" > $W/$name.log 2>&1; local rc=$?
  tail -n ${TAIL:-14} $W/$name.log; echo "=== $name rc=$rc $(( $(date +%s) - t ))s ==="
}
sec env 40 python3 -c "import torch, triton; print(torch.__version__, triton.__version__, triton.__file__, torch.cuda.get_device_name())"
sec ws16 110 python3 scripts/exp_hopper_fwd.py --out $W/ws16 --n 16384 --configs 4 --modes tma,tma_ws,ptr_ws
sec fp8ws 70 python3 scripts/exp_fp8_fwd.py --out $W/fp8ws --n 16384 --modes tma,tma_ws --cfg 128x128w8s3,128x64w4s3,128x128w4s2,64x128w4s2
sec bench 170 python3 scripts/gpu_flash.py --out $W/bench --sections bench --bench-args "--d 128 --n 4096,16384 --providers hwattn,sdpa_cudnn,sdpa_flash --rounds 2"
sec fp8lib 90 python3 scripts/gpu_fp8.py --out $W/fp8 --sections bench --n 16384
TAIL=30 HWATTN_AUTOTUNE=0 sec tests 400 python3 -m pytest -q -n 8 -m gpu -p no:cacheprovider tests/ops
echo "total $(( $(date +%s) - T0 ))s"
