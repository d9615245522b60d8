"""Induction heads (Olsson et al. 2022; the synthetic of H3/Mamba): recall what followed a trigger.

A sequence of uniform random tokens contains a special trigger token once, followed by an answer token;
the sequence ends with the trigger again and the model must predict the answer. The trigger appears
nowhere else. Tokens: 0 pad (unused), 1 the trigger, 2.. the ordinary tokens (num_data_tokens of them).
Targets are IGNORE_INDEX except at the last position.
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import IGNORE_INDEX, check_int, check_seed

__all__ = ["induction_heads", "INDUCTION_TRIGGER", "INDUCTION_DATA0", "check_induction_options"]

INDUCTION_TRIGGER = 1
INDUCTION_DATA0 = 2


def check_induction_options(seq_len, num_data_tokens):
    check_int("seq_len", seq_len, minimum=4)
    check_int("num_data_tokens", num_data_tokens, minimum=2)


def induction_heads(num_examples: int, *, seq_len: int = 256, num_data_tokens: int = 16,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate induction-head examples.

    Args:
        num_examples: number of sequences.
        seq_len: input length (>= 4); the first trigger is at a uniform position in [0, seq_len - 3].
        num_data_tokens: ordinary vocabulary; vocab_size = 2 + num_data_tokens.
        seed: the output is a deterministic function of all arguments.

    Returns:
        inputs (num_examples, seq_len) int64 (last token = trigger), targets (num_examples, seq_len) int64
        (IGNORE_INDEX except the last position = the token that followed the first trigger).
    """
    check_int("num_examples", num_examples, minimum=1)
    check_induction_options(seq_len, num_data_tokens)
    rng = np.random.default_rng(check_seed(seed))
    n = num_examples
    inputs = INDUCTION_DATA0 + rng.integers(0, num_data_tokens, size=(n, seq_len))
    trigger_pos = rng.integers(0, seq_len - 2, size=n)          # answer at trigger_pos + 1 <= seq_len - 2
    rows = np.arange(n)
    inputs[rows, trigger_pos] = INDUCTION_TRIGGER
    inputs[:, -1] = INDUCTION_TRIGGER
    targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[:, -1] = inputs[rows, trigger_pos + 1]
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets)
