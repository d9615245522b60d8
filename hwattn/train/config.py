"""Training configuration and the size presets of `hwattn train` / `hwattn compare` (no torch import here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "PRESETS", "preset_config", "MODEL_FIELDS"]


@dataclass
class TrainConfig:
    """Everything one training run depends on; the run is a deterministic function of it (up to kernel
    nondeterminism on the GPU).

    task / task_options: a task of `hwattn.tasks.make_task`; eval_task_options override task_options for the
        held-out set (e.g. train on an MQAR mixture of pair counts, evaluate on the hardest); the held-out
        task must keep the vocabulary and length.   method / method_options: `hwattn.registry`.
    dim, num_layers, num_heads, num_kv_heads, short_conv: the model (`hwattn.models.TransformerConfig`);
        short_conv > 0 puts a causal depthwise convolution of that width before each attention (Zoology's
        attention baselines do: it makes associative recall learnable in hundreds instead of many thousands
        of steps).
    steps, batch_size: the budget; lr with linear warmup (warmup_steps), then (lr_schedule) "cosine" decay to
        lr / 10 at `steps`, or "constant" (for runs cut by max_time / target_acc).
    num_train: training examples generated once (default steps * batch_size, at most 100_000), visited in a
        seeded order per epoch; num_eval: held-out examples (another seed), scored every eval_every steps.
    device: "auto" (cuda if available), "cpu" or "cuda[:i]".  autocast: "auto" (bf16 on cuda, none on cpu),
        "bf16" or "none".
    out_dir: where log.csv, config.json and the checkpoint last.safetensors go (None: nothing written);
        checkpoint_every: steps between checkpoints (default eval_every); resume: continue from out_dir.
    max_time: stop training after this many seconds (None: no limit); target_acc: stop after an evaluation
        reaching this accuracy.
    """
    task: str = "mqar"
    task_options: dict = field(default_factory=dict)
    eval_task_options: dict = field(default_factory=dict)
    method: str = "naive"
    method_options: dict = field(default_factory=dict)
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int | None = None
    short_conv: int = 0
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    num_train: int | None = None
    num_eval: int = 512
    eval_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    autocast: str = "auto"
    out_dir: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    max_time: float | None = None
    target_acc: float | None = None

    def __post_init__(self):
        pos_ints = ("dim", "num_layers", "num_heads", "steps", "batch_size", "num_eval", "eval_every", "log_every")
        for name in pos_ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        if isinstance(self.short_conv, bool) or not isinstance(self.short_conv, int) or self.short_conv < 0:
            raise ValueError(f"TrainConfig.short_conv must be an int >= 0, got {self.short_conv!r}")
        for name in ("num_kv_heads", "num_train", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"TrainConfig.{name} must be a positive int or None, got {v!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be an int >= 0, got {self.seed!r}")
        for name in ("lr", "grad_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"TrainConfig.{name} must be a number > 0, got {v!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0:
            raise ValueError(f"TrainConfig.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.autocast not in ("auto", "bf16", "none"):
            raise ValueError(f"TrainConfig.autocast must be 'auto', 'bf16' or 'none', got {self.autocast!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"TrainConfig.device must be a str, got {type(self.device).__name__}")
        if self.max_time is not None and not (isinstance(self.max_time, (int, float)) and self.max_time > 0):
            raise ValueError(f"TrainConfig.max_time must be a number > 0 or None, got {self.max_time!r}")
        if self.target_acc is not None and not (isinstance(self.target_acc, (int, float)) and 0 < self.target_acc <= 1):
            raise ValueError(f"TrainConfig.target_acc must be in (0, 1] or None, got {self.target_acc!r}")
        for name in ("task_options", "eval_task_options", "method_options"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"TrainConfig.{name} must be a dict, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)


# Fields that must match for a checkpoint to be resumed (the rest, e.g. steps or out_dir, may change).
MODEL_FIELDS = ("task", "task_options", "eval_task_options", "method", "method_options", "dim", "num_layers",
                "num_heads", "num_kv_heads", "short_conv",
                "batch_size", "num_train", "seed")

# Sizes per task. "cpu": a few minutes on a laptop CPU with method "naive". "gpu": bigger, for one H100.
PRESETS: dict[str, dict[str, dict]] = {
    "cpu": {
        "mqar": dict(task_options=dict(seq_len=64, num_kv_pairs=4, vocab_size=8192), dim=128, num_layers=2,
                     num_heads=2, short_conv=3, steps=400, batch_size=64, lr=3e-3, warmup_steps=50, num_eval=500,
                     eval_every=50),
        "listops": dict(task_options=dict(min_length=20, max_length=129, max_depth=6, max_args=5, seq_len=128),
                        dim=64, num_layers=2, num_heads=2, steps=600, batch_size=32, lr=1e-3, warmup_steps=50,
                        num_eval=512, eval_every=200),
        "passkey": dict(task_options=dict(seq_len=128, num_digits=5, depth=None), dim=64, num_layers=2, num_heads=2,
                        steps=400, batch_size=32, lr=3e-3, warmup_steps=50, num_eval=256, eval_every=100),
        "selective_copying": dict(task_options=dict(seq_len=64, num_tokens=8, num_data_tokens=8), dim=64,
                                  num_layers=2, num_heads=2, steps=800, batch_size=64, lr=3e-3, warmup_steps=50,
                                  num_eval=512, eval_every=200),
        "induction_heads": dict(task_options=dict(seq_len=64, num_data_tokens=16), dim=64, num_layers=2,
                                num_heads=2, steps=800, batch_size=64, lr=3e-3, warmup_steps=50, num_eval=512,
                                eval_every=200),
    },
    "gpu": {
        "mqar": dict(task_options=dict(seq_len=512, num_kv_pairs=64, vocab_size=8192), dim=128, num_layers=2,
                     num_heads=2, short_conv=3, steps=3000, batch_size=64, lr=3e-3, warmup_steps=100,
                     num_train=100_000, num_eval=1000, eval_every=100),
        "listops": dict(task_options=dict(min_length=500, max_length=2000, max_depth=10, max_args=10, seq_len=2048),
                        dim=128, num_layers=4, num_heads=4, steps=2000, batch_size=32, lr=5e-4, warmup_steps=200,
                        num_train=20_000, num_eval=1000, eval_every=250),
        "passkey": dict(task_options=dict(seq_len=4096, num_digits=5, depth=None), dim=128, num_layers=2,
                        num_heads=2, steps=1000, batch_size=16, lr=1e-3, warmup_steps=100, num_eval=256,
                        eval_every=250),
        "selective_copying": dict(task_options=dict(seq_len=4096, num_tokens=16, num_data_tokens=16), dim=128,
                                  num_layers=2, num_heads=2, steps=2000, batch_size=16, lr=1e-3, warmup_steps=100,
                                  num_eval=512, eval_every=250),
        "induction_heads": dict(task_options=dict(seq_len=4096, num_data_tokens=16), dim=128, num_layers=2,
                                num_heads=2, steps=2000, batch_size=16, lr=1e-3, warmup_steps=100, num_eval=512,
                                eval_every=250),
    },
}


def preset_config(preset: str, task: str, **overrides) -> TrainConfig:
    """TrainConfig of `PRESETS[preset][task]` with `overrides` applied (task_options are merged)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if task not in PRESETS[preset]:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sorted(PRESETS[preset]))}")
    base = dict(PRESETS[preset][task])
    base["task_options"] = {**base.get("task_options", {}), **overrides.pop("task_options", {})}
    base.update(overrides)
    return TrainConfig(task=task, **base)
