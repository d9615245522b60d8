#!/usr/bin/env bash
# FlashAttention-4 beside hwattn, cuDNN, FA2 and Flex in one `hwattn bench` run on the lent GPU (no network there).
# The wheels travel in two calls while the machine stays warm (idle release ~30 s; 64 MiB a call):
#   here:      bash scripts/gpu_wheels.sh fa4                  (fills the ignored .fa/a and .fa/b)
#   call 1:    mkdir -p /tmp/fa/a && cp .fa/a/* /tmp/fa/a/     carry [".fa/a"]
#   call 2:    bash scripts/gpu_fa4.sh                         carry [".fa/b"]
# env: BUDGET (s, default 570), BENCH / BENCH2 (hwattn bench arguments; BENCH2 optional, a second grid).
# Checks FA4 against float64 first (out and grads), then benches; falls back to flash-attn-4 4.0.0b40 if b36
# does not import. Results under $OUT/fa4 (bench1/, bench2/).
set -u
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET:-570}))
W=$OUT/fa4; mkdir -p $W /tmp/fa/w
cat /tmp/fa/a/a1.part .fa/b/a2.part > /tmp/fa/w/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
cp /tmp/fa/a/*.whl /tmp/fa/w/
export PYTHONUNBUFFERED=1
inst() { rm -rf /tmp/fa4site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fa4site "$@" > $W/pip.log 2>&1; tail -3 $W/pip.log; }
inst /tmp/fa/w/*.whl
export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages
cat > /tmp/fa/smoke.py <<'PY'
import sys, time, torch
from importlib.metadata import version
sys.path.insert(0, ".")
from flash_attn.cute import flash_attn_func
from hwattn.reference import attention
from hwattn.testing import rel_err
print("flash-attn-4", version("flash-attn-4"), "cutlass-dsl", version("nvidia-cutlass-dsl"), torch.__version__)
for causal in (False, True):
    q, k, v = (torch.randn(2, 1000, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    t = time.time(); o = flash_attn_func(q, k, v, causal=causal)[0]; o.backward(torch.ones_like(o)); torch.cuda.synchronize()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = attention(q64, k64, v64, causal=causal); ref.backward(torch.ones_like(ref))
    errs = " ".join(f"{n} {rel_err(a, b):.1e}" for n, a, b in
                    (("out", o, ref), ("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad), ("dv", v.grad, v64.grad)))
    print(f"fa4 causal={causal}: {errs}  first call {time.time() - t:.0f}s")
PY
timeout 150 python3 /tmp/fa/smoke.py > $W/smoke.log 2>&1 || { tail -5 $W/smoke.log; echo "b36 failed; trying b40"; inst $(ls /tmp/fa/w/*.whl | grep -v flash_attn_4) .fa/b/alt/*.whl; timeout 120 python3 /tmp/fa/smoke.py > $W/smoke.log 2>&1; }
tail -4 $W/smoke.log
i=0
for grid in "${BENCH:---d 128 --n 2048,4096,8192,16384 --providers hwattn,sdpa_cudnn,sdpa_flash,flex,fa4 --rounds 2}" \
            ${BENCH2:+"$BENCH2"}; do
  i=$((i + 1)); left=$(( DEADLINE - $(date +%s) - 10 )); echo "=== bench$i (limit ${left}s): $grid ==="
  timeout $left python3 scripts/gpu_flash.py --out $W/bench$i --sections bench --bench-args "$grid" > $W/bench$i.log 2>&1
  echo "bench$i rc=$?"; grep -v "^$" $W/bench$i.log | grep -v "^best " | tail -16
done
echo "total $(( $(date +%s) - T0 ))s"
