"""Block sizes, warps and pipeline depth: autotuned on the GPU per (head_dim, causal, dtype, seqlen
bucket), fixed under the interpreter (where timing means nothing and every config costs minutes)."""
import inspect
import os

import triton

from ..._runtime import interpreting

# (BLOCK_M, BLOCK_N, num_warps, num_stages). Short lists on purpose: each entry is one more compile per
# (head_dim, causal, dtype) and one more timing per shape bucket.
_FWD = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 8, 4),
        (128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 2)]
# dK/dV: a program owns BLOCK_N keys and streams BLOCK_M-row query blocks; dQ: the transpose.
_BWD_DKDV = [(32, 128, 4, 3), (32, 128, 4, 5), (64, 128, 8, 3), (64, 128, 8, 4), (64, 128, 8, 2), (32, 64, 4, 3),
             (64, 64, 4, 3), (16, 128, 4, 3), (16, 64, 4, 2)]
_BWD_DQ = [(128, 32, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3),
           (128, 16, 4, 3), (64, 16, 4, 2)]

_TABLES = {"fwd": _FWD, "dkdv": _BWD_DKDV, "dq": _BWD_DQ}

# Interpreter: unequal block sizes so the CPU tests exercise the diagonal/edge bookkeeping.
_INTERPRETER = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


def _fits(block_m, block_n, num_stages, head_dim) -> bool:
    """Keep configs whose tiles fit Hopper/Ampere shared memory and registers."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if block_d >= 256:
        return block_m * block_n <= 64 * 64 and num_stages <= 2
    if block_d >= 128:
        return block_m * block_n <= 128 * 128 and num_stages <= 4
    return True


def configs(kind: str):
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in _TABLES[kind]]


def fwd_configs():
    return configs("fwd")


def _prune(configs_list, named_args, **kwargs):
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    mask_m, mask_n = kwargs.get("MASK_BLOCK_M", 256), kwargs.get("MASK_BLOCK_N", 256)
    kept = [c for c in configs_list if _fits(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, head_dim)
            and c.kwargs["BLOCK_M"] <= mask_m and c.kwargs["BLOCK_N"] <= mask_n]
    if kept:
        return kept
    # a block mask finer than every config: shrink the smallest config's tiles to the mask blocks
    c = configs_list[-1]
    return [triton.Config({"BLOCK_M": min(c.kwargs["BLOCK_M"], mask_m), "BLOCK_N": min(c.kwargs["BLOCK_N"], mask_n)},
                          num_warps=c.num_warps, num_stages=c.num_stages)]


def autotuned(kernel, make_configs):
    """Wrap `kernel` in triton.autotune, caching the chosen configs on disk where this Triton can."""
    extra = {}
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        extra["cache_results"] = True
    return triton.autotune(configs=make_configs(), key=["seq_bucket", "HEAD_DIM", "CAUSAL", "DOT_PRECISION", "HAS_MASK",
                                                       "MASK_BLOCK_M", "MASK_BLOCK_N"],
                           prune_configs_by={"early_config_prune": _prune}, **extra)(kernel)


# GPU defaults when autotuning is off (HWATTN_AUTOTUNE=0): (BLOCK_M, BLOCK_N, num_warps, num_stages)
_DEFAULT = {"fwd": {64: (128, 64, 4, 3), 128: (128, 128, 8, 3), 256: (64, 32, 4, 2)},
            "dkdv": {64: (64, 128, 8, 3), 128: (64, 128, 8, 3), 256: (16, 64, 4, 2)},
            "dq": {64: (128, 64, 8, 3), 128: (128, 64, 8, 3), 256: (64, 16, 4, 2)}}


def autotune_enabled() -> bool:
    """Autotuning is on by default on the GPU; HWATTN_AUTOTUNE=0 uses the fixed defaults (fast start-up,
    e.g. for tests or one-off huge shapes where timing every config would cost more than it saves)."""
    return os.environ.get("HWATTN_AUTOTUNE", "1") not in ("0", "false", "False")


def fixed_config(kind: str, head_dim: int, dtype, mask_meta=None) -> dict:
    """Launch parameters when not autotuning: interpreter blocks on CPU, tuned defaults on a GPU; tiles
    never larger than a block mask's blocks."""
    mask_m = (mask_meta or {}).get("MASK_BLOCK_M", 256)
    mask_n = (mask_meta or {}).get("MASK_BLOCK_N", 256)
    if interpreting():
        block_m, block_n = _INTERPRETER[kind]
        return {"BLOCK_M": min(block_m, mask_m), "BLOCK_N": min(block_n, mask_n)}
    block_d = max(16, triton.next_power_of_2(head_dim))
    bucket = 64 if block_d <= 64 else (128 if block_d <= 128 else 256)
    block_m, block_n, warps, stages = _DEFAULT[kind][bucket]
    return {"BLOCK_M": min(block_m, mask_m), "BLOCK_N": min(block_n, mask_n), "num_warps": warps,
            "num_stages": stages}
