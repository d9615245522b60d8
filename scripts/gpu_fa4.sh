#!/usr/bin/env bash
# FlashAttention-4 beside hwattn, cuDNN, FA2 and Flex in one `hwattn bench` run on the lent GPU (no network there).
# The wheels travel in two calls while the machine stays warm (idle release ~30 s; 64 MiB a call):
#   here:      bash scripts/gpu_wheels.sh fa4                  (fills the ignored .fa/a and .fa/b)
#   call 1:    mkdir -p /tmp/fa/a && cp .fa/a/* /tmp/fa/a/     carry [".fa/a"]
#   call 2:    bash scripts/gpu_fa4.sh                         carry [".fa/b"]
# env: BUDGET (s, default 570), BENCH / BENCH2 (hwattn bench arguments; BENCH2 optional, a second grid).
# Checks FA4 against float64 first (out and grads), then benches; falls back to flash-attn-4 4.0.0b40 if b36
# does not import. Results under $OUT/fa4.
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
import time, torch, torch.nn.functional as F
from importlib.metadata import version
from flash_attn.cute import flash_attn_func
print("flash-attn-4", version("flash-attn-4"), "cutlass-dsl", version("nvidia-cutlass-dsl"), torch.__version__)
for causal in (False, True):
    q, k, v = (torch.randn(2, 1000, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    t = time.time(); o = flash_attn_func(q, k, v, causal=causal)[0]; o.backward(torch.ones_like(o)); torch.cuda.synchronize()
    qd, kd, vd = (x.detach().double().transpose(1, 2).requires_grad_() for x in (q, k, v))
    ref = F.scaled_dot_product_attention(qd, kd, vd, is_causal=causal); ref.backward(torch.ones_like(ref))
    e = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
    print(f"fa4 causal={causal}: out {e(o, ref.transpose(1, 2)):.1e} dq {e(q.grad, qd.grad.transpose(1, 2)):.1e} "
          f"dk {e(k.grad, kd.grad.transpose(1, 2)):.1e} dv {e(v.grad, vd.grad.transpose(1, 2)):.1e}  first call {time.time() - t:.0f}s")
PY
timeout 150 python3 /tmp/fa/smoke.py > $W/smoke.log 2>&1 || { tail -5 $W/smoke.log; echo "b36 failed; trying b40"; inst $(ls /tmp/fa/w/*.whl | grep -v flash_attn_4) .fa/b/alt/*.whl; timeout 120 python3 /tmp/fa/smoke.py > $W/smoke.log 2>&1; }
tail -4 $W/smoke.log
left=$(( DEADLINE - $(date +%s) - 10 ))
echo "=== bench (limit ${left}s) ==="
timeout $left python3 scripts/gpu_flash.py --out $W/bench --sections bench --bench-args "${BENCH:---d 128 --n 2048,4096,8192,16384 --providers hwattn,sdpa_cudnn,sdpa_flash,flex,fa4 --rounds 2}" > $W/bench.log 2>&1
echo "bench rc=$?"; grep -v "^$" $W/bench.log | grep -v "^best " | tail -16
if [ -n "${BENCH2:-}" ]; then
  left=$(( DEADLINE - $(date +%s) - 10 )); echo "=== bench2 (limit ${left}s) ==="
  timeout $left python3 scripts/gpu_flash.py --out $W/bench2 --sections bench --bench-args "$BENCH2" > $W/bench2.log 2>&1
  echo "bench2 rc=$?"; grep -v "^$" $W/bench2.log | grep -v "^best " | tail -16
fi
echo "total $(( $(date +%s) - T0 ))s"
