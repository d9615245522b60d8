"""Devices the diagnosis runs on: parse and validate them, name them, synchronise them."""
from __future__ import annotations

import os
import platform
import re

import torch

__all__ = ["resolve_device", "device_of", "synchronize", "device_name", "slug"]


def resolve_device(device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', a torch.device, or None (cuda if available, else cpu) -> a torch.device
    that exists on this machine.

    Raises TypeError for a non-str/non-device, ValueError for a string that does not parse, a device type
    other than cpu/cuda, or a CUDA device that is not there.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"device {device!r} does not parse ({e}); use 'cpu', 'cuda' or 'cuda:N'") from None
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__} ({device!r})")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device {str(dev)!r} is not supported: hwattn diagnose measures 'cpu' and 'cuda' devices")
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} does not exist: torch.cuda.is_available() is False on this machine")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= count:
        raise ValueError(f"device {str(dev)!r} does not exist: this machine has {count} CUDA device(s) "
                         f"(cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", index)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def device_of(args, kwargs=None, fn=None) -> torch.device:
    """The device of the first tensor among args/kwargs (or the module fn's parameters); cpu if none."""
    for t in _tensors((args, kwargs or {})):
        return resolve_device(t.device)
    if isinstance(fn, torch.nn.Module):
        for p in fn.parameters():
            return resolve_device(p.device)
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    """Human-readable name: the GPU's name, or the CPU model and the torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:80]
