"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"), as a token-level task.

A long filler text hides one pass key (`num_digits` random digits) at a chosen depth; at the end the model
is asked for it and must produce the digits. Sequence (length seq_len + 1 before the input/target shift):

    filler[:a]  KEY d1 .. dk  filler[:b]  QUERY d1 .. dk         a = round(depth * (a + b))

Tokens: 0 pad (unused), 1-10 the digits 0-9, 11 KEY ("the pass key is"), 12 QUERY ("what is the pass
key?"), 13.. the filler words. filler="repeat" repeats one fixed "sentence" of filler words, as the original
repeats "The grass is green. The sky is blue. ..."; filler="random" draws filler words uniformly.
Targets are IGNORE_INDEX except the k positions whose next token is an answer digit (teacher forcing).
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import IGNORE_INDEX, check_float, check_int, check_seed

__all__ = ["passkey", "PASSKEY_KEY", "PASSKEY_QUERY", "PASSKEY_DIGIT0", "passkey_vocab_size",
           "check_passkey_options"]

PASSKEY_DIGIT0 = 1
PASSKEY_KEY = 11
PASSKEY_QUERY = 12
_FILLER0 = 13


def passkey_vocab_size(num_filler_tokens: int) -> int:
    return _FILLER0 + num_filler_tokens


def check_passkey_options(seq_len, depth, num_digits, filler, num_filler_tokens):
    check_int("num_digits", num_digits, minimum=1)
    check_int("seq_len", seq_len, minimum=2 * num_digits + 2)
    if depth is not None:
        check_float("depth", depth, 0.0, 1.0)
    if filler not in ("repeat", "random"):
        raise ValueError(f"filler must be 'repeat' or 'random', got {filler!r}")
    check_int("num_filler_tokens", num_filler_tokens, minimum=1)


def passkey(num_examples: int, *, seq_len: int = 256, depth: float | None = 0.5, num_digits: int = 5,
            filler: str = "repeat", num_filler_tokens: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate passkey-retrieval examples.

    Args:
        num_examples: number of sequences.
        seq_len: input length (>= 2 * num_digits + 2).
        depth: where the key sits in the filler, 0.0 = at the start, 1.0 = just before the question;
            None draws a depth uniformly per example.
        num_digits: digits of the pass key (answers to predict per sequence).
        filler: "repeat" (one fixed filler sentence, repeated) or "random" (uniform filler words).
        num_filler_tokens: filler vocabulary size; vocab_size = 13 + num_filler_tokens.
        seed: the output is a deterministic function of all arguments.

    Returns:
        inputs (num_examples, seq_len) int64, targets (num_examples, seq_len) int64 (IGNORE_INDEX except
        the num_digits positions that predict the answer digits).
    """
    check_int("num_examples", num_examples, minimum=1)
    check_passkey_options(seq_len, depth, num_digits, filler, num_filler_tokens)
    rng = np.random.default_rng(check_seed(seed))
    n, k = num_examples, num_digits
    total = seq_len + 1
    n_filler = total - 2 * (k + 1)
    digits = rng.integers(0, 10, size=(n, k))
    depths = rng.random(n) if depth is None else np.full(n, depth)
    prefix = np.rint(depths * n_filler).astype(np.int64)
    seq = np.empty((n, total), dtype=np.int64)
    labels = np.full((n, total), IGNORE_INDEX, dtype=np.int64)
    pattern = _FILLER0 + np.arange(n_filler) % num_filler_tokens
    for i in range(n):
        if filler == "repeat":
            words = np.concatenate([pattern[:prefix[i]], pattern[:n_filler - prefix[i]]])
        else:
            words = _FILLER0 + rng.integers(0, num_filler_tokens, size=n_filler)
        a = prefix[i]
        needle = np.concatenate([[PASSKEY_KEY], PASSKEY_DIGIT0 + digits[i]])
        tail = np.concatenate([[PASSKEY_QUERY], PASSKEY_DIGIT0 + digits[i]])
        seq[i] = np.concatenate([words[:a], needle, words[a:], tail])
        labels[i, total - k:] = PASSKEY_DIGIT0 + digits[i]
    return torch.from_numpy(seq[:, :-1].copy()), torch.from_numpy(labels[:, 1:].copy())
