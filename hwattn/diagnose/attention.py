"""The essay's claim, computed: memory traffic and FLOPs of naive attention against the tiled kernel.

Naive attention, the five steps (S and P go through memory):
    1. read Q, K; S = Q K^T; write S          2. read S        3. P = softmax(S); write P
    4. read P, V; O = P V                      5. write O
    bytes = itemsize * (Q + K + V + O + 4 * S), S = B * H * Nq * Nk elements; FLOPs = 4 * B * H * Nq * Nk * D
    (the full matmuls: a causal mask does not save the naive code any work or traffic).
Tiled kernel (FlashAttention-2 forward), one program per (batch, head, block of block_m queries):
    Q read once, O written once; every query block streams the K and V rows it needs (all Nk rows, or up
    to the causal diagonal rounded up to block_n): bytes = itemsize * (Q + O + 2 * D * B * H * sum over
    query blocks of K/V rows); FLOPs = 4 * D * B * H * sum over query blocks of (rows * K/V rows).
    That count (the FlashAttention paper's) treats every K/V re-read as memory traffic. On a GPU, the
    query blocks of one head run at the same time and re-read K/V from L2, so HBM sees close to the floor:
    `tiled_min` = itemsize * (Q + K + V + O). `hbm_tiled(l2_bytes)` picks the floor when one head's K and
    V fit in half the L2, else the no-reuse count.
Softmax's few FLOPs per score are left out, as in the usual convention (4 * B * H * Nq * Nk * D).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from .._checks import check_bool
from . import _format as fmt
from ._device import resolve_device

__all__ = ["AttentionCost", "AttentionModel", "attention_model", "diagnose_attention", "AttentionDiagnosis",
           "IMPLS"]

IMPLS = ("naive", "hwattn", "sdpa")
_INTERPRETER_MAX_WORK = 2**23  # B * H * Nq * Nk * D above which the Triton interpreter is too slow to wait for


@dataclass
class AttentionCost:
    name: str
    flops: float
    bytes: float
    parts: dict = field(default_factory=dict)  # what the bytes are made of

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes


@dataclass
class AttentionModel:
    """Bytes and FLOPs of one attention forward, naive against tiled (see the module docstring)."""
    batch: int
    seqlen_q: int
    seqlen_k: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    dtype: torch.dtype
    block_m: int
    block_n: int
    naive: AttentionCost
    tiled: AttentionCost
    tiled_min: AttentionCost
    useful_flops: float  # the convention for TFLOP/s: 4 B H Nq Nk D, half when causal

    def hbm_tiled(self, l2_bytes: int | None) -> AttentionCost:
        """The tiled kernel's memory traffic given a cache of l2_bytes (None: no cache reuse assumed)."""
        kv_head = 2 * self.seqlen_k * self.head_dim * self.dtype.itemsize
        return self.tiled_min if l2_bytes and kv_head <= l2_bytes // 2 else self.tiled

    def table(self, ceilings=None):
        shape = (f"B={self.batch} Nq={self.seqlen_q} Nk={self.seqlen_k} H={self.heads}"
                 f"{f' Hkv={self.kv_heads}' if self.kv_heads != self.heads else ''} D={self.head_dim} "
                 f"{'causal ' if self.causal else ''}{str(self.dtype).replace('torch.', '')}")
        t = fmt.Table(title=f"Attention IO model: {shape}")
        for col in ("", "FLOPs", "memory traffic", "FLOP/byte"):
            t.add_column(col, justify="right" if col else "left")
        if ceilings is not None:
            for col in ("ridge", "bound", "roofline time"):
                t.add_column(col, justify="right")
        for cost in (self.naive, self.tiled, self.tiled_min):
            row = [cost.name, fmt.rate(cost.flops, "FLOP"), fmt.nbytes(cost.bytes), f"{cost.intensity:.3g}"]
            if ceilings is not None:
                peak, _ = ceilings.peak(self.dtype)
                ridge = peak / ceilings.bandwidth
                t_c, t_m = cost.flops / peak, cost.bytes / ceilings.bandwidth
                row += [f"{ridge:.3g}", "memory" if t_m >= t_c else "compute", fmt.seconds(max(t_c, t_m))]
            t.add_row(*row)
        return t


def _pos_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def attention_model(batch: int, seqlen: int, heads: int, head_dim: int, causal: bool = False,
                    dtype: torch.dtype = torch.bfloat16, seqlen_k: int | None = None, kv_heads: int | None = None,
                    block_m: int = 128, block_n: int = 64) -> AttentionModel:
    """Bytes and FLOPs of naive vs tiled attention for q (batch, seqlen, heads, head_dim) and k/v
    (batch, seqlen_k, kv_heads, head_dim) (defaults: seqlen_k = seqlen, kv_heads = heads).

    causal is bottom-right aligned (flash_attn) when seqlen != seqlen_k. block_m / block_n: the tiled
    kernel's query / key block sizes (FlashAttention-2 on an H100: 128 / 64 or 128 / 128).
    Returns an `AttentionModel`; formulas in the module docstring.
    """
    for name, v in (("batch", batch), ("seqlen", seqlen), ("heads", heads), ("head_dim", head_dim),
                    ("block_m", block_m), ("block_n", block_n)):
        _pos_int(name, v)
    check_bool("causal", causal)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    nk = seqlen if seqlen_k is None else _pos_int("seqlen_k", seqlen_k)
    hkv = heads if kv_heads is None else _pos_int("kv_heads", kv_heads)
    if heads % hkv:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({hkv})")
    nq, e = seqlen, dtype.itemsize
    q_el = batch * nq * heads * head_dim
    kv_el = batch * nk * hkv * head_dim
    s_el = batch * heads * nq * nk
    naive_parts = {"read Q, K": e * (q_el + kv_el), "write S": e * s_el, "read S": e * s_el,
                   "write P": e * s_el, "read P, V": e * (s_el + kv_el), "write O": e * q_el}
    naive = AttentionCost("naive (five steps: S, P in memory)", 4.0 * s_el * head_dim,
                          float(sum(naive_parts.values())), naive_parts)

    kv_rows_total, score_el = 0, 0
    for i in range(math.ceil(nq / block_m)):
        rows = min(nq, (i + 1) * block_m) - i * block_m
        if causal:
            last_key = min(nq, (i + 1) * block_m) - 1 + (nk - nq)  # bottom-right aligned diagonal
            kv = min(nk, math.ceil(max(0, last_key + 1) / block_n) * block_n)
        else:
            kv = nk
        kv_rows_total += kv
        score_el += rows * kv
    tiled_flops = 4.0 * batch * heads * head_dim * score_el
    tiled_parts = {"read Q": e * q_el, "read K, V per query block": e * 2 * batch * heads * head_dim * kv_rows_total,
                   "write O": e * q_el}
    tiled = AttentionCost(f"tiled (K/V per {block_m}-query block)", tiled_flops,
                          float(sum(tiled_parts.values())), tiled_parts)
    min_parts = {"read Q": e * q_el, "read K, V once": e * 2 * kv_el, "write O": e * q_el}
    tiled_min = AttentionCost("tiled, K/V re-reads from cache (floor)", tiled_flops,
                              float(sum(min_parts.values())), min_parts)
    useful = 4.0 * s_el * head_dim / (2 if causal and nq == nk else 1)
    return AttentionModel(batch, nq, nk, heads, hkv, head_dim, causal, dtype, block_m, block_n, naive, tiled,
                          tiled_min, useful)


@dataclass
class AttentionDiagnosis:
    model: AttentionModel
    reports: dict          # impl -> Report
    skipped: dict          # impl -> why it did not run
    errors: dict           # impl -> error message
    ceilings: object = None

    def print(self, console=None):
        console = console or fmt.console()
        console.print(self.model.table(self.ceilings))
        if self.reports:
            console.print(fmt.reports_table(list(self.reports.values()), title="Measured"))
            for line in fmt.evidence_lines(list(self.reports.values())):
                console.print(line)
        for impl, why in self.skipped.items():
            console.print(f"[yellow]{impl}: skipped: {fmt._escape(why)}[/yellow]")
        for impl, err in self.errors.items():
            console.print(f"[red]{impl}: failed: {fmt._escape(err)}[/red]")


def _available_bytes(device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def diagnose_attention(batch: int = 1, seqlen: int | None = None, heads: int | None = None,
                       head_dim: int | None = None, causal: bool = False, dtype: torch.dtype | None = None,
                       impls=IMPLS, device=None, ceilings=None, block_m: int = 128, block_n: int = 64,
                       show: bool = True, plot: str | None = None, measure: bool = True) -> AttentionDiagnosis:
    """The attention IO model, and each implementation measured and judged on the device's roofline.

    impls: any of "naive" (hwattn.reference.attention, the five steps), "hwattn" (hwattn.flash_attention,
    Triton; on CPU only under TRITON_INTERPRET=1 and small sizes), "sdpa" (torch's
    scaled_dot_product_attention, (B, H, N, D) layout, best available backend). Defaults: CUDA: seqlen
    16384, heads 16, head_dim 128, bfloat16; CPU: 1024, 4, 64, float32. An impl that cannot run (missing,
    too large for free memory, too slow in the interpreter) is skipped with the reason; one that raises is
    reported as failed, the others still run. measure=False prints only the model. device: default cuda if
    available, else cpu. plot: path of a roofline PNG (measured points and the model's).
    Returns an `AttentionDiagnosis` (model, reports, skipped, errors).
    """
    dev = resolve_device(device)
    check_bool("show", show)
    check_bool("measure", measure)
    if plot is not None and (not isinstance(plot, str) or not plot):
        raise TypeError(f"plot must be a file path (str) or None, got {plot!r}")
    cuda = dev.type == "cuda"
    seqlen = seqlen if seqlen is not None else (16384 if cuda else 1024)
    heads = heads if heads is not None else (16 if cuda else 4)
    head_dim = head_dim if head_dim is not None else (128 if cuda else 64)
    dtype = dtype if dtype is not None else (torch.bfloat16 if cuda else torch.float32)
    if isinstance(impls, str):
        impls = [s.strip() for s in impls.split(",") if s.strip()]
    impls = list(impls)
    bad = [i for i in impls if i not in IMPLS]
    if bad or not impls:
        raise ValueError(f"impls must be a non-empty list of {', '.join(IMPLS)}; got {impls!r}")
    model = attention_model(batch, seqlen, heads, head_dim, causal, dtype, block_m=block_m, block_n=block_n)
    from ._profile import _check_ceilings
    c = _check_ceilings(ceilings, dev)
    diag = AttentionDiagnosis(model, {}, {}, {}, c)
    if measure:
        gen = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device=dev, generator=gen).to(dtype)
                   for _ in range(3))
        for impl in impls:
            _run_impl(diag, impl, q, k, v, causal, dev, c)
    if show:
        diag.print()
    if plot:
        from .roofline import ModelPoint, plot_roofline
        pts = list(diag.reports.values())
        peak, _ = c.peak(dtype)
        for short, cost in (("naive", model.naive), ("tiled", model.tiled), ("tiled floor", model.tiled_min)):
            pts.append(ModelPoint(f"model: {short}", cost.intensity, min(peak, cost.intensity * c.bandwidth)))
        try:
            plot_roofline(c, pts, plot, title=f"Attention on {c.name}: B={batch} N={seqlen} H={heads} "
                          f"D={head_dim}{' causal' if causal else ''}")
        except ImportError as e:  # no matplotlib here: keep the measurements
            diag.errors["plot"] = f"no roofline PNG: {e}"
    return diag


def _run_impl(diag, impl, q, k, v, causal, dev, c):
    from ._verdict import report
    model = diag.model
    if impl == "naive":
        need = 4 * model.naive.parts["write S"]  # S, exp, P and a mask-sized temporary at once
        free = _available_bytes(dev)
        if free is not None and need > 0.8 * free:
            diag.skipped[impl] = (f"needs ~{fmt.nbytes(need)} for S and P, {fmt.nbytes(free)} free; "
                                  f"pass a smaller --n/--heads")
            return
        from ..reference import attention
        fn, cost = (lambda: attention(q, k, v, causal=causal)), model.naive
    elif impl == "hwattn":
        try:
            from ..ops.flash import flash_attention
        except Exception as e:  # absent, or broken on this Triton: skip it, run the others
            diag.skipped[impl] = f"hwattn.ops.flash is not importable ({e})"
            return
        from .._runtime import interpreting
        if dev.type == "cpu":
            if not interpreting():
                diag.skipped[impl] = ("the Triton kernel needs a CUDA GPU; on CPU set TRITON_INTERPRET=1 "
                                      "before starting (slow, small sizes only)")
                return
            work = model.batch * model.heads * model.seqlen_q * model.seqlen_k * model.head_dim
            if work > _INTERPRETER_MAX_WORK:
                diag.skipped[impl] = (f"too slow in the Triton interpreter at this size (B*H*N*N*D = {work:.3g} > "
                                      f"{_INTERPRETER_MAX_WORK:.3g}); its CPU time says nothing about hardware anyway")
                return
        fn, cost = (lambda: flash_attention(q, k, v, causal=causal)), model.hbm_tiled(c.l2_bytes)
    else:
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fn, cost = (lambda: sdpa(qt, kt, vt, is_causal=causal)), model.hbm_tiled(c.l2_bytes)
    try:
        rep = report(fn, flops=cost.flops, bytes=cost.bytes, name=impl, device=dev, ceilings=c, show=False,
                     dtype=q.dtype)
    except Exception as e:  # one failing implementation must not hide the others
        diag.errors[impl] = f"{type(e).__name__}: {e}"
        return
    rep.verdict.notes.append(f"FLOPs and bytes from the model: {cost.name}")
    if impl == "hwattn" and dev.type == "cpu":
        rep.verdict.notes.append("ran in the Triton interpreter: its time is Python, not hardware")
    diag.reports[impl] = rep
