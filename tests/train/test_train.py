"""Training harness: learning, checkpoints, resume, compare, CLI."""
from __future__ import annotations

import csv
import dataclasses
import math
import os

import pytest
import torch

from hwattn import registry
from hwattn.train.checkpoint import load_checkpoint, save_checkpoint
from hwattn.train.compare import compare, method_options_for, write_csv, write_png
from hwattn.train.config import TrainConfig, preset_config
from hwattn.train import trainer
from hwattn.train.trainer import Dataset, build_run, evaluate, train


def _tiny(**kw):
    base = dict(task="passkey", task_options=dict(seq_len=16, num_digits=1, depth=None, filler="random"),
                method="naive", dim=32, num_layers=1, num_heads=2, steps=80, batch_size=32, lr=1e-2, warmup_steps=10,
                num_eval=256, eval_every=80, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_run_learns_far_below_chance():
    """Passkey with one digit: the answer is the single digit in the context, an attention lookup. Guessing
    a digit gives loss ln 10 = 2.30, the untrained model does worse; training must take the held-out loss
    far below chance."""
    cfg = _tiny()
    task, model, device, amp = build_run(cfg)
    held_out = Dataset(task, cfg.num_eval, trainer.derive_seed(cfg.seed, 1))
    loss0, _ = evaluate(model, held_out, 64, device, amp)
    assert loss0 > math.log(10)                              # untrained: no better than guessing a digit
    r = train(cfg, progress=False)
    assert r["eval_loss"] < 0.1 * math.log(10), r
    assert r["eval_acc"] > 0.9 and r["chance_acc"] == 0.1
    assert r["steps"] == 80 and r["tokens"] == 80 * 32 * 16 and r["tokens_per_s"] > 0
    assert r["peak_mem_mb"] is None and r["stop_reason"] == "steps done"


def test_target_accuracy_stops_early():
    r = train(_tiny(steps=200, eval_every=20, target_acc=0.9), progress=False)
    assert r["steps"] < 200 and r["eval_acc"] >= 0.9 and "target" in r["stop_reason"]


def test_checkpoint_round_trip(tmp_path):
    cfg = _tiny(steps=3, eval_every=3)
    _, model, _, _ = build_run(cfg)
    opt = trainer._optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 29, (4, 16))
    model(x).sum().backward()
    opt.step()
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, model, opt, 7, cfg.to_dict(), extra={"note": "x"})
    _, fresh, _, _ = build_run(dataclasses.replace(cfg, seed=5))
    fresh_opt = trainer._optimizer(fresh, cfg, torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    meta = load_checkpoint(path, fresh, fresh_opt)
    assert meta["step"] == 7 and meta["config"] == cfg.to_dict() and meta["extra"] == {"note": "x"}
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = opt.state_dict(), fresh_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for name in sa["state"][i]:
            assert torch.equal(torch.as_tensor(sa["state"][i][name]), torch.as_tensor(sb["state"][i][name]))
    # model-only checkpoints, wrong files and wrong models are refused
    save_checkpoint(path, model, None, 1, {})
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, fresh, fresh_opt)
    _, other, _, _ = build_run(dataclasses.replace(cfg, dim=64))
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(path, other)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not an hwattn training checkpoint"):
        load_checkpoint(str(tmp_path / "foreign.safetensors"), fresh)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.safetensors"), fresh)
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(path, model, opt, -1, {})


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """Interrupted at step 10 and resumed == trained straight through (same batches, same optimizer state)."""
    cfg = _tiny(steps=16, eval_every=8, log_every=4, checkpoint_every=5, num_eval=32)
    straight = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "a")), progress=False)
    _, ref_model, _, _ = build_run(cfg)
    load_checkpoint(str(tmp_path / "a" / "last.safetensors"), ref_model)

    real = trainer._batch_indices

    def interrupted(n, bs, step, seed):
        if step == 12:
            raise KeyboardInterrupt
        return real(n, bs, step, seed)
    monkeypatch.setattr(trainer, "_batch_indices", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(cfg, out_dir=str(tmp_path / "b")), progress=False)
    monkeypatch.setattr(trainer, "_batch_indices", real)
    rows = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [4, 5, 8, 10, 12]      # logged past the step-10 checkpoint
    resumed = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "b"), resume=True), progress=False)
    _, res_model, _, _ = build_run(cfg)
    assert load_checkpoint(str(tmp_path / "b" / "last.safetensors"), res_model)["step"] == 16
    for (k, a), b in zip(ref_model.state_dict().items(), res_model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed["eval_loss"] == straight["eval_loss"]
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "log.csv"))]
    assert steps == [4, 5, 8, 10, 12, 15, 16]                       # rows after the checkpoint were replaced
    again = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "b"), resume=True), progress=False)
    assert again["stop_reason"] == "already trained" and again["eval_loss"] == straight["eval_loss"]
    with pytest.raises(ValueError, match="config differs in dim"):
        train(dataclasses.replace(cfg, dim=64, out_dir=str(tmp_path / "b"), resume=True), progress=False)
    with pytest.raises(FileNotFoundError):
        train(dataclasses.replace(cfg, out_dir=str(tmp_path / "c"), resume=True), progress=False)


def test_batches_are_a_deterministic_permutation():
    seen = torch.cat([trainer._batch_indices(10, 4, s, 3) for s in range(5)])   # 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(trainer._batch_indices(10, 4, 2, 3), trainer._batch_indices(10, 4, 2, 3))
    assert not torch.equal(seen[:10], seen[10:])


def test_answer_positions_match_mask():
    task = build_run(_tiny(task="mqar", task_options=dict(seq_len=32, num_kv_pairs=4, vocab_size=64)))[0]
    d = Dataset(task, 20, 1)
    assert d.answer_pos.shape == (20, 4)
    rows = torch.arange(20)[:, None]
    assert (d.targets[rows, d.answer_pos] != -100).all()
    assert ((d.targets != -100).sum(1) == 4).all()
    assert trainer._dataset(task, 20, 1) is trainer._dataset(task, 20, 1)       # compare reuses the data
    assert torch.equal(trainer._dataset(task, 20, 1).inputs, d.inputs)


def test_preloaded_dataset_is_used_by_train():
    """preload_dataset (data made once by a parent process for its workers): a run whose num_train and seed give
    the key trains on the given examples instead of generating its own; wrong shapes are refused."""
    cfg = _tiny(steps=4, eval_every=4, num_train=64, num_eval=32)
    task = build_run(cfg)[0]
    x, y = task.generate(64, seed=12345)
    d = trainer.preload_dataset(task, 64, trainer.derive_seed(cfg.seed, 0), x, y)
    assert trainer._dataset(task, 64, trainer.derive_seed(cfg.seed, 0)) is d and torch.equal(d.inputs, x)
    own = Dataset(task, 64, trainer.derive_seed(cfg.seed, 0))
    assert not torch.equal(own.inputs, x)                   # really other examples than the run's own
    r = train(cfg, progress=False)
    assert r["steps"] == 4
    assert trainer._dataset(task, 64, trainer.derive_seed(cfg.seed, 0)) is d
    with pytest.raises(ValueError, match="expected 10"):
        trainer.preload_dataset(task, 10, 0, x, y)
    with pytest.raises(TypeError, match="int64"):
        trainer.preload_dataset(task, 64, 0, x.to(torch.uint8), y)
    trainer._DATA_CACHE.clear()


def _fake(monkeypatch, name, **flags):
    fake = dataclasses.replace(registry.get("naive"), name=name, **flags)
    monkeypatch.setitem(registry._REGISTRY, name, fake)


def test_compare_same_budget_skips_and_survives_errors(tmp_path, monkeypatch):
    def broken_build(**kw):
        raise RuntimeError("kernel exploded")
    _fake(monkeypatch, "broken", build=broken_build)
    _fake(monkeypatch, "encoder_only", supports_causal=False)
    cfg = _tiny(steps=6, eval_every=6, num_eval=32)
    rows = compare(cfg, ["naive", "encoder_only", "broken", "naive"], str(tmp_path), progress=False)
    status = [r["status"] for r in rows]
    assert status[0] == "ok" and status[3] == "ok"
    assert status[1].startswith("skipped") and "causal" in status[1]
    assert status[2].startswith("error: RuntimeError: kernel exploded")
    assert rows[0]["steps"] == rows[3]["steps"] == 6 and rows[0]["tokens"] == rows[3]["tokens"]
    assert rows[0]["eval_loss"] == rows[3]["eval_loss"]            # same data, seed and budget
    write_csv(rows, str(tmp_path / "c.csv"))
    back = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert [r["method"] for r in back] == ["naive", "encoder_only", "broken", "naive"]
    assert float(back[0]["eval_acc"]) == rows[0]["eval_acc"]
    assert write_png(rows, str(tmp_path / "c.png"), "t") and os.path.getsize(tmp_path / "c.png") > 1000
    assert not write_png(rows[1:3], str(tmp_path / "none.png"))
    with pytest.raises(ValueError, match="unknown attention method"):
        compare(cfg, ["nope"])


def test_compare_classification_with_noncausal_method(tmp_path):
    cfg = TrainConfig(task="listops", task_options=dict(min_length=5, max_length=33, max_depth=4, seq_len=32),
                      method="naive", dim=32, num_layers=1, num_heads=2, steps=3, batch_size=8, num_eval=16,
                      eval_every=3, device="cpu", method_options={"k": 8, "softmax_scale": 0.2})
    methods = [m for m in ("naive", "linformer") if m in registry.names()]
    rows = compare(cfg, methods, None, progress=False)
    assert all(r["status"] == "ok" for r in rows), rows
    assert rows[0]["majority_acc"] is not None


def test_method_options_for():
    if "performer" in registry.names():
        assert method_options_for("performer", {"nb_features": 8, "k": 4}) == {"nb_features": 8}
    assert method_options_for("naive", {"softmax_scale": 0.1, "flash.softmax_scale": 0.2, "naive.x": 1}) == \
        {"softmax_scale": 0.1, "x": 1}


@pytest.mark.parametrize("kw, match", [
    (dict(steps=0), "steps"), (dict(lr=0), "lr"), (dict(autocast="fp8"), "autocast"), (dict(seed=-1), "seed"),
    (dict(target_acc=2), "target_acc"), (dict(num_train=0), "num_train"), (dict(task_options=[]), "task_options"),
    (dict(weight_decay=-1), "weight_decay"), (dict(warmup_steps=-1), "warmup_steps"),
])
def test_bad_train_config(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kw)


def test_bad_run_options():
    with pytest.raises(ValueError, match="CUDA"):
        train(_tiny(autocast="bf16"), progress=False)
    with pytest.raises(ValueError, match="unknown attention method"):
        train(_tiny(method="nope"), progress=False)
    with pytest.raises(ValueError, match="preset"):
        preset_config("tpu", "mqar")
    with pytest.raises(ValueError, match="unknown task"):
        preset_config("cpu", "sorting")
    with pytest.raises(TypeError, match="TrainConfig"):
        train({}, progress=False)


def test_presets_are_valid():
    from hwattn.tasks import make_task
    from hwattn.train.config import PRESETS
    for preset, tasks in PRESETS.items():
        for name in tasks:
            cfg = preset_config(preset, name)
            make_task(cfg.task, **cfg.task_options)


def test_cli_train_resume_and_compare(tmp_path, capsys):
    from hwattn.cli import main
    out = str(tmp_path / "run")
    common = ["--task", "passkey", "--seq-len", "16", "--task-opt", "num_digits=1", "--dim", "32", "--layers", "1",
              "--num-eval", "16", "--eval-every", "2", "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--steps", "2", "--out", out]) == 0
    assert {"log.csv", "config.json", "last.safetensors"} <= set(os.listdir(out))
    assert main(["train", *common, "--steps", "4", "--out", out, "--resume"]) == 0
    assert [int(r["step"]) for r in csv.DictReader(open(os.path.join(out, "log.csv")))] == [2, 4]
    cmp_out = str(tmp_path / "cmp")
    assert main(["compare", *common, "--steps", "2", "--methods", "naive", "--out", cmp_out]) == 0
    assert {"compare.csv", "compare.png", "naive"} <= set(os.listdir(cmp_out))
    assert main(["train", "--list-methods"]) == 0
    text = capsys.readouterr().out
    assert "held-out accuracy" in text and all(m in text for m in registry.names())


def test_mixture_training_with_held_out_on_the_hardest():
    cfg = _tiny(task="mqar", task_options=dict(seq_len=32, num_kv_pairs=[1, 2, 4], vocab_size=64),
                eval_task_options=dict(num_kv_pairs=4), steps=4, eval_every=4, num_eval=16, short_conv=3)
    r = train(cfg, progress=False)
    assert r["steps"] == 4 and 0 <= r["eval_acc"] <= 1
    with pytest.raises(ValueError, match="vocab_size, seq_len"):
        train(dataclasses.replace(cfg, eval_task_options=dict(seq_len=64)), progress=False)
    with pytest.raises(ValueError, match="short_conv"):
        TrainConfig(short_conv=-2)
