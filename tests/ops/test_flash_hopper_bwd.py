"""The one-launch Gluon Hopper backward (hwattn/ops/flash/hopper_bwd.py).

On the CPU: its sm_90 compile (the structure: warps, register reallocation, TMA loads and reduce-adds, the five
block matmuls a step) and the dispatch off Hopper (HWATTN_BWD_KERNEL=gluon falls back and says so). On an sm_90
GPU (`-m gpu`): its gradients against float64 over the shapes that break naive kernels.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from hwattn import reference
from hwattn.ops.flash import flash_attention, hopper
from hwattn.testing import rel_err

needs_gluon = pytest.mark.skipif(not hopper.HAVE_GLUON, reason="this triton has no Gluon Hopper API")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

_COMPILE = """
import json, sys, torch
from hwattn.ops.flash import hopper_bwd
out = []
for head_dim, causal, dtype, group in json.loads(sys.argv[1]):
    k = hopper_bwd.compile_sm90(head_dim, causal, getattr(torch, dtype), group)
    ptx = k.asm["ptx"]
    out.append(dict(shared=k.metadata.shared, warps=k.metadata.num_warps, wgmma=ptx.count("wgmma.mma_async"),
                    setmaxnreg=ptx.count("setmaxnreg"), tma_load=ptx.count("cp.async.bulk.tensor.3d.shared"),
                    tma_reduce=ptx.count("cp.reduce.async.bulk.tensor.3d.global.shared"),
                    atomics=ptx.count("atom.global") + ptx.count("red.global")))
print("RESULT" + json.dumps(out))
"""


@needs_gluon
def test_compiles_for_sm90_with_fa3s_backward_structure():
    cases = [(128, False, "bfloat16", 1), (128, True, "float16", 4), (64, True, "bfloat16", 2)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps(cases)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT")[-1])
    for (head_dim, _, _, _), r in zip(cases, results):
        assert r["shared"] <= 232448, r          # sm_90's 227 KB per block
        assert r["warps"] == 12, r               # two consumer warpgroups + the loader's, rounded up
        assert r["setmaxnreg"] > 0, r
        # per consumer and step: S and dP (head_dim / 16 each), dV and dK (64 / 16 each), dQ (2 x 64 / 16)
        assert r["wgmma"] == 2 * (2 * head_dim // 16 + 4 * 64 // 16), r
        # dQ leaves by TMA reduce-add alone, no per-element atomics
        assert r["tma_load"] > 0 and r["tma_reduce"] > 0 and r["atomics"] == 0, r


def _qkv(B, n_q, n_k, h, h_kv, d, dtype, device):
    return tuple(torch.randn(B, n, heads, d, dtype=dtype, device=device).requires_grad_()
                 for n, heads in ((n_q, h), (n_k, h_kv), (n_k, h_kv)))


def _on_hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def test_forced_gluon_backward_off_hopper_falls_back_and_says_so(monkeypatch, device):
    if device == "cuda" and _on_hopper():
        pytest.skip("on sm_90 the Gluon backward runs")
    from hwattn.ops.flash import backward
    monkeypatch.setattr(backward, "_BWD_FALLBACKS_SAID", set())
    monkeypatch.setenv("HWATTN_BWD_KERNEL", "gluon")
    q, k, v = _qkv(1, 33, 40, 2, 1, 64, torch.float16, device)
    out = flash_attention(q, k, v, causal=True)
    do = torch.randn_like(out)
    with pytest.warns(UserWarning, match="HWATTN_BWD_KERNEL=gluon: .*portable backward"):
        grads = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    refs = torch.autograd.grad(reference.attention(q64, k64, v64, causal=True), (q64, k64, v64), do.double())
    for got, want in zip(grads, refs):
        assert rel_err(got, want) <= 2e-3


def test_bad_backward_kernel_is_refused(monkeypatch, device):
    monkeypatch.setenv("HWATTN_BWD_KERNEL", "fast")
    q, k, v = _qkv(1, 8, 8, 1, 1, 16, torch.float16, device)
    out = flash_attention(q, k, v)
    with pytest.raises(ValueError, match="HWATTN_BWD_KERNEL must be one of"):
        out.sum().backward()


def test_unsupported_cases_say_why():
    from hwattn.ops.flash.backward import _hopper_bwd_reason, _tma_ready
    q, k, v = (x.detach() for x in _qkv(1, 64, 64, 4, 4, 128, torch.float16, "cpu"))
    assert "sm_90" in _hopper_bwd_reason(q, k, v, False, None, None) or not hopper.HAVE_GLUON
    assert "dtype" in _hopper_bwd_reason(q.float(), k.float(), v.float(), False, None, None) or not hopper.HAVE_GLUON
    # dO in another layout is copied to one TMA can read, not refused
    do = torch.randn(1, 4, 64, 128, dtype=torch.float16).transpose(1, 2)
    ready = _tma_ready(do)
    assert ready.is_contiguous() and torch.equal(ready, do)
    assert _tma_ready(ready) is ready


@pytest.mark.gpu
@pytest.mark.skipif(not (_on_hopper() and hopper.HAVE_GLUON), reason="needs an sm_90 GPU and Gluon")
@pytest.mark.parametrize("n_q, n_k, group, d, causal, dtype", [
    (1, 1, 1, 128, False, torch.bfloat16), (1, 300, 1, 128, True, torch.bfloat16),
    (300, 1, 1, 128, True, torch.bfloat16), (1000, 1000, 2, 128, True, torch.bfloat16),
    (777, 1500, 4, 128, True, torch.float16), (1500, 777, 1, 64, True, torch.float16),
    (513, 1025, 8, 64, False, torch.bfloat16), (2048, 2048, 1, 128, False, torch.bfloat16),
    (4096, 4096, 2, 128, True, torch.bfloat16), (3000, 3000, 1, 64, False, torch.float16),
])
def test_gpu_gradients_match_float64(monkeypatch, n_q, n_k, group, d, causal, dtype):
    monkeypatch.setenv("HWATTN_BWD_KERNEL", "gluon")
    torch.manual_seed(n_q + 7 * n_k)
    q, k, v = _qkv(2, n_q, n_k, 8, 8 // group, d, dtype, "cuda")
    out = flash_attention(q, k, v, causal=causal)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference.attention(q64, k64, v64, causal=causal, softmax_scale=1 / math.sqrt(d))
    refs = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    bound = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for name, got, want in zip(("dq", "dk", "dv"), grads, refs):
        assert not got.isnan().any(), name
        assert rel_err(got, want) <= bound, (name, rel_err(got, want))


@pytest.mark.gpu
@pytest.mark.skipif(not (_on_hopper() and hopper.HAVE_GLUON), reason="needs an sm_90 GPU and Gluon")
def test_gpu_deterministic_mode_runs_the_portable_backward(monkeypatch):
    monkeypatch.setenv("HWATTN_BWD_KERNEL", "gluon")
    q, k, v = _qkv(1, 512, 512, 4, 4, 128, torch.bfloat16, "cuda")
    out = flash_attention(q, k, v, causal=True)
    do = torch.randn_like(out)
    torch.use_deterministic_algorithms(True)
    try:
        first = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        second = torch.autograd.grad(out, (q, k, v), do)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
