"""hwattn bench: the merging of timing rounds, and one tiny CPU run of the command end to end."""
import csv
import math

import pytest

from hwattn.bench.attention import Result, best_of
from hwattn.cli import main


def _res(fwd_ms, bwd_ms, error=""):
    return Result("hwattn", 64, 128, 0, 4, 2, fwd_ms=fwd_ms, bwd_ms=bwd_ms, fwd_tflops=1 / fwd_ms,
                  bwd_tflops=1 / bwd_ms, peak_mem_mb=3.0, error=error)


def test_best_of_keeps_each_modes_fastest_median():
    merged = best_of(_res(2.0, 5.0), _res(3.0, 4.0))
    assert (merged.fwd_ms, merged.bwd_ms) == (2.0, 4.0)
    assert (merged.fwd_tflops, merged.bwd_tflops) == (1 / 2.0, 1 / 4.0)


def test_best_of_a_failed_round_does_not_hide_a_good_one():
    failed = Result("hwattn", 64, 128, 0, 4, 2, error="RuntimeError: boom")
    for merged in (best_of(failed, _res(2.0, 5.0)), best_of(_res(2.0, 5.0), failed)):
        assert (merged.fwd_ms, merged.bwd_ms, merged.error) == (2.0, 5.0, "")
    both = best_of(failed, failed)
    assert math.isnan(both.fwd_ms) and both.error == "RuntimeError: boom"


def test_bench_cli_two_rounds_on_cpu(tmp_path):
    assert main(["bench", "--d", "64", "--n", "128", "--causal", "no", "--providers", "hwattn,naive",
                 "--rounds", "2", "--tokens", "128", "--hidden", "64", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert [r["provider"] for r in rows] == ["hwattn", "naive"]  # one merged row per provider and config
    assert all(float(r["fwd_ms"]) > 0 and float(r["bwd_ms"]) > 0 for r in rows)
    assert (tmp_path / "bench.png").exists()


def test_bench_cli_refuses_bad_rounds(tmp_path):
    with pytest.raises(SystemExit, match="--rounds"):
        main(["bench", "--rounds", "0", "--out", str(tmp_path)])


def test_fa4_provider_without_the_package_says_what_to_install(monkeypatch):
    import sys

    import torch

    from hwattn.bench.attention import EXTRA_PROVIDERS
    from hwattn.bench.providers import PROVIDERS
    assert "fa4" in EXTRA_PROVIDERS
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)  # an import of it now raises ImportError
    q = torch.randn(1, 16, 2, 64)
    with pytest.raises(RuntimeError, match="flash-attn-4"):
        PROVIDERS["fa4"](q, q, q, False)
