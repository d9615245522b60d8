"""Selective copying (Gu & Dao 2023, "Mamba", after Arjovsky et al.'s copying task).

`num_tokens` data tokens sit at random (sorted, distinct) positions of a context otherwise filled with a
noise token; the context is followed by `num_tokens` copy markers, and at the i-th marker the model must
output the i-th data token. Input length seq_len = context + num_tokens.

Tokens: 0 pad (unused), 1 noise, 2 copy marker, 3.. the data tokens (num_data_tokens of them).
Targets are IGNORE_INDEX except at the markers.
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import IGNORE_INDEX, check_int, check_seed

__all__ = ["selective_copying", "COPY_NOISE", "COPY_MARKER", "COPY_DATA0", "check_copying_options"]

COPY_NOISE = 1
COPY_MARKER = 2
COPY_DATA0 = 3


def check_copying_options(seq_len, num_tokens, num_data_tokens):
    check_int("num_tokens", num_tokens, minimum=1)
    check_int("seq_len", seq_len, minimum=2 * num_tokens)
    check_int("num_data_tokens", num_data_tokens, minimum=2)


def selective_copying(num_examples: int, *, seq_len: int = 256, num_tokens: int = 16, num_data_tokens: int = 16,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate selective-copying examples.

    Args:
        num_examples: number of sequences.
        seq_len: input length = context (seq_len - num_tokens) + num_tokens markers; >= 2 * num_tokens.
        num_tokens: data tokens to copy per sequence.
        num_data_tokens: data vocabulary size; vocab_size = 3 + num_data_tokens.
        seed: the output is a deterministic function of all arguments.

    Returns:
        inputs (num_examples, seq_len) int64, targets (num_examples, seq_len) int64 (IGNORE_INDEX except
        the last num_tokens positions, which hold the data tokens in order).
    """
    check_int("num_examples", num_examples, minimum=1)
    check_copying_options(seq_len, num_tokens, num_data_tokens)
    rng = np.random.default_rng(check_seed(seed))
    n, k = num_examples, num_tokens
    context = seq_len - k
    data = COPY_DATA0 + rng.integers(0, num_data_tokens, size=(n, k))
    positions = np.sort(np.argpartition(rng.random((n, context)), k - 1, axis=1)[:, :k], axis=1)
    inputs = np.full((n, seq_len), COPY_NOISE, dtype=np.int64)
    inputs[np.arange(n)[:, None], positions] = data
    inputs[:, context:] = COPY_MARKER
    targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[:, context:] = data
    return torch.from_numpy(inputs), torch.from_numpy(targets)
