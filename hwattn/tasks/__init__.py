"""Seeded, deterministic synthetic tasks for long-context models; nothing is downloaded.

Each generator is a pure function of its arguments and `seed`:

    mqar(...)               multi-query associative recall (Zoology)           LM targets
    listops(...)            LRA ListOps, the original grammar                  one label per sequence
    passkey(...)            passkey retrieval at a chosen depth                LM targets
    selective_copying(...)  selective copying (Mamba)                          LM targets
    induction_heads(...)    induction heads (H3 / Mamba)                       LM targets

LM targets are (num_examples, seq_len) with IGNORE_INDEX (-100) where nothing is asked; the model is
scored only on the other positions. `make_task(name, **options)` bundles a generator with what a model needs
to know about it (vocabulary, length, classes).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from ._common import IGNORE_INDEX
from .copying import check_copying_options, selective_copying
from .induction import check_induction_options, induction_heads
from .listops import LISTOPS_PAD, LISTOPS_VOCAB, check_listops_options, listops, listops_decode
from .mqar import check_mqar_options, mqar
from .passkey import check_passkey_options, passkey, passkey_vocab_size

__all__ = ["IGNORE_INDEX", "Task", "make_task", "task_names", "task_defaults", "mqar", "listops", "listops_decode",
           "passkey", "selective_copying", "induction_heads", "LISTOPS_VOCAB"]


@dataclass(frozen=True)
class Task:
    """A generator plus what a model needs to know about its data.

    kind: "lm" (causal LM, per-position targets with IGNORE_INDEX) or "cls" (one class per sequence, encoder).
    vocab_size: input tokens lie in [0, vocab_size).  seq_len: every input is (num_examples, seq_len).
    num_classes: classes of a "cls" task (None for "lm").  pad_id: padding token of the inputs, or None.
    chance_acc: accuracy of uniform guessing among the possible answers.
    options: every generator option, defaults filled in.
    """
    name: str
    kind: str
    vocab_size: int
    seq_len: int
    num_classes: int | None
    pad_id: int | None
    chance_acc: float
    options: dict = field(default_factory=dict)
    _generate: Callable = field(default=None, repr=False, compare=False)

    def generate(self, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for num_examples sequences, a deterministic function of seed."""
        return self._generate(num_examples, seed=seed, **self.options)


_GENERATORS = {"mqar": mqar, "listops": listops, "passkey": passkey, "selective_copying": selective_copying,
               "induction_heads": induction_heads}


def task_names() -> list[str]:
    return sorted(_GENERATORS)


def task_defaults(name: str) -> dict:
    """The generator options of task `name` and their defaults."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    sig = inspect.signature(_GENERATORS[name])
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("seed", "max_tries")}


def make_task(name: str, **options) -> Task:
    """Task `name` with generator options (see each generator; unknown options raise ValueError)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    defaults = task_defaults(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"task {name!r} got unknown option(s) {', '.join(unknown)}; its options: "
                         + ", ".join(f"{k}={v!r}" for k, v in defaults.items()))
    o = {**defaults, **options}
    gen = _GENERATORS[name]
    if name == "mqar":
        check_mqar_options(o["seq_len"], o["num_kv_pairs"], o["vocab_size"], o["power_a"], o["random_non_queries"])
        return Task(name, "lm", o["vocab_size"], o["seq_len"], None, None,
                    1.0 / (o["vocab_size"] - o["vocab_size"] // 2), o, gen)
    if name == "listops":
        check_listops_options(o["min_length"], o["max_length"], o["max_depth"], o["max_args"], o["seq_len"])
        seq_len = o["max_length"] - 1 if o["seq_len"] is None else o["seq_len"]
        return Task(name, "cls", len(LISTOPS_VOCAB), seq_len, 10, LISTOPS_PAD, 0.1, o, gen)
    if name == "passkey":
        check_passkey_options(o["seq_len"], o["depth"], o["num_digits"], o["filler"], o["num_filler_tokens"])
        return Task(name, "lm", passkey_vocab_size(o["num_filler_tokens"]), o["seq_len"], None, None, 0.1, o, gen)
    if name == "selective_copying":
        check_copying_options(o["seq_len"], o["num_tokens"], o["num_data_tokens"])
        return Task(name, "lm", 3 + o["num_data_tokens"], o["seq_len"], None, None, 1.0 / o["num_data_tokens"], o, gen)
    check_induction_options(o["seq_len"], o["num_data_tokens"])
    return Task(name, "lm", 2 + o["num_data_tokens"], o["seq_len"], None, None, 1.0 / o["num_data_tokens"], o, gen)
