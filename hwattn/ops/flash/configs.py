"""Block sizes, warps and pipeline depth: autotuned on the GPU per (head_dim, causal, dtype, seqlen
bucket), fixed under the interpreter (where timing means nothing and every config costs minutes)."""
import inspect
import os

import triton

from ..._runtime import env_choice, fitted_key, interpreting, launch_fewer_stages

# (BLOCK_M, BLOCK_N, num_warps, num_stages). Short lists on purpose: each entry is one more compile per
# (head_dim, causal, dtype) and one more timing per shape bucket.
_FWD = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 8, 4),
        (128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 2), (128, 128, 4, 3)]
# FP8 forward: the entries of _FWD it tunes over; a head_dim none of them fits (256) falls back to the generic
# pruning. The 4-warp ones: one warpgroup owns all 128 rows, and the e4m3 tiles leave room for two programs per
# SM, which no barrier couples, so one's softmax can run under the other's matmuls (the likely reason, not
# measured by counters). On an H200 (2026-12-03, scripts/exp_fp8_fwd.py) 128x128 w4 s3 was the best
# pointer-fed config, 744 / 773 TFLOP/s at N = 4096 / 16384 against 715 / 752 for 128x128 w8 s3. In bf16 the
# same tiles were ~40% slower (one program per SM), so 128x128 w4 is tried for FP8 only.
_FWD_FP8 = {(128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 8, 3), (128, 128, 4, 3), (128, 64, 4, 3)}
_FWD_FP8_ONLY = {(128, 128, 4, 3)}
# dK/dV: a program owns BLOCK_N keys and streams BLOCK_M-row query blocks; dQ: the transpose.
_BWD_DKDV = [(32, 128, 4, 3), (32, 128, 4, 5), (64, 128, 8, 3), (64, 128, 8, 4), (64, 128, 8, 2), (32, 64, 4, 3),
             (64, 64, 4, 3), (16, 128, 4, 3), (16, 64, 4, 2)]
# dK/dV that also adds dQ with atomics (HWATTN_BWD=atomic): one more 64-row accumulator, so 8 warps and
# narrower key blocks too (ptxas -v, sm_90, D = 128: 64x128 spills 156-180 B, causal 360-672 B; 64x64 0-140 B)
_BWD_DKDV_ATOMIC = [(64, 128, 8, 3), (64, 128, 8, 2), (64, 64, 8, 3), (64, 64, 8, 2), (32, 64, 8, 3),
                    (128, 64, 8, 3), (32, 128, 4, 3), (16, 64, 4, 2)]
_BWD_DQ = [(128, 32, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3),
           (128, 16, 4, 3), (64, 16, 4, 2)]

# The one-launch backward: (BLOCK_M1, BLOCK_N1) of its dK/dV half, (BLOCK_M2, BLOCK_N2) of its dQ half, warps,
# stages. BLOCK_N1 == BLOCK_M2 throughout: program j's two halves then cover key block j and query block j,
# whose causal work adds up to the same for every j.
_BWD_FUSED = [(64, 128, 128, 64, 8, 3), (64, 128, 128, 64, 8, 4), (64, 128, 128, 64, 8, 2),
              (32, 128, 128, 32, 4, 3), (32, 128, 128, 32, 8, 3), (64, 128, 128, 32, 8, 3),
              (64, 64, 64, 64, 4, 3), (32, 64, 64, 32, 4, 3), (32, 64, 64, 32, 4, 2), (16, 64, 64, 16, 4, 2)]

# Its program order (`backward._fused_blocks`): paired (0) for every config; halves (1) only for these, the
# configs that win at D <= 128, and only for plain dense non-causal attention (H200, 2026-12-03, fixed configs,
# two rounds: non-causal 0.98-1.03x paired at N = 2048-8192, 1.01-1.04x at 16384; causal 0.97-0.99x).
_BWD_FUSED_HALVES = {(64, 128, 128, 64, 8, 3), (64, 128, 128, 64, 8, 4)}
FUSED_ORDERS = ("auto", "paired", "halves")

_TABLES = {"fwd": _FWD, "dkdv": _BWD_DKDV, "dkdv_atomic": _BWD_DKDV_ATOMIC, "dq": _BWD_DQ, "fused": _BWD_FUSED}

# Interpreter: unequal block sizes so the CPU tests exercise the diagonal/edge bookkeeping.
_INTERPRETER = {"fwd": (32, 16), "dkdv": (16, 32), "dkdv_atomic": (16, 32), "dq": (32, 16), "fused": (16, 32, 32, 16)}
_TILE_NAMES = {2: ("BLOCK_M", "BLOCK_N"), 4: ("BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")}


def _fits(block_m, block_n, num_stages, head_dim) -> bool:
    """Keep configs whose tiles fit Hopper/Ampere shared memory and registers."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if block_d >= 256:
        return block_m * block_n <= 64 * 64 and num_stages <= 2
    if block_d >= 128:
        return block_m * block_n <= 128 * 128 and num_stages <= 4
    return True


def configs(kind: str, orders: bool = False):
    """The configs of a kernel kind; orders: the dense one-launch backward's, each in both program orders (the
    varlen one-launch kernel has none)."""
    made = [triton.Config(dict(zip(_TILE_NAMES[len(c) - 2], c[:-2])), num_warps=c[-2], num_stages=c[-1])
            for c in _TABLES[kind]]
    if not orders:
        return made
    return [triton.Config({**c.kwargs, "ORDER": order}, num_warps=c.num_warps, num_stages=c.num_stages)
            for order in (0, 1) for c in made]


def fused_order() -> str:
    """HWATTN_FUSED_ORDER: the one-launch backward's program order. auto (default): paired, and halves also
    tried by the autotuner for plain dense non-causal attention; paired / halves: only that order."""
    return env_choice("HWATTN_FUSED_ORDER", FUSED_ORDERS)


def _order_allowed(c, kwargs) -> bool:
    order, wanted = c.kwargs["ORDER"], fused_order()
    if wanted != "auto":
        return order == FUSED_ORDERS.index(wanted) - 1
    plain = not any(kwargs.get(k) for k in ("CAUSAL", "HAS_MASK", "WINDOW", "SOFTCAP", "ALIBI", "REL_BIAS"))
    tiles = (*(c.kwargs[k] for k in ("BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2")), c.num_warps, c.num_stages)
    return order == 0 or (plain and tiles in _BWD_FUSED_HALVES)


def _tiles(kwargs) -> list[tuple[int, int]]:
    """The (BLOCK_M, BLOCK_N) tiles of a config: one, or the fused backward's two."""
    if "BLOCK_M1" in kwargs:
        return [(kwargs["BLOCK_M1"], kwargs["BLOCK_N1"]), (kwargs["BLOCK_M2"], kwargs["BLOCK_N2"])]
    return [(kwargs["BLOCK_M"], kwargs["BLOCK_N"])]


def _shrunk(kwargs, mask_m, mask_n) -> dict:
    """kwargs with every tile cut down to a block mask's blocks (M sizes to its rows, N sizes to its columns);
    other kwargs (the one launch's ORDER) as they are."""
    return {k: (min(v, mask_m if "_M" in k else mask_n) if k.startswith("BLOCK_") else v) for k, v in kwargs.items()}


def fwd_configs():
    return configs("fwd")


def _prune(configs_list, named_args, **kwargs):
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    mask_m, mask_n = kwargs.get("MASK_BLOCK_M", 256), kwargs.get("MASK_BLOCK_N", 256)
    q = named_args.get("Q")
    if q is not None and "BLOCK_M" in configs_list[0].kwargs:
        def entry(c):
            return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages
        if q.element_size() == 1:
            fp8 = [c for c in configs_list
                   if entry(c) in _FWD_FP8 and _fits(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, head_dim)]
            if fp8:
                return fp8
        else:
            configs_list = [c for c in configs_list if entry(c) not in _FWD_FP8_ONLY]
    if "ORDER" in configs_list[0].kwargs:
        configs_list = [c for c in configs_list if _order_allowed(c, kwargs)]
    kept = [c for c in configs_list if all(_fits(bm, bn, c.num_stages, head_dim) and bm <= mask_m and bn <= mask_n
                                           for bm, bn in _tiles(c.kwargs))]
    if kept:
        return kept
    # a block mask finer than every config: shrink the smallest config's tiles to the mask blocks
    c = configs_list[-1]
    return [triton.Config(_shrunk(c.kwargs, mask_m, mask_n), num_warps=c.num_warps, num_stages=c.num_stages)]


# Autotune keys: the score mods and the window change the work per score, so each gets its own tuning.
_KEYS = ("seq_bucket", "HEAD_DIM", "CAUSAL", "DOT_PRECISION", "HAS_MASK", "MASK_BLOCK_M", "MASK_BLOCK_N",
         "PARTIAL_KIND", "WINDOW", "SOFTCAP", "ALIBI", "REL_BIAS", "REL_BIAS_GRAD", "PERSISTENT", "ATOMIC_DQ")


def _time_trial(kernel_call, quantiles):
    """One autotuning trial: 250 ms of calls (Triton's default is 100). A kernel's best configs lie within a few
    percent of each other, and at 100 ms the pick moved from run to run (H200, 2026-12-03: the causal one-launch
    backward at N = 4096 took 2 stages in one run, 352 TFLOP/s, and 3 in the next, 366)."""
    return triton.testing.do_bench(kernel_call, warmup=50, rep=250, quantiles=quantiles)


def tuning_options() -> dict:
    """triton.autotune options of every hwattn kernel: longer trials, and the chosen configs cached on disk
    where this Triton can."""
    params = inspect.signature(triton.autotune).parameters
    extra = {"do_bench": _time_trial} if "do_bench" in params else {}
    if "cache_results" in params:
        extra["cache_results"] = True
    return extra


def autotuned(kernel, make_configs, zeroed=("DBIAS",)):
    """Wrap `kernel` in triton.autotune (`tuning_options`). Keys are the entries of _KEYS that are `kernel`'s
    arguments (Triton refuses others); the `zeroed` arguments, outputs accumulated with atomics (DBIAS,
    d rel_bias; DQ_ACC, the atomic backward's dQ), are zeroed before every timed trial and before the real run."""
    extra = tuning_options()
    reset = [name for name in zeroed if name in kernel.arg_names]
    if reset:
        extra["reset_to_zero"] = reset
    return triton.autotune(configs=make_configs(), key=[k for k in _KEYS if k in kernel.arg_names],
                           prune_configs_by={"early_config_prune": _prune}, **extra)(kernel)


# GPU defaults when autotuning is off (HWATTN_AUTOTUNE=0): (BLOCK_M, BLOCK_N, num_warps, num_stages)
_DEFAULT = {"fwd": {64: (128, 64, 4, 3), 128: (128, 128, 8, 3), 256: (64, 32, 4, 2)},
            "dkdv": {64: (64, 128, 8, 3), 128: (64, 128, 8, 3), 256: (16, 64, 4, 2)},
            "dkdv_atomic": {64: (64, 128, 8, 3), 128: (64, 64, 8, 2), 256: (16, 64, 4, 2)},
            "dq": {64: (128, 64, 8, 3), 128: (128, 64, 8, 3), 256: (64, 16, 4, 2)},
            "fused": {64: (64, 128, 128, 64, 8, 3), 128: (64, 128, 128, 64, 8, 3), 256: (16, 64, 64, 16, 4, 2)}}


def autotune_enabled() -> bool:
    """Autotuning is on by default on the GPU; HWATTN_AUTOTUNE=0 uses the fixed defaults (fast start-up,
    e.g. for tests or one-off huge shapes where timing every config would cost more than it saves)."""
    return os.environ.get("HWATTN_AUTOTUNE", "1") not in ("0", "false", "False")


def fixed_config(kind: str, head_dim: int, dtype, mask_meta=None, orders: bool = False) -> dict:
    """Launch parameters when not autotuning: interpreter blocks on CPU, tuned defaults on a GPU; tiles
    never larger than a block mask's blocks."""
    mask_m = (mask_meta or {}).get("MASK_BLOCK_M", 256)
    mask_n = (mask_meta or {}).get("MASK_BLOCK_N", 256)
    # the one launch's order without autotuning: paired unless HWATTN_FUSED_ORDER=halves
    order = {"ORDER": int(fused_order() == "halves")} if orders else {}
    if interpreting():
        tiles = _INTERPRETER[kind]
        return {**_shrunk(dict(zip(_TILE_NAMES[len(tiles)], tiles)), mask_m, mask_n), **order}
    block_d = max(16, triton.next_power_of_2(head_dim))
    bucket = 64 if block_d <= 64 else (128 if block_d <= 128 else 256)
    *tiles, warps, stages = _DEFAULT[kind][bucket]
    return {**_shrunk(dict(zip(_TILE_NAMES[len(tiles)], tiles)), mask_m, mask_n), **order, "num_warps": warps,
            "num_stages": stages}


# A fixed config whose key block had to be halved to fit, per launch (`_runtime.fitted_key`): the config that
# launched. The stage count that fits is launch_fewer_stages' own memo (stage counts, not configs: its own dict).
_FITTED_CONFIGS: dict = {}


def launch_fixed(kernel, grid_of, args, meta, cfg: dict) -> None:
    """Launch with a fixed config; when the compiled kernel needs more shared memory than the GPU has (the
    score mods' extra tiles can push the tuned defaults over, e.g. 128x128 with 3 stages at D = 128), retry
    with one pipeline stage less, then with half the key block, as the autotuner would skip such a config; the
    config that fits is remembered per launch parameters (`_runtime.fitted_key`), so later calls go straight to
    it. The interpreter never raises this (it compiles nothing)."""
    from triton.runtime.errors import OutOfResources
    key = fitted_key(kernel, args, {**meta, **cfg})
    cfg = dict(_FITTED_CONFIGS.get(key, cfg))
    while True:
        try:
            launch_fewer_stages(kernel, grid_of(cfg), *args, **meta, **cfg)  # down to one stage first
            return
        except OutOfResources:
            n_keys = [k for k in ("BLOCK_N", "BLOCK_N1", "BLOCK_N2") if cfg.get(k, 0) > 16]
            if not n_keys:
                raise
            for k in n_keys:
                cfg[k] //= 2
            if "BLOCK_M2" in cfg and "BLOCK_N1" in n_keys:
                cfg["BLOCK_M2"] = max(16, cfg["BLOCK_M2"] // 2)  # keep BLOCK_N1 == BLOCK_M2 (the pairing)
            cfg["num_stages"] = 2
            _FITTED_CONFIGS[key] = dict(cfg)
