"""The training loop behind `hwattn train` and `hwattn compare`.

    result = train(TrainConfig(task="mqar", method="flash", ...))

Data: the task generates `num_train` examples once (seeded) and a held-out set from another seed; the
batch of step s is a deterministic function of (seed, s), so a resumed run sees exactly the batches an
uninterrupted one would. LM tasks are scored only where the target is not IGNORE_INDEX (the answers);
logits are computed only there. Mixed precision: bf16 autocast on CUDA, parameters and optimizer in fp32.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..models import TransformerConfig, build_model
from ..tasks import IGNORE_INDEX, Task, make_task
from .checkpoint import checkpoint_info, load_checkpoint, save_checkpoint
from .config import MODEL_FIELDS, TrainConfig

__all__ = ["train", "evaluate", "build_run", "derive_seed", "Dataset", "preload_dataset", "resolve_device",
           "CSV_FIELDS"]

CSV_FIELDS = ("step", "tokens", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc", "tokens_per_s",
              "elapsed_s", "peak_mem_mb")


def derive_seed(seed: int, stream: int) -> int:
    """Independent seeds for the training data (stream 0), held-out data (1), batch order (2), ..."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {name!r}")
    return dev


class Dataset:
    """Examples of one split on the host; `batch(idx, device)` moves a batch. For LM tasks with the same
    number of answers in every sequence, `answer_pos` (n, k) lists them, so no step needs a host sync.
    `data=(inputs, targets)` uses these examples instead of generating them (e.g. made once by a parent
    process for its workers); they must have num_examples rows."""

    def __init__(self, task: Task, num_examples: int, seed: int, data: tuple | None = None):
        self.task = task
        if data is None:
            self.inputs, self.targets = task.generate(num_examples, seed=seed)
        else:
            self.inputs, self.targets = data
            if not (isinstance(self.inputs, torch.Tensor) and isinstance(self.targets, torch.Tensor)):
                raise TypeError("data must be a pair of tensors (inputs, targets)")
            if self.inputs.shape[0] != num_examples or self.targets.shape[0] != num_examples:
                raise ValueError(f"data has {self.inputs.shape[0]} inputs and {self.targets.shape[0]} targets, "
                                 f"expected {num_examples} of each")
            if self.inputs.dim() != 2 or self.inputs.shape[1] != task.seq_len:
                raise ValueError(f"data inputs must be (n, {task.seq_len}), got {tuple(self.inputs.shape)}")
            if self.inputs.dtype != torch.int64:
                raise TypeError(f"data inputs must be int64, got {self.inputs.dtype}")
        self.answer_pos = None
        if task.kind == "lm":
            asked = self.targets != IGNORE_INDEX
            counts = asked.sum(1)
            if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
                k = int(counts[0])
                # stable sort puts the asked positions first, in order
                self.answer_pos = torch.sort((~asked).to(torch.int8), dim=1, stable=True).indices[:, :k].contiguous()

    def __len__(self):
        return self.inputs.shape[0]

    def batch(self, idx: torch.Tensor, device: torch.device):
        x = self.inputs[idx].to(device, non_blocking=True)
        y = self.targets[idx].to(device, non_blocking=True)
        pos = None if self.answer_pos is None else self.answer_pos[idx].to(device, non_blocking=True)
        return x, y, pos


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


_DATA_CACHE: dict = {}


def _cache_key(task: Task, num_examples: int, seed: int) -> tuple:
    return task.name, json.dumps(task.options, sort_keys=True, default=str), num_examples, seed


def _cache_put(key: tuple, data: Dataset) -> Dataset:
    _DATA_CACHE.pop(key, None)
    while len(_DATA_CACHE) >= 4:
        _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
    _DATA_CACHE[key] = data
    return data


def _dataset(task: Task, num_examples: int, seed: int) -> Dataset:
    """Dataset of (task, n, seed), reused by the next runs of this process (`compare` trains every method on
    the same data; ListOps takes ~1 ms per expression to generate). Keeps the last 4."""
    key = _cache_key(task, num_examples, seed)
    if key not in _DATA_CACHE:
        _cache_put(key, Dataset(task, num_examples, seed))
    return _DATA_CACHE[key]


def preload_dataset(task: Task, num_examples: int, seed: int, inputs: torch.Tensor, targets: torch.Tensor) -> Dataset:
    """Make (inputs, targets) the dataset of (task, num_examples, seed) for this process: a later `train` whose
    task, num_train (held-out: num_eval) and derived seed (`derive_seed(cfg.seed, 0)`, held-out 1) give this
    key uses these examples instead of generating its own. For data generated once and shared with worker
    processes (scripts/gpu_train.py); the caller answers for the examples being a valid sample of the task.
    The cache keeps the last 4 datasets."""
    return _cache_put(_cache_key(task, num_examples, seed), Dataset(task, num_examples, seed, data=(inputs, targets)))


def _batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Examples of step `step`: consecutive slices of a per-epoch seeded permutation of range(n)."""
    start = step * batch_size
    out, need = [], batch_size
    while need:
        epoch, offset = divmod(start, n)
        perm = _epoch_order(n, seed, epoch)
        take = perm[offset:offset + need]
        out.append(take)
        need -= take.numel()
        start += take.numel()
    return torch.cat(out)


def _loss(model, kind: str, x, y, pos):
    """Mean cross entropy over the answers, number correct, number of answers."""
    if kind == "cls":
        logits, tgt = model(x), y
    elif pos is not None:
        h = model.features(x)
        h = torch.gather(h, 1, pos[..., None].expand(-1, -1, h.shape[-1]))
        logits, tgt = model.logits(h), torch.gather(y, 1, pos)
    else:
        h = model.features(x)
        asked = y != IGNORE_INDEX
        logits, tgt = model.logits(h[asked]), y[asked]
    logits = logits.reshape(-1, logits.shape[-1])
    tgt = tgt.reshape(-1)
    loss = F.cross_entropy(logits, tgt)
    correct = (logits.argmax(-1) == tgt).sum()
    return loss, correct, tgt.numel()


@torch.no_grad()
def evaluate(model, data: Dataset, batch_size: int, device: torch.device, amp: bool) -> tuple[float, float]:
    """(mean loss over answers, accuracy over answers) on every example of `data`."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for s in range(0, len(data), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(data)))
        x, y, pos = data.batch(idx, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, c, n = _loss(model, data.task.kind, x, y, pos)
        loss_sum += float(loss) * n
        correct += int(c)
        count += n
    model.train(was_training)
    return loss_sum / count, correct / count


def build_run(cfg: TrainConfig):
    """(task, model on its device, device, use_bf16) for cfg; the model initialised from cfg.seed."""
    task = make_task(cfg.task, **cfg.task_options)
    device = resolve_device(cfg.device)
    amp = device.type == "cuda" if cfg.autocast == "auto" else cfg.autocast == "bf16"
    if amp and device.type != "cuda":
        raise ValueError("autocast='bf16' needs a CUDA device (bf16 matmuls in the Triton interpreter are wrong)")
    mcfg = TransformerConfig(vocab_size=task.vocab_size, dim=cfg.dim, num_layers=cfg.num_layers,
                             num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, short_conv=cfg.short_conv,
                             method=cfg.method,
                             method_options=dict(cfg.method_options), max_seqlen=task.seq_len,
                             num_classes=task.num_classes, pad_id=task.pad_id)
    torch.manual_seed(derive_seed(cfg.seed, 3))
    model = build_model(mcfg, task.kind).to(device)
    return task, model, device, amp


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _optimizer(model, cfg: TrainConfig, device):
    """AdamW; weight decay on matrices only: not on norms, biases or the embedding (its rows are updated only
    when their token occurs, so decay would shrink rare tokens' rows step after step)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and name != "embed.weight" else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, **kwargs)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Bar:
    """A rich progress bar with loss / accuracy / tokens/s. Disabled, it still prints the evaluation lines to
    `console` when one is given (silent otherwise)."""

    def __init__(self, enabled: bool, total: int, start: int, title: str, console=None):
        self.progress, self.console = None, console
        if not enabled:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=console)
        self.progress.start()
        self.task = self.progress.add_task(title, total=total, completed=start, stats="")

    def update(self, completed: int, stats: str):
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, stats=stats)

    def print(self, text: str):
        if self.progress is not None:
            self.progress.console.print(text)
        elif self.console is not None:
            self.console.print(text)

    def close(self):
        if self.progress is not None:
            self.progress.stop()


def train(cfg: TrainConfig, *, progress: bool = True, console=None) -> dict:
    """Train and evaluate one model; returns the final metrics.

    progress: show a rich progress bar (on `console`, a rich Console, or a default one); without it,
    evaluation lines still go to `console` when given, and nothing is printed otherwise.

    Returns a dict: task, method, device, params, steps (done), tokens, train_loss, train_acc (last log
    window), eval_loss, eval_acc (last evaluation, on held-out data), best_eval_acc, tokens_per_s (training
    tokens per second of training-step time, evaluation excluded), wall_s, train_s, peak_mem_mb (CUDA
    max_memory_allocated during the run, None on CPU), chance_acc, majority_acc (cls tasks), stop_reason.
    Writes log.csv, config.json and last.safetensors under cfg.out_dir when set.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    wall0 = time.perf_counter()
    task, model, device, amp = build_run(cfg)
    eval_task = make_task(cfg.task, **{**cfg.task_options, **cfg.eval_task_options})
    shape, eval_shape = ((t.vocab_size, t.seq_len, t.num_classes) for t in (task, eval_task))
    if shape != eval_shape:
        raise ValueError(f"eval_task_options {cfg.eval_task_options} change the task's (vocab_size, seq_len, "
                         f"num_classes) from {shape} to {eval_shape}; the model needs them equal")
    opt = _optimizer(model, cfg, device)
    num_train = cfg.num_train or min(cfg.steps * cfg.batch_size, 100_000)
    params = sum(p.numel() for p in model.parameters())

    start = 0
    ckpt_path = csv_path = None
    if cfg.out_dir is not None:
        os.makedirs(cfg.out_dir, exist_ok=True)
        ckpt_path = os.path.join(cfg.out_dir, "last.safetensors")
        csv_path = os.path.join(cfg.out_dir, "log.csv")
        if cfg.resume and os.path.exists(ckpt_path):
            theirs, mine = checkpoint_info(ckpt_path)["config"], cfg.to_dict()
            if not cfg.num_train:
                mine["num_train"] = theirs.get("num_train")
            diff = [k for k in MODEL_FIELDS if mine.get(k) != theirs.get(k)]
            if diff:
                raise ValueError(f"cannot resume {ckpt_path}: config differs in {', '.join(diff)} "
                                 f"(checkpoint: {', '.join(f'{k}={theirs.get(k)!r}' for k in diff)})")
            start = load_checkpoint(ckpt_path, model, opt)["step"]
            num_train = theirs.get("num_train") or num_train
            if os.path.exists(csv_path):    # drop log rows written after the checkpoint
                rows = [r for r in _read_csv(csv_path) if int(r["step"]) <= start]
                with open(csv_path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                    w.writeheader()
                    w.writerows(rows)
        elif cfg.resume:
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt_path}")
        elif os.path.exists(csv_path):
            os.remove(csv_path)
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump({**cfg.to_dict(), "num_train": num_train}, f, indent=2, sort_keys=True)
    saved_cfg = {**cfg.to_dict(), "num_train": num_train}
    train_data = _dataset(task, num_train, derive_seed(cfg.seed, 0))
    eval_data = _dataset(eval_task, cfg.num_eval, derive_seed(cfg.seed, 1))
    order_seed = derive_seed(cfg.seed, 2)

    def log_row(row):
        if csv_path is None:
            return
        new = not os.path.exists(csv_path)
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in CSV_FIELDS})

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens_per_step = cfg.batch_size * task.seq_len
    majority = None
    if task.kind == "cls":
        majority = float(eval_data.targets.bincount(minlength=task.num_classes).max()) / len(eval_data)
    title = f"{task.name}/{cfg.method}"
    bar = _Bar(progress, cfg.steps, start, title, console)
    bar.print(f"{title}: {params / 1e6:.2f}M params, {cfg.num_layers} layers, dim {cfg.dim}"
              f"{f', short conv {cfg.short_conv}' if cfg.short_conv else ''}, seq {task.seq_len}, "
              f"{num_train} train / {cfg.num_eval} held-out examples, device {device}"
              f"{', bf16 autocast' if amp else ''}, chance acc {task.chance_acc:.3g}"
              + (f", majority-class acc {majority:.3f}" if majority is not None else ""))

    model.train()
    loss_acc = torch.zeros((), device=device)
    correct_acc = torch.zeros((), device=device, dtype=torch.long)
    count_acc, window_steps = 0, 0
    train_s, window_t0 = 0.0, time.perf_counter()
    last = {"train_loss": float("nan"), "train_acc": float("nan"), "eval_loss": float("nan"), "eval_acc": float("nan")}
    best_eval, stop_reason, done = float("nan"), "steps done", start
    ckpt_every = cfg.checkpoint_every or cfg.eval_every

    try:
        for step in range(start, cfg.steps):
            idx = _batch_indices(num_train, cfg.batch_size, step, order_seed)
            x, y, pos = train_data.batch(idx, device)
            lr = _lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss, correct, n = _loss(model, task.kind, x, y, pos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_acc += loss.detach()
            correct_acc += correct
            count_acc += n
            window_steps += 1
            done = step + 1
            is_eval = done % cfg.eval_every == 0 or done == cfg.steps
            is_ckpt = ckpt_path is not None and (done % ckpt_every == 0 or done == cfg.steps)
            out_of_time = cfg.max_time is not None and time.perf_counter() - wall0 > cfg.max_time
            if not (done % cfg.log_every == 0 or is_eval or is_ckpt or out_of_time):
                continue
            # Book-keeping step: close the timing window (training only), then log / evaluate / save.
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            window_s = time.perf_counter() - window_t0
            train_s += window_s
            window_tps = window_steps * tokens_per_step / max(window_s, 1e-9)
            last["train_loss"] = float(loss_acc) / window_steps
            last["train_acc"] = int(correct_acc) / max(count_acc, 1)
            loss_acc.zero_()
            correct_acc.zero_()
            count_acc, window_steps = 0, 0
            row = {"step": done, "tokens": done * tokens_per_step, "lr": f"{lr:.3e}",
                   "train_loss": f"{last['train_loss']:.4f}", "train_acc": f"{last['train_acc']:.4f}",
                   "tokens_per_s": f"{window_tps:.0f}", "elapsed_s": f"{time.perf_counter() - wall0:.1f}"}
            if is_eval or out_of_time:
                last["eval_loss"], last["eval_acc"] = evaluate(model, eval_data, cfg.batch_size, device, amp)
                best_eval = last["eval_acc"] if math.isnan(best_eval) else max(best_eval, last["eval_acc"])
                row.update(eval_loss=f"{last['eval_loss']:.4f}", eval_acc=f"{last['eval_acc']:.4f}")
                bar.print(f"  step {done}: train loss {last['train_loss']:.3f} acc {last['train_acc']:.3f} | "
                          f"held-out loss {last['eval_loss']:.3f} acc {last['eval_acc']:.3f} | {window_tps:,.0f} tok/s")
            if device.type == "cuda":
                row["peak_mem_mb"] = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}"
            log_row(row)
            bar.update(done, f"loss {last['train_loss']:.3f} acc {last['train_acc']:.3f} {window_tps:,.0f} tok/s")
            target_hit = is_eval and cfg.target_acc is not None and last["eval_acc"] >= cfg.target_acc
            if is_ckpt or ((target_hit or out_of_time) and ckpt_path is not None):
                save_checkpoint(ckpt_path, model, opt, done, saved_cfg)
            window_t0 = time.perf_counter()
            if target_hit:
                stop_reason = f"target accuracy {cfg.target_acc:g} reached"
                break
            if out_of_time:
                stop_reason = f"time limit {cfg.max_time:.0f}s"
                break
    finally:
        bar.close()
    if done == start:                              # nothing to train (resumed a finished run): just evaluate
        last["eval_loss"], last["eval_acc"] = evaluate(model, eval_data, cfg.batch_size, device, amp)
        best_eval = last["eval_acc"]
        stop_reason = "already trained" if start else stop_reason
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    trained_tokens = (done - start) * tokens_per_step
    return {"task": task.name, "method": cfg.method, "device": str(device), "params": params, "steps": done,
            "tokens": done * tokens_per_step, "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "eval_loss": last["eval_loss"], "eval_acc": last["eval_acc"], "best_eval_acc": best_eval,
            "tokens_per_s": trained_tokens / train_s if train_s > 0 else float("nan"),
            "wall_s": time.perf_counter() - wall0, "train_s": train_s, "peak_mem_mb": peak,
            "chance_acc": task.chance_acc, "majority_acc": majority, "stop_reason": stop_reason}
