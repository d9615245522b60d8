"""Sparse Transformer attention (Child et al. 2019), the readable definition: softmax attention under the
union of the two factorised heads' patterns, applied as a dense boolean mask (float64-capable)."""
import torch

from ...reference import attention


def pattern_mask(pattern: str, n: int, stride: int = 128, block_len: int = 128, summary: int = 1,
                 device=None) -> torch.Tensor:
    """(n, n) bool: True where query i attends key j.
    strided: j <= i and (i - j < stride or (i - j) % stride == 0).
    fixed:   j <= i and (i // block_len == j // block_len or j % block_len >= block_len - summary)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    if pattern == "strided":
        return (j <= i) & (((i - j) < stride) | ((i - j) % stride == 0))
    if pattern == "fixed":
        return (j <= i) & (((i // block_len) == (j // block_len)) | ((j % block_len) >= block_len - summary))
    raise ValueError(f"pattern must be 'strided' or 'fixed', got {pattern!r}")


def sparse_transformer_attention(q, k, v, pattern="strided", stride=128, block_len=128, summary=1,
                                 softmax_scale=None):
    """q, k, v (B, N, H, D) -> (B, N, H, D)."""
    mask = pattern_mask(pattern, q.shape[1], stride, block_len, summary, device=q.device)
    return attention(q, k, v, softmax_scale=softmax_scale, mask=mask)
