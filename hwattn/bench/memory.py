"""Peak memory of a callable, on CUDA (the caching allocator's statistics) or on CPU (a dispatch-mode
tracker of live tensor storage: what torch itself allocates, which is what naive vs tiled differ in)."""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _LiveBytes(TorchDispatchMode):
    """Counts bytes of storages created by ops run under it, minus those freed; records the peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = set()

    def _track(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or storage.nbytes() == 0:
            return
        self._seen.add(key)
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)

        def release(key=key, nbytes=nbytes, tracker=weakref.ref(self)):
            tr = tracker()
            if tr is not None:
                tr.live -= nbytes
                tr._seen.discard(key)
        # storages are weak-referenceable in recent torch; otherwise the tensor's lifetime stands in
        weakref.finalize(storage if hasattr(storage, "__weakref__") else t, release)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            self._track(t)
        return out


def peak_extra_bytes(fn, device) -> int:
    """Peak bytes allocated while fn() runs, beyond what was allocated before it started."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    tracker = _LiveBytes()
    with tracker:
        fn()
    return tracker.peak
