"""A small Transformer with pluggable attention: a decoder-only LM and an encoder classifier.

Both are pre-norm (RMSNorm), SwiGLU MLP, RoPE, no biases; the attention method is any name in
`hwattn.registry`. The LM ties its output projection to the token embedding.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..nn import Attention, RMSNorm, ShortConv, SwiGLU

__all__ = ["TransformerConfig", "Block", "DecoderLM", "EncoderClassifier", "build_model"]


@dataclass
class TransformerConfig:
    """Shape of the model. `num_classes` is used by the encoder only; `pad_id` tokens are left out of
    the encoder's mean pooling (they are still attended to: methods take no padding mask)."""
    vocab_size: int
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int | None = None
    mlp_hidden: int | None = None       # default round_up(8/3 * dim, 8)
    method: str = "flash"
    method_options: dict = field(default_factory=dict)
    max_seqlen: int | None = None       # needed by fixed-length methods (Linformer)
    rope: bool = True
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    num_classes: int | None = None
    pad_id: int | None = None
    short_conv: int = 0                 # > 0: a causal depthwise conv of this width before each attention

    def __post_init__(self):
        for name in ("vocab_size", "dim", "num_layers", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 2):
            raise ValueError(f"TransformerConfig.num_classes must be an int >= 2 or None, got {self.num_classes!r}")
        if self.pad_id is not None and not (isinstance(self.pad_id, int) and 0 <= self.pad_id < self.vocab_size):
            raise ValueError(f"TransformerConfig.pad_id must be None or in [0, {self.vocab_size}), got {self.pad_id!r}")
        if isinstance(self.short_conv, bool) or not isinstance(self.short_conv, int) or self.short_conv < 0:
            raise ValueError(f"TransformerConfig.short_conv must be an int >= 0, got {self.short_conv!r}")
        if not isinstance(self.method_options, dict):
            raise TypeError("TransformerConfig.method_options must be a dict, got "
                            f"{type(self.method_options).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Block(torch.nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); with cfg.short_conv, first x + conv(norm(x))."""

    def __init__(self, cfg: TransformerConfig, causal: bool):
        super().__init__()
        self.conv_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.short_conv else None
        self.conv = ShortConv(cfg.dim, cfg.short_conv) if cfg.short_conv else None
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.num_heads, cfg.num_kv_heads, method=cfg.method, causal=causal,
                              rope=cfg.rope, max_seqlen=cfg.max_seqlen, rope_base=cfg.rope_base,
                              **cfg.method_options)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = x + self.conv(self.conv_norm(x))
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x: torch.Tensor, state: tuple | None):
        """Decoding; state = (attention DecodeState, conv cache), None to start."""
        attn_state, conv_cache = state if state is not None else (None, None)
        if self.conv is not None:
            h, conv_cache = self.conv.step(self.conv_norm(x), conv_cache)
            x = x + h
        h, attn_state = self.attn.step(self.attn_norm(x), attn_state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), (attn_state, conv_cache)


def _init_weights(model: torch.nn.Module, num_layers: int, dim: int) -> None:
    """GPT-2 style N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers); the embedding gets
    N(0, 1/dim) (unit-norm rows): tied to the output, its scale sets the logits' range, and at 0.02 a small
    model spends thousands of steps growing it before in-context recall can show (measured on MQAR)."""
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        if ".inner." in name:       # parameters a method owns (e.g. Linformer's projections) keep its init
            continue
        if name == "embed.weight":
            std = dim ** -0.5
        elif name.endswith(("wo.weight", "w2.weight")):
            std = 0.02 / math.sqrt(2 * num_layers)
        else:
            std = 0.02
        torch.nn.init.normal_(p, 0.0, std)


def _float32_or_64(x: torch.Tensor) -> torch.Tensor:
    """Logits in float32 (from bf16/fp16 autocast too); a float64 model keeps float64."""
    return x if x.dtype == torch.float64 else x.float()


def _check_tokens(tokens, vocab_size: int):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be (batch, seqlen) int64/int32, got shape {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"tokens must lie in [0, {vocab_size}), got range [{int(tokens.min())}, {int(tokens.max())}]")


class DecoderLM(torch.nn.Module):
    """Decoder-only causal LM: tokens (B, N) int -> logits (B, N, vocab_size) float32 (float64 for a float64 model).

    `step(tokens, state)` decodes incrementally (KV cache / recurrent state, or full recompute for methods
    without decode); `generate` does greedy decoding with it.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = torch.nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = torch.nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        _init_weights(self, cfg.num_layers, cfg.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(tokens))

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N) -> final normed hidden states (B, N, dim); `logits` maps (any rows of) them to logits."""
        _check_tokens(tokens, self.cfg.vocab_size)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., dim) -> logits (..., vocab_size) float32, through the tied embedding."""
        return _float32_or_64(F.linear(h, self.embed.weight))

    def step(self, tokens: torch.Tensor, state: list | None = None):
        """tokens (B, n_new) -> (logits (B, n_new, vocab) float32, new state); state=None starts empty."""
        _check_tokens(tokens, self.cfg.vocab_size)
        if state is not None and (not isinstance(state, list) or len(state) != len(self.blocks)):
            raise ValueError(f"state must be None or the list of {len(self.blocks)} layer states step() returned")
        state = state or [None] * len(self.blocks)
        x, new_state = self.embed(tokens), []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new_state.append(s)
        return self.logits(self.norm(x)), new_state

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: prompt (B, N) -> (B, N + max_new_tokens)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        logits, state = self.step(prompt)
        out = [prompt]
        for i in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1)


class EncoderClassifier(torch.nn.Module):
    """Bidirectional encoder + mean pooling over non-pad tokens + linear head.

    tokens (B, N) int -> logits (B, num_classes) float32 (float64 for a float64 model). Needs cfg.num_classes.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.num_classes is None:
            raise ValueError("EncoderClassifier needs TransformerConfig.num_classes")
        self.cfg = cfg
        self.embed = torch.nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = torch.nn.ModuleList(Block(cfg, causal=False) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = torch.nn.Linear(cfg.dim, cfg.num_classes)
        _init_weights(self, cfg.num_layers, cfg.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, self.cfg.vocab_size)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        x = _float32_or_64(self.norm(x))
        if self.cfg.pad_id is None:
            keep = torch.ones_like(tokens, dtype=x.dtype)
        else:
            keep = (tokens != self.cfg.pad_id).to(x.dtype)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1.0)
        return _float32_or_64(self.head(pooled))


def build_model(cfg: TransformerConfig, kind: str) -> torch.nn.Module:
    """kind "lm" -> DecoderLM, "cls" -> EncoderClassifier."""
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg must be a TransformerConfig, got {type(cfg).__name__}")
    if kind == "lm":
        return DecoderLM(cfg)
    if kind == "cls":
        return EncoderClassifier(cfg)
    raise ValueError(f"kind must be 'lm' (decoder LM) or 'cls' (encoder classifier), got {kind!r}")
