"""Sparse Transformer attention (strided and fixed factorised patterns) on the block-sparse exact kernel."""
from .interface import sparse_transformer_attention, sparse_transformer_block_mask

__all__ = ["sparse_transformer_attention", "sparse_transformer_block_mask"]
