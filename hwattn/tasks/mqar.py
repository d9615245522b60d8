"""Multi-query associative recall (MQAR), as in Zoology (Arora, Eyuboglu et al. 2023).

A sequence starts with `num_kv_pairs` key-value pairs (k1 v1 k2 v2 ...), keys drawn without replacement
from the first half of the vocabulary (token 0 excluded) and values from the second half. Then the keys
come back as queries, in random order, at distinct positions whose gaps follow Zoology's power law
(p(gap) ~ power_a * gap^(power_a - 1)); the model must predict each query's value as the next token.
The target at a query's position is its value; every other target is IGNORE_INDEX (-100). With
`random_non_queries` the remaining slots hold random tokens (Zoology's default) instead of 0.

Example (vocab 12, 2 pairs, seq_len 16, random_non_queries=False), as in Zoology's docstring:

    inputs:  2    8    4    7    0    0    4    0    0    0    0    0    2    0    0    0
    targets: -   -    -    -    -    -    7    -    -    -    -    -    8    -    -    -
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import IGNORE_INDEX, check_float, check_int, check_seed

__all__ = ["mqar", "check_mqar_options"]


def _pair_counts(num_kv_pairs) -> list[int]:
    if isinstance(num_kv_pairs, (list, tuple)):
        if not num_kv_pairs:
            raise ValueError("num_kv_pairs must be an int or a non-empty list of ints, got []")
        return [check_int("num_kv_pairs", k, minimum=1) for k in num_kv_pairs]
    return [check_int("num_kv_pairs", num_kv_pairs, minimum=1)]


def check_mqar_options(seq_len: int, num_kv_pairs, vocab_size: int, power_a: float, random_non_queries: bool):
    check_int("seq_len", seq_len, minimum=4)
    if seq_len % 2:
        raise ValueError(f"seq_len must be even (queries sit on even offsets), got {seq_len}")
    num_kv_pairs = max(_pair_counts(num_kv_pairs))
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(f"seq_len ({seq_len}) must be >= 4 * num_kv_pairs ({4 * num_kv_pairs}): the pairs and "
                         "their queries must fit")
    check_int("vocab_size", vocab_size, minimum=4)
    if vocab_size // 2 - 1 < num_kv_pairs or vocab_size - vocab_size // 2 < num_kv_pairs:
        raise ValueError(f"vocab_size ({vocab_size}) too small for {num_kv_pairs} distinct keys and values: "
                         f"need vocab_size // 2 - 1 >= num_kv_pairs")
    check_float("power_a", power_a, 0.0, 1.0, low_open=True)
    if not isinstance(random_non_queries, bool):
        raise TypeError(f"random_non_queries must be a bool, got {type(random_non_queries).__name__}")


def mqar(num_examples: int, *, seq_len: int = 64, num_kv_pairs: int | list[int] = 4, vocab_size: int = 8192,
         power_a: float = 0.01, random_non_queries: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate MQAR examples.

    Args:
        num_examples: number of sequences.
        seq_len: tokens per sequence (even, >= 4 * num_kv_pairs).
        num_kv_pairs: key-value pairs (= queries) per sequence; a list makes a mixture (each sequence draws
            its count uniformly from the list), like Zoology's training mixtures of easier and harder
            segments, here all at one length.
        vocab_size: keys come from [1, vocab_size // 2), values from [vocab_size // 2, vocab_size).
            Zoology uses 8192 and notes that large vocabularies separate architectures.
        power_a: power-law exponent of the query gaps (Zoology: 0.01; 1.0 = uniform).
        random_non_queries: fill the non-query slots with uniform random tokens (else 0).
        seed: the output is a deterministic function of all arguments.

    Returns:
        inputs (num_examples, seq_len) int64 and targets (num_examples, seq_len) int64 (IGNORE_INDEX except
        at the query positions, where the target is that key's value).
    """
    check_int("num_examples", num_examples, minimum=1)
    check_mqar_options(seq_len, num_kv_pairs, vocab_size, power_a, random_non_queries)
    rng = np.random.default_rng(check_seed(seed))
    counts = _pair_counts(num_kv_pairs)
    if len(counts) == 1:
        inputs, targets = _mqar(rng, num_examples, seq_len, counts[0], vocab_size, power_a, random_non_queries)
        return torch.from_numpy(inputs), torch.from_numpy(targets)
    choice = rng.integers(0, len(counts), size=num_examples)
    inputs = np.empty((num_examples, seq_len), dtype=np.int64)
    targets = np.empty((num_examples, seq_len), dtype=np.int64)
    for i, k in enumerate(counts):
        rows = np.nonzero(choice == i)[0]
        if len(rows):
            inputs[rows], targets[rows] = _mqar(rng, len(rows), seq_len, k, vocab_size, power_a, random_non_queries)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def _mqar(rng, n: int, seq_len: int, k: int, vocab_size: int, power_a: float, random_non_queries: bool):
    key_vocab = vocab_size // 2
    keys = np.empty((n, k), dtype=np.int64)
    values = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        keys[i] = rng.choice(key_vocab - 1, size=k, replace=False) + 1
        values[i] = rng.choice(vocab_size - key_vocab, size=k, replace=False) + key_vocab

    context = 2 * k
    space = (seq_len - context) // 2            # query slots: even offsets after the pairs
    log_p = np.log(power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1))
    # Gumbel top-k = sampling k slots without replacement with probability ~ p (as np.random.choice would).
    gaps = np.empty((n, k), dtype=np.int64)
    chunk = max(1, (1 << 22) // space)
    for s in range(0, n, chunk):
        scores = log_p[None, :] + rng.gumbel(size=(min(chunk, n - s), space))
        gaps[s:s + chunk] = np.argpartition(-scores, k - 1, axis=1)[:, :k]

    seq = np.zeros((n, seq_len + 1), dtype=np.int64)
    seq[:, 0:context:2] = keys
    seq[:, 1:context:2] = values
    rows = np.arange(n)[:, None]
    query_pos = context + 2 * gaps               # where each key comes back
    seq[rows, query_pos] = keys
    labels = np.full((n, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    labels[rows, query_pos + 1] = values         # the token after a query is its value
    inputs, targets = seq[:, :-1], labels[:, 1:]
    if random_non_queries:
        fill = rng.integers(0, vocab_size, size=inputs.shape)
        inputs = np.where(inputs == 0, fill, inputs)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)
