"""hwattn: hardware-aware attention for long sequences.

Exact IO-aware attention (FlashAttention-2 algorithm) and approximate attention methods, as Triton
kernels, all in the (batch, seqlen, heads, head_dim) layout unless a function says otherwise.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported on first use so that `import hwattn` does not compile or import every method.
_EXPORTS = {
    "flash_attention": "hwattn.ops.flash",
    "flash_attention_varlen": "hwattn.ops.flash",
    "flash_decode": "hwattn.ops.flash",
    "sdpa": "hwattn.ops.flash",
    "flash_attention_fp8": "hwattn.ops.flash_fp8",
    "flash_attention_fp8_from": "hwattn.ops.flash_fp8",
    "quantize_fp8": "hwattn.ops.flash_fp8",
    "quantize_qkv_fp8": "hwattn.ops.flash_fp8",
    "hadamard_rotate": "hwattn.ops.flash_fp8",
    "create_block_mask": "hwattn.masks",
    "masks": "hwattn.masks",
    "sparse_transformer_attention": "hwattn.ops.sparse_transformer",
    "linear_attention": "hwattn.ops.linear_attn",
    "performer_attention": "hwattn.ops.performer",
    "linformer_attention": "hwattn.ops.linformer",
    "reference": "hwattn.reference",
    "registry": "hwattn.registry",
    "diagnose": "hwattn.diagnose",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        value = module if module.__name__ == f"hwattn.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwattn' has no attribute {name!r}")
