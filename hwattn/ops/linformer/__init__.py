"""Linformer (Wang et al. 2020): softmax attention over learned low-rank projections of K and V."""
from .interface import linformer_attention

__all__ = ["linformer_attention"]
