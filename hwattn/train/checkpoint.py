"""Checkpoints as one safetensors file: model tensors, optimizer state, and JSON metadata.

Keys: "model.<state_dict name>" and "optim.<param index>.<state name>"; metadata (str -> str): "format",
"step", "config" (TrainConfig as JSON), "param_groups" (the optimizer's hyper-parameters as JSON), "extra".
The file is written to a temporary name and renamed, so an interrupted save never leaves a torn checkpoint.
"""
from __future__ import annotations

import json
import os

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_info", "FORMAT"]

FORMAT = "hwattn-train-1"


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                    config: dict, extra: dict | None = None) -> None:
    """Write model (+ optimizer) state, the step and the config to `path` (a .safetensors file).

    Tensors that share storage (tied weights) are stored once: the model's state_dict has no duplicates
    because DecoderLM ties by reusing the embedding's parameter.
    """
    from safetensors.torch import save_file

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or PathLike, got {type(path).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    groups = []
    if optimizer is not None:
        sd = optimizer.state_dict()
        for idx, st in sd["state"].items():
            for name, value in st.items():
                if not isinstance(value, torch.Tensor):
                    value = torch.tensor(value)
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
        groups = sd["param_groups"]
    meta = {"format": FORMAT, "step": str(step), "config": json.dumps(config, sort_keys=True),
            "param_groups": json.dumps(groups), "has_optimizer": str(optimizer is not None),
            "extra": json.dumps(extra or {}, sort_keys=True)}
    tmp = f"{os.fspath(path)}.tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def _read_meta(path) -> dict:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an hwattn training checkpoint (format {meta.get('format')!r}, "
                         f"need {FORMAT!r})")
    return meta


def checkpoint_info(path: str) -> dict:
    """{"step", "config", "extra"} of a checkpoint, without loading its tensors."""
    meta = _read_meta(path)
    return {"step": int(meta["step"]), "config": json.loads(meta["config"]),
            "extra": json.loads(meta.get("extra", "{}"))}


def load_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a `save_checkpoint` file into model (strictly: same names and shapes) and optimizer.

    Returns {"step": int, "config": dict, "extra": dict}. Raises ValueError for a file of another format,
    missing/unexpected model tensors, or an optimizer requested from a file saved without one.
    """
    from safetensors.torch import load_file

    meta = _read_meta(path)
    tensors = load_file(os.fspath(path), device="cpu")
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(model_sd)), sorted(set(model_sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in model_sd.items():
        if v.shape != own[k].shape:
            raise ValueError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, the model has {tuple(own[k].shape)}")
    model.load_state_dict(model_sd)
    if optimizer is not None:
        if meta.get("has_optimizer") != "True":
            raise ValueError(f"checkpoint {path} holds no optimizer state")
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v.to(map_location) if name != "step" else v
        groups = json.loads(meta["param_groups"])
        for g in groups:                       # JSON turned tuples into lists
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    return checkpoint_info(path)
