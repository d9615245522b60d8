"""Exact IO-aware attention (FlashAttention-2 algorithm) in Triton: dense, block-sparse, packed varlen
and split-KV decoding, all on the same inner loops."""
from .block_mask import BlockMask, create_block_mask
from .decode import flash_decode
from .interface import flash_attention, sdpa
from .varlen import flash_attention_varlen

__all__ = ["flash_attention", "sdpa", "flash_attention_varlen", "flash_decode", "BlockMask", "create_block_mask"]
