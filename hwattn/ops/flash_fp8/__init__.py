"""FP8 (e4m3) forward of exact attention: per-head descales, optional Hadamard rotation of Q and K (FA3's
incoherent processing), bf16 output, on the exact kernel's forward. Forward only."""
from .interface import flash_attention_fp8, flash_attention_fp8_from
from .quant import hadamard_rotate, quantize_fp8, quantize_qkv_fp8

__all__ = ["flash_attention_fp8", "flash_attention_fp8_from", "quantize_fp8", "quantize_qkv_fp8", "hadamard_rotate"]
