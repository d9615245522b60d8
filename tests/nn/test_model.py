"""hwattn.models: the decoder LM and the encoder classifier with every registered method."""
from __future__ import annotations

import pytest
import torch

from hwattn import registry
from hwattn.models import DecoderLM, EncoderClassifier, TransformerConfig, build_model
from hwattn.testing import rel_err

METHODS = registry.names()
CAUSAL = [m for m in METHODS if registry.get(m).supports_causal]
NONCAUSAL = [m for m in METHODS if registry.get(m).supports_noncausal]


def _cfg(method, **kw):
    base = dict(vocab_size=40, dim=32, num_layers=1, num_heads=2, method=method, max_seqlen=32)
    base.update(kw)
    return TransformerConfig(**base)


@pytest.mark.parametrize("method", CAUSAL)
def test_decoder_forward_backward(method):
    torch.manual_seed(0)
    model = DecoderLM(_cfg(method, num_kv_heads=1))
    tokens = torch.randint(0, 40, (2, 24))
    logits = model(tokens)
    assert logits.shape == (2, 24, 40) and logits.dtype == torch.float32
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 40), tokens[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["embed.weight"].abs().sum() > 0


@pytest.mark.parametrize("method", NONCAUSAL)
def test_encoder_forward_backward(method):
    torch.manual_seed(1)
    model = EncoderClassifier(_cfg(method, num_classes=10, pad_id=0))
    tokens = torch.randint(1, 40, (3, 32))
    tokens[0, 20:] = 0
    logits = model(tokens)
    assert logits.shape == (3, 10) and logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", CAUSAL)
def test_decoder_has_no_causal_leak(method):
    """Logits at t must not change when tokens after t change (2 layers: leaks compound)."""
    torch.manual_seed(2)
    model = DecoderLM(_cfg(method, num_layers=2))
    a = torch.randint(0, 40, (2, 20))
    b = a.clone()
    t = 11
    b[:, t + 1:] = (a[:, t + 1:] + torch.randint(1, 40, (2, 20 - t - 1))) % 40   # every later token differs
    la, lb = model(a), model(b)
    assert rel_err(lb[:, : t + 1], la[:, : t + 1]) <= 1e-5
    assert rel_err(lb[:, t + 1:], la[:, t + 1:]) > 1e-3


@pytest.mark.parametrize("method", CAUSAL)
def test_kv_cache_decoding_equals_full_forward(method):
    torch.manual_seed(3)
    model = DecoderLM(_cfg(method, num_layers=2, num_kv_heads=1))
    tokens = torch.randint(0, 40, (2, 14))
    full = model(tokens)
    logits, state = model.step(tokens[:, :6])                    # prefill
    pieces = [logits]
    for t in range(6, 14):                                       # then one token at a time
        logits, state = model.step(tokens[:, t:t + 1], state)
        pieces.append(logits)
    assert rel_err(torch.cat(pieces, 1), full) <= 1e-5
    # greedy generation continues exactly as argmax of the full forward would
    prompt = tokens[:, :5]
    gen = model.generate(prompt, 4)
    assert torch.equal(gen[:, :5], prompt)
    for t in range(5, 9):
        assert torch.equal(model(gen[:, :t])[:, -1].argmax(-1), gen[:, t])


def test_tied_embeddings_and_init():
    torch.manual_seed(4)
    model = DecoderLM(_cfg("naive"))
    h = model.features(torch.randint(0, 40, (1, 5)))
    assert rel_err(model.logits(h), h @ model.embed.weight.T) <= 1e-6
    names = [n for n, _ in model.named_parameters()]
    assert not any("head" in n or "lm_head" in n for n in names)       # no separate output matrix
    assert sum(p.numel() for p in model.parameters()) == len(torch.nn.utils.parameters_to_vector(model.parameters()))


def test_encoder_pooling_ignores_pad_positions():
    """With pad_id set, the pooled mean runs over the non-pad positions only (pads are still attended to)."""
    torch.manual_seed(5)
    cfg = _cfg("naive", num_classes=4, pad_id=0, num_layers=1)
    model = EncoderClassifier(cfg).double()
    tokens = torch.randint(1, 40, (1, 12))
    out_a = model(tokens)
    # mean of the per-token features over non-pad positions, computed by hand
    x = model.embed(tokens)
    x = model.blocks[0](x)
    manual = model.head(model.norm(x).mean(1))
    assert rel_err(out_a, manual) <= 1e-12
    padded = torch.cat([tokens, torch.zeros(1, 4, dtype=torch.long)], 1)
    x = model.blocks[0](model.embed(padded))
    manual_pad = model.head(model.norm(x)[:, :12].mean(1))
    assert rel_err(model(padded), manual_pad) <= 1e-12


@pytest.mark.parametrize("kw, exc, match", [
    (dict(vocab_size=0), ValueError, "vocab_size"),
    (dict(dim=True), ValueError, "dim"),
    (dict(num_classes=1), ValueError, "num_classes"),
    (dict(pad_id=40), ValueError, "pad_id"),
    (dict(method_options=[1]), TypeError, "method_options"),
])
def test_bad_config(kw, exc, match):
    base = dict(vocab_size=40, method="naive")
    base.update(kw)
    with pytest.raises(exc, match=match):
        TransformerConfig(**base)


def test_bad_model_inputs(monkeypatch):
    model = DecoderLM(_cfg("naive"))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 40\)"):
        model(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2]])
    with pytest.raises(ValueError, match="state"):
        model.step(torch.tensor([[1]]), state=[None, None, None])
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.tensor([[1]]), -1)
    with pytest.raises(ValueError, match="num_classes"):
        EncoderClassifier(_cfg("naive"))
    with pytest.raises(ValueError, match="kind"):
        build_model(_cfg("naive"), "seq2seq")
    with pytest.raises(TypeError, match="TransformerConfig"):
        build_model({}, "lm")
    import dataclasses
    fake = dataclasses.replace(registry.get("naive"), name="fake_noncausal", supports_causal=False)
    monkeypatch.setitem(registry._REGISTRY, "fake_noncausal", fake)
    with pytest.raises(ValueError, match="does not support causal"):
        DecoderLM(_cfg("fake_noncausal"))
    EncoderClassifier(_cfg("fake_noncausal", num_classes=3))


def test_short_conv_model_decodes_and_does_not_leak():
    torch.manual_seed(6)
    model = DecoderLM(_cfg("naive", num_layers=2, short_conv=3))
    tokens = torch.randint(0, 40, (2, 14))
    full = model(tokens)
    logits, state = model.step(tokens[:, :5])
    pieces = [logits]
    for t in range(5, 14):
        logits, state = model.step(tokens[:, t:t + 1], state)
        pieces.append(logits)
    assert rel_err(torch.cat(pieces, 1), full) <= 1e-5
    other = tokens.clone()
    other[:, 8:] = (tokens[:, 8:] + 1) % 40
    assert rel_err(model(other)[:, :8], full[:, :8]) <= 1e-6
    with pytest.raises(ValueError, match="short_conv"):
        _cfg("naive", short_conv=-1)
