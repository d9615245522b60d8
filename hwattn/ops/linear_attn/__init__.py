"""Linear attention (Katharopoulos et al. 2020): chunked causal / non-causal / recurrent Triton kernels."""
from .interface import linear_attention, linear_attention_recurrent

__all__ = ["linear_attention", "linear_attention_recurrent"]
