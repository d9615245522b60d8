"""Layers built on the method registry: `Attention` (any registered method), RMSNorm, SwiGLU, RoPE."""
from .attention import Attention, DecodeState, describe_methods
from .layers import RMSNorm, SwiGLU
from .rope import apply_rope, rope_angles

__all__ = ["Attention", "DecodeState", "describe_methods", "RMSNorm", "SwiGLU", "apply_rope", "rope_angles"]
