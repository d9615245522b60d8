"""The readable definition of exact attention: the vanilla five steps, materialising S and P.

It lives in `hwattn.reference` because every method's tests use it as the oracle; this module is the
flash folder's pointer to it, so the folder has the same shape as every other method's.
"""
from ...reference import attention, causal_mask

__all__ = ["attention", "causal_mask"]
