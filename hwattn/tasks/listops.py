"""LRA ListOps (Nangia & Bowman 2018; Tay et al. 2021, Long Range Arena): classify the value of a nested
list expression.

The grammar and sampling process are the original LRA generator's (`lra_benchmarks/data/listops.py`):
a node at depth < max_depth is an operator with probability VALUE_P = 0.25, else a digit 0-9 (at max_depth
always a digit); an operator takes randint(2, max_args) arguments and is one of

    [MIN  [MAX  [MED (int(np.median), i.e. the mean of the two middle values truncated)  [SM (sum mod 10)

and is closed by ']'. Trees are drawn until their length L satisfies min_length < L < max_length
(strictly), where L counts operators, closing brackets and digits, which are exactly the tokens once LRA's
tokenizer has dropped the parentheses. LRA's defaults: max_depth 10, max_args 10, min_length 500,
max_length 2000. The label is the expression's value (10 classes). Duplicates within one call are
discarded, as the original's set() did.

Example: "[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]" = 5.
"""
from __future__ import annotations

import random

import torch

from ._common import check_int, check_seed

__all__ = ["listops", "LISTOPS_VOCAB", "LISTOPS_PAD", "listops_decode", "check_listops_options"]

VALUE_P = 0.25
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
LISTOPS_VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + OPERATORS + (END,)
LISTOPS_PAD = 0
_DIGIT0 = 1                                   # token id of "0"
_OP0 = _DIGIT0 + 10                           # token id of "[MIN"
_END_ID = LISTOPS_VOCAB.index(END)


class _TooLong(Exception):
    pass


def _apply(op: int, args: list[int]) -> int:
    if op == 0:
        return min(args)
    if op == 1:
        return max(args)
    if op == 2:
        s = sorted(args)
        m = len(s) // 2
        return s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2   # int(np.median) on non-negative ints
    return sum(args) % 10


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[int], limit: int) -> int:
    """Append one subtree's tokens to `out`, return its value; _TooLong once `out` reaches `limit` tokens."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        value = rng.randrange(10)
        out.append(_DIGIT0 + value)
        if len(out) >= limit:
            raise _TooLong
        return value
    num_args = rng.randint(2, max_args)
    op_slot = len(out)
    out.append(-1)                            # the operator is drawn after its arguments, as in LRA
    args = [_tree(rng, depth + 1, max_depth, max_args, out, limit) for _ in range(num_args)]
    op = rng.randrange(len(OPERATORS))
    out[op_slot] = _OP0 + op
    out.append(_END_ID)
    if len(out) >= limit:
        raise _TooLong
    return _apply(op, args)


def check_listops_options(min_length: int, max_length: int, max_depth: int, max_args: int, seq_len: int | None):
    check_int("max_depth", max_depth, minimum=2)
    check_int("max_args", max_args, minimum=2)
    check_int("min_length", min_length, minimum=0)
    check_int("max_length", max_length, minimum=min_length + 2)
    if seq_len is not None:
        check_int("seq_len", seq_len, minimum=max_length - 1)


def listops(num_examples: int, *, min_length: int = 500, max_length: int = 2000, max_depth: int = 10,
            max_args: int = 10, seq_len: int | None = None, seed: int = 0,
            max_tries: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ListOps examples (LRA grammar), padded with LISTOPS_PAD (0) on the right.

    Args:
        num_examples: number of distinct expressions.
        min_length, max_length: keep expressions with min_length < tokens < max_length (LRA: 500, 2000).
        max_depth: nesting limit; the root has depth 1 (LRA: 10).
        max_args: arguments per operator are drawn from [2, max_args] (LRA: 10).
        seq_len: padded length; default max_length - 1 (the longest possible expression); must be >= that.
        seed: the output is a deterministic function of all arguments.
        max_tries: give up (RuntimeError) after this many rejected trees; default 2000 * num_examples + 10^5.
            Narrow length windows at small depths can be (nearly) impossible.

    Returns:
        inputs (num_examples, seq_len) int64 over LISTOPS_VOCAB (16 tokens) and labels (num_examples,)
        int64 in [0, 10).
    """
    check_int("num_examples", num_examples, minimum=1)
    check_listops_options(min_length, max_length, max_depth, max_args, seq_len)
    seq_len = max_length - 1 if seq_len is None else seq_len
    rng = random.Random(check_seed(seed))
    max_tries = 2000 * num_examples + 100_000 if max_tries is None else check_int("max_tries", max_tries, minimum=1)
    seen: set[tuple[int, ...]] = set()
    rows, labels = [], []
    tries = 0
    while len(rows) < num_examples:
        tries += 1
        if tries > max_tries:
            raise RuntimeError(f"listops: only {len(rows)} of {num_examples} expressions with {min_length} < length < "
                               f"{max_length} after {max_tries} trees (max_depth={max_depth}, max_args={max_args}); "
                               "widen the length window or raise max_depth")
        out: list[int] = []
        try:
            value = _tree(rng, 1, max_depth, max_args, out, max_length)
        except _TooLong:
            continue
        if len(out) <= min_length:
            continue
        key = tuple(out)
        if key in seen:
            continue
        seen.add(key)
        rows.append(out)
        labels.append(value)
    inputs = torch.full((num_examples, seq_len), LISTOPS_PAD, dtype=torch.int64)
    for i, row in enumerate(rows):
        inputs[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
    return inputs, torch.tensor(labels, dtype=torch.int64)


def listops_decode(tokens) -> str:
    """Token ids (one sequence) -> the expression as text, padding dropped."""
    return " ".join(LISTOPS_VOCAB[int(t)] for t in tokens if int(t) != LISTOPS_PAD)
