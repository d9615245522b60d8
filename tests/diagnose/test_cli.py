"""`hwattn diagnose ...` end to end on CPU (small sizes), and its input parsing."""
import json
import subprocess
import sys

import pytest
import torch

from hwattn.cli import main
from hwattn.diagnose.cli import parse_dtype, parse_kwarg, parse_shape, resolve_callable


@pytest.fixture(autouse=True)
def _planted_ceilings(cpu_ceilings):
    # the commands load ceilings from the cache: plant the session's quick measurement there
    from hwattn.diagnose import _ceilings
    path = _ceilings._cache_path(torch.device("cpu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cpu_ceilings.to_json()))


@pytest.mark.parametrize("text,shape", [("4096x4096", (4096, 4096)), ("2, 3,4", (2, 3, 4)), ("(7,)", (7,)),
                                        ("8X1", (8, 1))])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["4x", "x4", "4xx4", "0x3", "-1x2", "2.5", "", "abc"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError, match="does not parse"):
        parse_shape(text)


def test_parse_helpers():
    assert parse_dtype("BF16") is torch.bfloat16 and parse_dtype("half") is torch.float16
    with pytest.raises(ValueError, match="--dtype"):
        parse_dtype("fp12")
    assert parse_kwarg("dim=-1") == ("dim", -1) and parse_kwarg("mode = fast") == ("mode", "fast")
    with pytest.raises(ValueError, match="name=value"):
        parse_kwarg("-1")
    assert resolve_callable("torch.nn.functional.gelu") is torch.nn.functional.gelu
    with pytest.raises(ValueError, match="not found"):
        resolve_callable("torch.nope")
    with pytest.raises(ValueError, match="not found"):
        resolve_callable("nopackage_xyz.f")
    with pytest.raises(TypeError, match="not a callable"):
        resolve_callable("torch.pi")
    with pytest.raises(ValueError, match="dotted name"):
        resolve_callable("softmax")


def test_op_command(tmp_path, capsys):
    out = tmp_path / "op.json"
    png = tmp_path / "op.png"
    rc = main(["diagnose", "op", "torch.softmax", "--shape", "256x256", "--kwarg", "dim=-1", "--device", "cpu",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["profile"]["flops"] == 5 * 256 * 256 and d["profile"]["bytes"] == 2 * 4 * 256 * 256
    assert d["verdict"]["label"] in ("memory-bound", "overhead-bound")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "torch.softmax" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["op", "torch.softmax", "--shape", "4xx"], "does not parse"),
    (["op", "torch.nope", "--shape", "4"], "not found"),
    (["op", "torch.pi", "--shape", "4"], "not a callable"),
    (["op", "torch.softmax", "--shape", "4", "--kwarg", "dim=0", "--device", "cuda:5"], "does not exist"),
    (["ceilings", "--device", "tpu"], "does not parse|not supported"),
    (["attention", "--impl", "naive,flashy", "--device", "cpu"], "impls"),
    (["attention", "--n", "0", "--device", "cpu", "--model-only"], "seqlen"),
])
def test_bad_input_exits_2_with_a_message(argv, match, capsys):
    if "cuda:5" in argv and torch.cuda.device_count() > 5:
        pytest.skip("has cuda:5")
    assert main(["diagnose", *argv]) == 2
    err = capsys.readouterr().err
    assert "hwattn diagnose: error:" in err
    import re
    assert re.search(match, err), err


def test_ceilings_command(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["diagnose", "ceilings", "--device", "cpu", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["matmul_flops"]["fp32"] > 0
    text = capsys.readouterr().out
    assert "copy bandwidth" in text and "(from cache)" in text


def test_attention_command(tmp_path, capsys):
    out = tmp_path / "a.json"
    png = tmp_path / "a.png"
    rc = main(["diagnose", "attention", "--n", "128", "--heads", "2", "--d", "32", "--impl", "naive,sdpa",
               "--device", "cpu", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert set(d) == {"naive", "sdpa"}
    assert d["naive"]["profile"]["bytes"] > 3 * d["sdpa"]["profile"]["bytes"]   # S and P through memory
    assert d["naive"]["profile"]["flops"] == 4 * 2 * 128 * 128 * 32
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "Attention IO model" in text and "naive (five steps" in text


def test_attention_hwattn_in_the_interpreter_or_skipped(capsys):
    rc = main(["diagnose", "attention", "--n", "64", "--heads", "1", "--d", "16", "--impl", "hwattn",
               "--dtype", "fp32", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "hwattn" in text
    assert ("Triton interpreter" in text) or ("skipped" in text)


def test_attention_model_only(capsys):
    assert main(["diagnose", "attention", "--model-only", "--n", "16384", "--d", "128", "--heads", "16",
                 "--device", "cpu", "--dtype", "bf16"]) == 0
    # 4 S (16 heads x 16384^2 x 2 bytes = 8 GiB each) + Q, K, V, O (64 MiB each) = 32.25 GiB
    assert "32.2 GiB" in capsys.readouterr().out


def test_sweep_command(capsys):
    assert main(["diagnose", "sweep", "intensity", "--values", "1,512", "--size", "256", "--device", "cpu"]) == 0
    assert "runtime follows" in capsys.readouterr().out


def test_importing_the_cli_stays_light():
    code = ("import sys, hwattn.cli, hwattn.diagnose.cli; "
            "print(sorted(m for m in ('matplotlib', 'rich', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
