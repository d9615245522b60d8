"""Task generators: answers checked by independent evaluation, determinism, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hwattn.tasks import (IGNORE_INDEX, LISTOPS_VOCAB, induction_heads, listops, listops_decode, make_task, mqar,
                          passkey, selective_copying, task_defaults, task_names)
from hwattn.tasks.copying import COPY_DATA0, COPY_MARKER, COPY_NOISE
from hwattn.tasks.induction import INDUCTION_TRIGGER
from hwattn.tasks.passkey import PASSKEY_DIGIT0, PASSKEY_KEY, PASSKEY_QUERY

# ---------------------------------------------------------------- an independent ListOps evaluator


def evaluate_listops(text: str) -> tuple[int, int, int]:
    """Evaluate a ListOps expression given as text with a stack; returns (value, depth, max arguments).

    Written from the LRA definitions (MIN, MAX, MED = int(np.median), SM = sum mod 10), independent of
    the generator's code path.
    """
    stack: list[tuple[str, list[int]]] = []
    result, depth, widest = None, 0, 0
    for tok in text.split():
        if tok.startswith("["):
            stack.append((tok, []))
            depth = max(depth, len(stack))
        elif tok == "]":
            op, args = stack.pop()
            widest = max(widest, len(args))
            value = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)),
                     "[SM": lambda a: int(np.sum(a)) % 10}[op](args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            d = int(tok)
            if stack:
                stack[-1][1].append(d)
            else:
                result = d
    assert not stack and result is not None, f"unbalanced expression: {text}"
    return result, max(depth, 1), widest


@pytest.mark.parametrize("text, value", [
    ("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]", 5),      # the example of the LRA paper
    ("[MED 1 2 ]", 1), ("[MED 3 8 1 6 ]", 4), ("[SM 9 8 7 ]", 4), ("[MIN 9 [MAX 0 1 ] ]", 1), ("7", 7),
])
def test_evaluator_on_known_expressions(text, value):
    assert evaluate_listops(text)[0] == value


def test_listops_labels_by_independent_evaluation():
    x, y = listops(300, min_length=10, max_length=80, max_depth=5, max_args=4, seed=3)
    assert x.shape == (300, 79) and y.shape == (300,)
    lengths = (x != 0).sum(1)
    assert (lengths > 10).all() and (lengths < 80).all()
    seen = set()
    for row, label in zip(x, y):
        n = int((row != 0).sum())
        assert (row[n:] == 0).all() and (row[:n] != 0).all()          # right padding only
        text = listops_decode(row)
        value, depth, widest = evaluate_listops(text)
        assert value == int(label)
        assert depth <= 5 - 1                                          # nodes at max_depth are digits
        assert 2 <= widest <= 4
        seen.add(text)
    assert len(seen) == 300                                            # duplicates are discarded
    assert len(set(y.tolist())) >= 6                                   # not a degenerate label


def test_listops_lra_sizes_and_vocab():
    x, y = listops(8, seed=0)                                           # LRA defaults: 500 < length < 2000
    lengths = (x != 0).sum(1)
    assert x.shape == (8, 1999) and (lengths > 500).all() and (lengths < 2000).all()
    assert x.max() < len(LISTOPS_VOCAB) == 16
    for row, label in zip(x, y):
        value, depth, widest = evaluate_listops(listops_decode(row))
        assert value == int(label) and depth <= 9 and widest <= 10


def test_listops_operators_all_appear():
    x, _ = listops(50, min_length=30, max_length=200, max_depth=6, seed=1)
    text = " ".join(listops_decode(r) for r in x)
    for op in ("[MIN", "[MAX", "[MED", "[SM"):
        assert op in text


# ---------------------------------------------------------------- MQAR: answers by lookup


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_answers_by_lookup(random_non_queries):
    V, k, L = 64, 6, 48
    x, y = mqar(200, seq_len=L, num_kv_pairs=k, vocab_size=V, random_non_queries=random_non_queries, seed=7)
    assert x.shape == y.shape == (200, L) and x.dtype == y.dtype == torch.int64
    assert x.min() >= 0 and x.max() < V
    for row, tgt in zip(x.tolist(), y.tolist()):
        keys, values = row[0:2 * k:2], row[1:2 * k:2]
        assert len(set(keys)) == k and all(1 <= key < V // 2 for key in keys)
        assert len(set(values)) == k and all(V // 2 <= v < V for v in values)
        table = dict(zip(keys, values))
        asked = [t for t in range(L) if tgt[t] != IGNORE_INDEX]
        assert len(asked) == k and all(t >= 2 * k for t in asked)
        assert sorted(row[t] for t in asked) == sorted(keys)            # every key is queried once
        for t in asked:
            assert tgt[t] == table[row[t]]                              # the answer is the key's value
            assert (t - 2 * k) % 2 == 0
        if not random_non_queries:
            assert all(row[t] == 0 for t in range(2 * k, L) if t not in asked)


def test_mqar_power_law_prefers_short_gaps():
    x, y = mqar(400, seq_len=256, num_kv_pairs=8, vocab_size=512, power_a=0.01, seed=1)
    gaps = (((y != IGNORE_INDEX).nonzero()[:, 1] - 16) // 2).double()
    space = (256 - 16) // 2
    assert gaps.mean() < 0.6 * (space - 1) / 2                          # uniform would be ~ (space-1)/2
    _, y_uniform = mqar(400, seq_len=256, num_kv_pairs=8, vocab_size=512, power_a=1.0, seed=1)
    gaps_u = (((y_uniform != IGNORE_INDEX).nonzero()[:, 1] - 16) // 2).double()
    assert abs(gaps_u.mean() - (space - 1) / 2) < 0.1 * space


# ---------------------------------------------------------------- passkey, copying, induction


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0, None])
@pytest.mark.parametrize("filler", ["repeat", "random"])
def test_passkey_answer_and_depth(depth, filler):
    L, k = 64, 4
    x, y = passkey(30, seq_len=L, depth=depth, num_digits=k, filler=filler, seed=2)
    n_filler = L + 1 - 2 * (k + 1)
    for row, tgt in zip(x.tolist(), y.tolist()):
        assert row.count(PASSKEY_KEY) == 1 and row.count(PASSKEY_QUERY) == 1
        key_at = row.index(PASSKEY_KEY)
        digits = row[key_at + 1:key_at + 1 + k]
        assert all(PASSKEY_DIGIT0 <= d < PASSKEY_DIGIT0 + 10 for d in digits)
        q = row.index(PASSKEY_QUERY)
        asked = [t for t in range(L) if tgt[t] != IGNORE_INDEX]
        assert asked == list(range(q, L))                               # QUERY and the answer digits fed so far
        assert [tgt[t] for t in asked] == digits                        # the answer is the hidden key
        assert row[q + 1:] == digits[:-1]
        if depth is not None:
            assert key_at == round(depth * n_filler)


def test_selective_copying_targets_are_the_data_in_order():
    x, y = selective_copying(50, seq_len=40, num_tokens=6, num_data_tokens=5, seed=4)
    for row, tgt in zip(x.tolist(), y.tolist()):
        context = row[:34]
        data = [t for t in context if t != COPY_NOISE]
        assert len(data) == 6 and all(COPY_DATA0 <= t < COPY_DATA0 + 5 for t in data)
        assert row[34:] == [COPY_MARKER] * 6
        assert tgt[34:] == data and all(t == IGNORE_INDEX for t in tgt[:34])


def test_induction_heads_target_follows_first_trigger():
    x, y = induction_heads(100, seq_len=30, num_data_tokens=7, seed=5)
    for row, tgt in zip(x.tolist(), y.tolist()):
        assert row.count(INDUCTION_TRIGGER) == 2 and row[-1] == INDUCTION_TRIGGER
        first = row.index(INDUCTION_TRIGGER)
        assert first <= 27
        assert tgt[-1] == row[first + 1] and all(t == IGNORE_INDEX for t in tgt[:-1])


# ---------------------------------------------------------------- determinism, Task bundle, validation


SMALL = {"mqar": dict(seq_len=32, num_kv_pairs=4, vocab_size=64),
         "listops": dict(min_length=5, max_length=40, max_depth=4),
         "passkey": dict(seq_len=32), "selective_copying": dict(seq_len=32, num_tokens=4),
         "induction_heads": dict(seq_len=32)}


@pytest.mark.parametrize("name", task_names())
def test_deterministic_under_seed(name):
    task = make_task(name, **SMALL[name])
    a, b, c = task.generate(20, seed=11), task.generate(20, seed=11), task.generate(20, seed=12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (20, task.seq_len) and a[0].max() < task.vocab_size and a[0].min() >= 0
    if task.kind == "cls":
        assert a[1].shape == (20,) and a[1].max() < task.num_classes
    else:
        assert a[1].shape == (20, task.seq_len)
        assert ((a[1] == IGNORE_INDEX) | ((a[1] >= 0) & (a[1] < task.vocab_size))).all()
    assert 0 < task.chance_acc < 1


def test_task_defaults_and_unknown_options():
    assert task_defaults("mqar")["vocab_size"] == 8192
    assert task_defaults("listops")["max_length"] == 2000
    with pytest.raises(ValueError, match="unknown option"):
        make_task("mqar", num_pairs=3)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("sorting")
    with pytest.raises(TypeError, match="name must be a str"):
        make_task(3)


@pytest.mark.parametrize("fn, kwargs, exc, match", [
    (mqar, dict(num_examples=0), ValueError, "num_examples"),
    (mqar, dict(num_examples=2, seq_len=63), ValueError, "even"),
    (mqar, dict(num_examples=2, seq_len=32, num_kv_pairs=9), ValueError, "4 \\* num_kv_pairs"),
    (mqar, dict(num_examples=2, seq_len=64, num_kv_pairs=8, vocab_size=16), ValueError, "vocab_size"),
    (mqar, dict(num_examples=2, power_a=0.0), ValueError, "power_a"),
    (mqar, dict(num_examples=2, random_non_queries=1), TypeError, "random_non_queries"),
    (mqar, dict(num_examples=2, seed=-1), ValueError, "seed"),
    (mqar, dict(num_examples=2.0), TypeError, "num_examples must be an int"),
    (listops, dict(num_examples=2, min_length=50, max_length=40), ValueError, "max_length"),
    (listops, dict(num_examples=2, min_length=5, max_length=40, seq_len=20), ValueError, "seq_len"),
    (listops, dict(num_examples=2, max_depth=1), ValueError, "max_depth"),
    (listops, dict(num_examples=2, min_length=100, max_length=103, max_depth=3, max_args=3, max_tries=50),
     RuntimeError, "widen"),
    (passkey, dict(num_examples=2, depth=1.5), ValueError, "depth"),
    (passkey, dict(num_examples=2, seq_len=8, num_digits=5), ValueError, "seq_len"),
    (passkey, dict(num_examples=2, filler="lorem"), ValueError, "filler"),
    (selective_copying, dict(num_examples=2, seq_len=10, num_tokens=6), ValueError, "seq_len"),
    (induction_heads, dict(num_examples=2, num_data_tokens=1), ValueError, "num_data_tokens"),
])
def test_bad_arguments(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(**kwargs)


def test_mqar_mixture_of_pair_counts():
    V, L = 64, 32
    x, y = mqar(300, seq_len=L, num_kv_pairs=[1, 3, 8], vocab_size=V, random_non_queries=False, seed=3)
    seen = set()
    for row, tgt in zip(x.tolist(), y.tolist()):
        asked = [t for t in range(L) if tgt[t] != IGNORE_INDEX]
        k = len(asked)
        assert k in (1, 3, 8)
        seen.add(k)
        table = dict(zip(row[0:2 * k:2], row[1:2 * k:2]))
        assert all(tgt[t] == table[row[t]] for t in asked)
    assert seen == {1, 3, 8}
    a = mqar(20, seq_len=L, num_kv_pairs=[1, 3], vocab_size=V, seed=4)
    b = mqar(20, seq_len=L, num_kv_pairs=[1, 3], vocab_size=V, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="non-empty"):
        mqar(2, num_kv_pairs=[])
    with pytest.raises(ValueError, match="4 \\* num_kv_pairs"):
        mqar(2, seq_len=32, num_kv_pairs=[2, 9])
