"""Layers built on the method registry: `Attention` (any registered method), RMSNorm, SwiGLU, ShortConv, RoPE."""
from .attention import Attention, DecodeState, describe_methods
from .layers import RMSNorm, ShortConv, SwiGLU
from .rope import apply_rope, rope_angles

__all__ = ["Attention", "DecodeState", "describe_methods", "RMSNorm", "SwiGLU", "ShortConv", "apply_rope",
           "rope_angles"]
