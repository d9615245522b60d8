"""The Gluon Hopper forward (hwattn/ops/flash/hopper.py).

Triton's interpreter does not run Gluon, so on the CPU the kernel is compiled for sm_90 (in a subprocess
without TRITON_INTERPRET, which the rest of the suite sets) and its PTX checked for what the design relies on;
its numbers are checked against the float64 reference on a GPU (marked gpu) and by scripts/gpu_gluon.py.
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
from hwattn.ops.flash.common import LN2
from hwattn.testing import rel_err

needs_gluon = pytest.mark.skipif(not hopper.HAVE_GLUON, reason="this triton has no Gluon Hopper API")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

_COMPILE = """
import json, sys, torch
from hwattn.ops.flash import hopper
out = []
for head_dim, causal, dtype, group, cfg in json.loads(sys.argv[1]):
    k = hopper.compile_sm90(head_dim, causal, getattr(torch, dtype), group, cfg)
    ptx = k.asm["ptx"]
    out.append(dict(shared=k.metadata.shared, warps=k.metadata.num_warps, wgmma=ptx.count("wgmma.mma_async"),
                    setmaxnreg=ptx.count("setmaxnreg"), tma_load=ptx.count("cp.async.bulk.tensor.3d.shared"),
                    tma_store=ptx.count("cp.async.bulk.tensor.3d.global.shared"), mbarrier=ptx.count("mbarrier")))
print("RESULT" + json.dumps(out))
"""


@needs_gluon
def test_compiles_for_sm90_with_the_fa3_structure():
    cases = [(128, False, "bfloat16", 1, {}), (128, True, "float16", 4, {}), (64, True, "bfloat16", 1, {}),
             (128, False, "bfloat16", 2, {"PERSISTENT": True}), (128, True, "float8_e4m3fn", 2, {}),
             (64, True, "bfloat16", 1, {"CONSUMERS": 3})]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps(cases)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT")[-1])
    for (head_dim, causal, dtype, _, cfg), r in zip(cases, results):
        k_step = 32 if dtype.startswith("float8") else 16  # wgmma's K: 32 bytes
        assert r["shared"] <= 232448, r            # sm_90's 227 KB per block
        consumers = cfg.get("CONSUMERS", 2)
        assert r["warps"] == 4 * (consumers + 1), r   # the consumer warpgroups + the loader's, rounded up
        assert r["setmaxnreg"] > 0, r              # register reallocation between the partitions
        # every consumer: S = QK^T in the prologue and loop, PV in the loop and epilogue, head_dim / k_step or
        # BLOCK_N / k_step wgmmas each
        assert r["wgmma"] == consumers * (2 * head_dim // k_step + 2 * 128 // k_step), r
        assert r["tma_load"] > 0 and r["mbarrier"] > 0, r
        # O leaves by TMA only from a 16-bit, one-tile-per-program kernel
        assert (r["tma_store"] > 0) == (not cfg.get("PERSISTENT", False) and k_step == 16), r


def _qkv(B=1, n_q=64, n_k=64, h=4, h_kv=4, d=128, dtype=torch.float16, device="cpu"):
    return tuple(torch.randn(B, n, heads, d, dtype=dtype, device=device)
                 for n, heads in ((n_q, h), (n_k, h_kv), (n_k, h_kv)))


@needs_gluon
@pytest.mark.parametrize("change, words", [
    (lambda q, k, v: (q.float(), k.float(), v.float()), "dtype"),
    (lambda q, k, v: (q[..., :96].contiguous(), k[..., :96].contiguous(), v[..., :96].contiguous()), "head_dim"),
    (lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v), "not contiguous"),
    (lambda q, k, v: (q, k, v), "sm_90"),
])
def test_unsupported_cases_say_why(change, words):
    q, k, v = change(*_qkv())
    assert words in hopper.unsupported_reason(q, k, v, False, None, None)


@needs_gluon
def test_fp8_variant_refuses_what_it_cannot_take():
    q, k, v = (x.to(torch.float8_e4m3fn) for x in _qkv(n_q=32, n_k=48, h=4, h_kv=2, d=128))
    descale = (torch.ones(1, 4), torch.ones(1, 2), torch.ones(1, 2))
    assert "descales" in hopper.unsupported_reason(q, k, v, False, None, None)
    assert "out_dtype" in hopper.unsupported_reason(q, k, v, False, None, None, descale, torch.float32)
    assert "seqlen-major" in hopper.unsupported_reason(q, k, v, False, None, None, descale, torch.bfloat16)
    v_sm = torch.empty(1, 2, 128, 48, dtype=torch.float8_e4m3fn).permute(0, 3, 1, 2)
    assert "sm_90" in hopper.unsupported_reason(q, k, v_sm, False, None, None, descale, torch.bfloat16)


@needs_gluon
def test_configs_that_cannot_run_are_refused():
    for cfg, words in [({"STAGES": 3, "CONSUMERS": 3}, "shared memory"), ({"BLOCK": 64}, "unknown keys"),
                       ({"CONSUMERS": 4}, "CONSUMERS must be")]:
        with pytest.raises(ValueError, match=words):
            hopper._checked_config({**hopper.config(128, False), **cfg}, 128, 2)
    assert hopper._checked_config({**hopper.config(64, False), "CONSUMERS": 3}, 64, 2)["CONSUMERS"] == 3


def test_config_and_preference():
    assert hopper.config(128, False, 512)["PERSISTENT"] and not hopper.config(128, True, 512)["PERSISTENT"]
    assert not hopper.config(64, False, 4096)["PERSISTENT"]
    # 192-row tiles (three consumers): D = 64, non-causal, from Nk = 4096 (measured faster there)
    assert hopper.config(64, False, 4096)["CONSUMERS"] == 3
    assert hopper.config(64, True, 16384)["CONSUMERS"] == 2 and hopper.config(64, False, 2048)["CONSUMERS"] == 2
    assert hopper.config(128, False, 16384)["CONSUMERS"] == 2
    assert hopper.preferred(128, 512, True) and not hopper.preferred(128, 512, False)
    assert hopper.preferred(128, 1024, False)
    assert hopper.preferred(64, 2048, False) and not hopper.preferred(64, 1024, True)


def test_forced_gluon_off_hopper_falls_back_and_says_so(monkeypatch, device):
    if device == "cuda" and torch.cuda.get_device_capability() == (9, 0):
        pytest.skip("on sm_90 the Gluon kernel runs")
    monkeypatch.setenv("HWATTN_FWD_KERNEL", "gluon")
    from hwattn.ops.flash import forward
    monkeypatch.setattr(forward, "_FALLBACKS_SAID", set())
    q, k, v = _qkv(n_q=33, n_k=40, h=2, h_kv=1, d=64, device=device)
    with pytest.warns(UserWarning, match="HWATTN_FWD_KERNEL=gluon: .*portable forward"):
        out = flash_attention(q, k, v, causal=True)
    ref = reference.attention(q.double(), k.double(), v.double(), causal=True)
    assert rel_err(out, ref) <= 2e-3


def test_auto_and_portable_off_hopper_run_the_portable_kernel(monkeypatch, device):
    if device == "cuda" and torch.cuda.get_device_capability() == (9, 0):
        pytest.skip("on sm_90 auto may take the Gluon kernel")
    q, k, v = _qkv(n_q=20, n_k=31, h=2, h_kv=2, d=128, device=device)
    outs = []
    for kernel in ("auto", "portable"):
        monkeypatch.setenv("HWATTN_FWD_KERNEL", kernel)
        outs.append(flash_attention(q, k, v, causal=True))
    assert torch.equal(outs[0], outs[1])


def test_bad_forward_kernel_is_refused(monkeypatch, device):
    monkeypatch.setenv("HWATTN_FWD_KERNEL", "fast")
    q, k, v = _qkv(n_q=8, n_k=8, h=1, h_kv=1, d=16, device=device)
    with pytest.raises(ValueError, match="HWATTN_FWD_KERNEL must be one of"):
        flash_attention(q, k, v)


def _on_hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not (_on_hopper() and hopper.HAVE_GLUON), reason="needs an sm_90 GPU and Gluon")
@pytest.mark.parametrize("cfg", [{"PERSISTENT": False, "CONSUMERS": 2}, {"PERSISTENT": True, "CONSUMERS": 2},
                                 {"PERSISTENT": False, "CONSUMERS": 3}],
                         ids=["grid", "persistent", "3consumers"])
@pytest.mark.parametrize("n_q, n_k, group, d, causal, dtype", [
    (1, 1, 1, 128, False, torch.bfloat16), (1, 300, 1, 128, True, torch.bfloat16),
    (300, 1, 1, 128, True, torch.bfloat16), (1000, 1000, 2, 128, True, torch.bfloat16),
    (777, 1500, 4, 128, True, torch.float16), (1500, 777, 1, 64, True, torch.float16),
    (513, 1025, 8, 64, False, torch.bfloat16), (2048, 2048, 1, 128, False, torch.bfloat16),
    (1, 4500, 2, 64, False, torch.bfloat16), (4500, 4500, 1, 64, True, torch.bfloat16),
])
def test_gpu_matches_float64(cfg, n_q, n_k, group, d, causal, dtype):
    if cfg.get("CONSUMERS") == 3 and d != 64:
        pytest.skip("three consumers' Q tiles fit shared memory at head_dim 64 only")
    torch.manual_seed(n_q + 13 * n_k)
    q, k, v = _qkv(2, n_q, n_k, 8, 8 // group, d, dtype, "cuda")
    o, lse2 = hopper.hopper_fwd(q, k, v, causal, 1 / math.sqrt(d), cfg)
    ref, ref_lse = reference.attention(q.double(), k.double(), v.double(), causal=causal, return_lse=True)
    assert rel_err(o, ref) <= (1e-2 if dtype == torch.bfloat16 else 2e-3)
    lse = torch.where(torch.isinf(lse2), torch.full_like(lse2, float("-inf")), lse2 * LN2).double()
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[finite] - ref_lse[finite]).abs().max() < 1e-3
