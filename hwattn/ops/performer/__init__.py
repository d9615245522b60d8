"""Performer (Choromanski et al. 2021): FAVOR+ random features (fused Triton kernels) on the linear-attention core."""
from .interface import draw_projection, favor_features, performer_attention

__all__ = ["draw_projection", "favor_features", "performer_attention"]
