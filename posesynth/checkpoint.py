"""Checkpoints as safetensors (tensors) + JSON (everything else), written atomically.

Nothing is ever unpickled: module and optimizer states are flattened into named tensors,
and scalars (step, learning rates, optimizer hyper-parameters, config) go to JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import PosesynthError
from .io import atomic_write_bytes, atomic_write_json

__all__ = ["save_checkpoint", "load_checkpoint", "optimizer_to_flat", "optimizer_from_flat", "module_tensors",
           "load_module"]


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, source: str = "checkpoint") -> None:
    sd = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise PosesynthError(f"{source}: '{prefix}' weights do not fit this model ({' '.join(first)}); "
                             "was it trained with other settings?") from None


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars["state"].setdefault(str(pid), {})[k] = v
    return tensors, scalars


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any],
                        prefix: str) -> None:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith(prefix + "."):
            pid, name = k[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    for pid, st in scalars.get("state", {}).items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_checkpoint(path: "str | Path", tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``path.safetensors`` and ``path.json``; the JSON (written last) marks it complete."""
    path = Path(path)
    atomic_write_bytes(path.with_suffix(".safetensors"), st_save(tensors))
    atomic_write_json(path.with_suffix(".json"), meta, indent=1)


def load_checkpoint(path: "str | Path") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    js, st = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not js.exists() or not st.exists():
        raise PosesynthError(f"{path}: no complete checkpoint ({js.name} and {st.name} needed)")
    try:
        meta = json.loads(js.read_text())
        tensors = st_load(st.read_bytes())
    except (json.JSONDecodeError, Exception) as e:  # safetensors raises its own error type
        raise PosesynthError(f"{path}: checkpoint is damaged ({e.__class__.__name__}: {e})") from None
    return tensors, meta
