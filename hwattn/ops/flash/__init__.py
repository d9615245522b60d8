"""Exact IO-aware attention (FlashAttention-2 algorithm) in Triton."""
from .interface import flash_attention, sdpa

__all__ = ["flash_attention", "sdpa"]
