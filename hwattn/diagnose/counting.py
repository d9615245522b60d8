"""Counting what an op does: FLOPs and bytes, per aten op and in total, by running it once.

FLOPs
    matmul-like ops (mm, bmm, addmm, convolution, scaled_dot_product_attention ...): torch's own
    `torch.utils.flop_counter` formulas (2 FLOPs per multiply-add).
    "vector" FLOPs, counted here because flop_counter ignores them: 1 per output element of a pointwise
    arithmetic op (add, mul, exp, ...; not copies, casts or selects), 1 per input element of a reduction
    (sum, amax, mean, ...), 5 per element of softmax / log_softmax (max, subtract, exp, sum, divide).
Bytes
    bytes_min: the fewest bytes the whole call must move: every distinct input tensor read once (module
        parameters and buffers included; inputs that no op reads, like a copy_ destination, left out),
        every output written once.
    bytes_ops: what eager execution moves: for each aten op, its distinct tensor inputs read once and its
        outputs written once. Views (transpose, expand, reshape of contiguous data) and `empty` move
        nothing; copy_/fill_/zero_ do not read the tensor they overwrite. Intermediates that a fused
        kernel would keep on chip (the naive attention's S and P) are counted here, not in bytes_min.
    A tensor's bytes are the span of memory it covers (an expanded stride-0 tensor is not counted per
    element). Caches are ignored: bytes_ops is traffic to wherever the data lives, an upper bound on DRAM/HBM
    traffic for data that stays in cache between ops.
Ops that run outside torch's dispatcher (a raw Triton launch, numpy) are invisible here: pass flops= and
bytes= to `profile` for them. hwattn's own kernels are custom ops, so their inputs and outputs are counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count", "Counts", "OpCount", "tensor_bytes"]

try:  # public module-level dict since torch 2.1; the fallback only loses matmul FLOPs per op
    from torch.utils.flop_counter import flop_registry as _FLOP_REGISTRY
except ImportError:  # pragma: no cover
    _FLOP_REGISTRY = {}

_aten = torch.ops.aten
_ZERO_COST = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view",
              "_reshape_alias", "alias", "detach", "lift_fresh", "_local_scalar_dense", "set_", "resize_",
              "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "record_stream"}
# pointwise-tagged ops that only move data: no FLOPs
_MOVES = {"clone", "copy", "copy_", "_to_copy", "to", "where", "masked_fill", "masked_fill_", "fill", "fill_",
          "zero_", "zeros_like", "ones_like", "full_like", "lift_fresh_copy", "_copy_from", "contiguous",
          "bitwise_not", "logical_not", "sign", "signbit", "isnan", "isinf", "isfinite", "eq", "ne", "lt", "le",
          "gt", "ge", "logical_and", "logical_or", "bitwise_and", "bitwise_or", "view_as_real", "view_as_complex"}
# in-place ops that overwrite their first argument without reading it
_WRITE_ONLY_SELF = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_",
                    "geometric_", "cauchy_", "log_normal_", "index_put_"}
_SOFTMAX = {"_softmax", "_log_softmax", "softmax", "log_softmax", "_safe_softmax"}
_SOFTMAX_FLOPS_PER_ELEMENT = 5
_POINTWISE = getattr(torch.Tag, "pointwise", None)
_REDUCTION = getattr(torch.Tag, "reduction", None)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of memory a tensor covers: its strided span (not numel * itemsize for expanded tensors)."""
    if t.numel() == 0:
        return 0
    try:
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        total = min(span, t.untyped_storage().nbytes() // t.element_size())
        return int(total) * t.element_size()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, exotic subclasses
        return t.numel() * t.element_size()


def _flat_tensors(obj, out=None):
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _flat_tensors(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _flat_tensors(x, out)
    return out


def _key(t: torch.Tensor):
    try:
        return (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
    except RuntimeError:
        return id(t)


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        k = _key(t)
        if k in seen:
            continue
        seen.add(k)
        total += tensor_bytes(t)
    return total


@dataclass
class OpCount:
    name: str
    matmul_flops: int
    vector_flops: int
    bytes: int
    dtype: torch.dtype | None


@dataclass
class Counts:
    """What one call did: per-op counts and totals (see the module docstring for the rules)."""
    ops: list = field(default_factory=list)
    bytes_min: int = 0
    output: object = None

    @property
    def matmul_flops(self) -> int:
        return sum(o.matmul_flops for o in self.ops)

    @property
    def vector_flops(self) -> int:
        return sum(o.vector_flops for o in self.ops)

    @property
    def flops(self) -> int:
        return self.matmul_flops + self.vector_flops

    @property
    def bytes_ops(self) -> int:
        return sum(o.bytes for o in self.ops)

    @property
    def n_ops(self) -> int:
        """aten ops that move bytes or do FLOPs (views and allocations not counted)."""
        return sum(1 for o in self.ops if o.bytes or o.matmul_flops or o.vector_flops)

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the op doing the most matmul FLOPs, else of the op moving the most bytes."""
        if not self.ops:
            return None
        if self.matmul_flops:
            return max(self.ops, key=lambda o: o.matmul_flops).dtype
        return max(self.ops, key=lambda o: o.bytes).dtype

    def compute_time(self, ceilings, device: torch.device) -> float:
        """Seconds the FLOPs need at the ceilings: matmul FLOPs at their dtype's peak, vector at fp32's."""
        from ._ceilings import dtype_key
        t = 0.0
        for o in self.ops:
            if o.matmul_flops:
                key = dtype_key(o.dtype, device) if o.dtype is not None else "fp32"
                t += o.matmul_flops / ceilings.peak(key or "fp32")[0]
            t += o.vector_flops / ceilings.vector_flops
        return t

    def work_time(self, ceilings, device: torch.device) -> float:
        """Sum over ops of each op's roofline time max(FLOPs / peak, bytes / bandwidth): the least time
        the work itself takes if every op ran at the ceilings and nothing else cost anything."""
        from ._ceilings import dtype_key
        total = 0.0
        for o in self.ops:
            t_c = 0.0
            if o.matmul_flops:
                key = dtype_key(o.dtype, device) if o.dtype is not None else "fp32"
                t_c += o.matmul_flops / ceilings.peak(key or "fp32")[0]
            t_c += o.vector_flops / ceilings.vector_flops
            total += max(t_c, o.bytes / ceilings.bandwidth)
        return total


def _op_count(func, args, kwargs, out) -> OpCount:
    packet = func.overloadpacket
    name = packet.__name__
    full = str(packet)
    if func.is_view or name in _ZERO_COST or name.startswith("empty"):
        return OpCount(full, 0, 0, 0, None)
    outputs = _flat_tensors(out)
    in_args = list(args)
    if name in _WRITE_ONLY_SELF and in_args:
        in_args = in_args[1:]
    inputs = _flat_tensors(in_args) + _flat_tensors({k: v for k, v in kwargs.items() if k != "out"})
    nbytes = _unique_bytes(inputs) + _unique_bytes(outputs)
    matmul = 0
    formula = _FLOP_REGISTRY.get(packet)
    if formula is not None:
        try:
            matmul = int(formula(*args, **kwargs, out_val=out))
        except Exception:  # a formula that does not cover this overload: count no FLOPs rather than fail
            matmul = 0
    if not matmul:
        matmul = _attention_flops(full, name, args)
    vector = 0
    tags = getattr(func, "tags", ())
    if not matmul:
        if name in _SOFTMAX and inputs:
            vector = _SOFTMAX_FLOPS_PER_ELEMENT * inputs[0].numel()
        elif _REDUCTION is not None and _REDUCTION in tags and inputs:
            vector = inputs[0].numel()
        elif _POINTWISE is not None and _POINTWISE in tags and name not in _MOVES and outputs:
            if outputs[0].is_floating_point() or outputs[0].is_complex():
                vector = outputs[0].numel()
    dtype = None
    for t in inputs + outputs:
        if t.is_floating_point():
            dtype = t.dtype
            break
    return OpCount(full, matmul, vector, nbytes, dtype)


def _attention_flops(full: str, name: str, args) -> int:
    """FLOPs of fused attention ops flop_counter has no formula for: 4 * B * H * Nq * Nk * D (QK^T and PV),
    half when causal (hwattn's kernel skips masked blocks; the count is the usual convention)."""
    try:
        if full.startswith("hwattn.flash_fwd"):  # hwattn custom op: q, k, v (B, N, H, D), causal
            q, k = args[0], args[1]
            flops = 4 * q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1] * q.shape[3]
            return flops // 2 if len(args) > 3 and args[3] is True else flops
        if name.startswith("_scaled_dot_product") and "backward" not in name:  # (B, H, N, D)
            q, k, v = args[0], args[1], args[2]
            b_h = q.numel() // (q.shape[-2] * q.shape[-1])
            return 2 * b_h * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    except (AttributeError, IndexError, TypeError):
        pass
    return 0


def _storage(t: torch.Tensor):
    try:
        return (t.device, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[OpCount] = []
        self.read: set = set()  # storages some op read (to leave out inputs that are only overwritten)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            op = _op_count(func, args, kwargs, out)
            self.ops.append(op)
            if op.bytes:
                name = func.overloadpacket.__name__
                read_args = list(args[1:]) if name in _WRITE_ONLY_SELF else list(args)
                for t in _flat_tensors(read_args) + _flat_tensors({k: v for k, v in kwargs.items() if k != "out"}):
                    self.read.add(_storage(t))
        except Exception:  # never let bookkeeping break the user's op
            self.ops.append(OpCount(str(func), 0, 0, 0, None))
        return out


def _inputs_of(fn, args, kwargs):
    tensors = _flat_tensors(list(args)) + _flat_tensors(kwargs)
    if isinstance(fn, torch.nn.Module):
        tensors += list(fn.parameters()) + list(fn.buffers())
    return tensors


def count(fn, *args, **kwargs) -> Counts:
    """Run fn(*args, **kwargs) once and count its FLOPs and bytes (rules in the module docstring).

    Returns a `Counts` with per-op records, bytes_min, bytes_ops, flops (matmul + vector) and the output.
    Raises TypeError if fn is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__} ({fn!r})")
    counter = _Counter()
    with counter:
        out = fn(*args, **kwargs)
    inputs = _inputs_of(fn, args, kwargs)
    if counter.read:  # inputs no op read (a copy_ destination, an unused argument) are not traffic
        inputs = [t for t in inputs if _storage(t) in counter.read]
    bytes_min = _unique_bytes(inputs) + _unique_bytes(_flat_tensors(out))
    return Counts(ops=counter.ops, bytes_min=bytes_min, output=out)
