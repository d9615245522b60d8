"""Measured ceilings: plausible on this CPU, cached on disk keyed by device and versions, clear errors."""
import json

import pytest
import torch

from hwattn.diagnose import Ceilings, cache_dir, ceilings
from hwattn.diagnose._ceilings import dtype_key


def test_quick_cpu_ceilings_are_plausible(cpu_ceilings):
    c = cpu_ceilings
    assert c.device == "cpu" and c.threads == torch.get_num_threads()
    assert {"fp32", "fp64"} <= set(c.matmul_flops)
    # ratios, not absolute numbers: float64 does at most as much as float32 (same FMA units, half the lanes)
    assert c.matmul_flops["fp64"] < 1.5 * c.matmul_flops["fp32"]
    assert all(v > 0 for v in c.matmul_flops.values())
    assert c.bandwidth > 0 and 0 < c.op_latency_s < 1e-3
    assert c.ridge(torch.float32) == pytest.approx(c.matmul_flops["fp32"] / c.bandwidth)
    assert c.peak(torch.float8_e4m3fn)[1] == "fp32"   # not measured on CPU: falls back to fp32, says so


def test_cache_round_trip(tmp_path, monkeypatch, cpu_ceilings):
    monkeypatch.setenv("HWATTN_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    # plant a measurement where ceilings() will look, then check it is loaded rather than re-measured
    from hwattn.diagnose import _ceilings
    path = _ceilings._cache_path(torch.device("cpu"))
    planted = Ceilings.from_json(cpu_ceilings.to_json())
    planted.bandwidth = 12345.0
    path.write_text(json.dumps(planted.to_json()))
    c = ceilings("cpu", quick=True)
    assert c.from_cache and c.bandwidth == 12345.0 and c.path == str(path)
    assert str(torch.get_num_threads()) in path.name and torch.__version__.split("+")[0] in path.name
    fresh = ceilings("cpu", quick=True, refresh=True)
    assert not fresh.from_cache and fresh.bandwidth != 12345.0
    assert json.loads(path.read_text())["bandwidth"] == fresh.bandwidth  # the refresh rewrote the cache


def test_corrupt_or_stale_cache_is_remeasured(tmp_path, monkeypatch):
    monkeypatch.setenv("HWATTN_CACHE_DIR", str(tmp_path))
    from hwattn.diagnose import _ceilings
    path = _ceilings._cache_path(torch.device("cpu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    c = ceilings("cpu", quick=True)
    assert not c.from_cache and json.loads(path.read_text())["bandwidth"] == c.bandwidth
    stale = dict(json.loads(path.read_text()), versions={"torch": "0.0", "triton": "0.0"})
    path.write_text(json.dumps(stale))
    assert not ceilings("cpu", quick=True).from_cache


def test_no_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HWATTN_CACHE_DIR", str(tmp_path / "sub"))
    c = ceilings("cpu", quick=True, cache=False)
    assert c.path is None and not (tmp_path / "sub").exists()


@pytest.mark.parametrize("device,exc,match", [
    ("cuda:7", ValueError, "does not exist"),
    ("mps", ValueError, "not supported"),
    ("gpu0", ValueError, "does not parse"),
    (3, TypeError, "device must be"),
])
def test_bad_device(device, exc, match):
    if torch.cuda.is_available() and device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(exc, match=match):
        ceilings(device)


def test_bad_flags():
    with pytest.raises(TypeError, match="refresh"):
        ceilings("cpu", refresh="yes")


def test_dtype_keys():
    cpu = torch.device("cpu")
    assert dtype_key(torch.float32, cpu) == "fp32"
    assert dtype_key(torch.bfloat16, cpu) == "bf16"
    assert dtype_key(torch.float8_e4m3fn, cpu) == "fp8"
    assert dtype_key(torch.int32, cpu) is None
