"""Checkpoints as safetensors (tensors) + JSON (everything else), written atomically.

Nothing is ever unpickled: module and optimizer states are flattened into named tensors,
and scalars (step, learning rates, optimizer hyper-parameters, config) go to JSON.

A checkpoint ``NAME`` is the pair ``NAME.safetensors`` + ``NAME.json``.  Both carry the same
``step`` and the JSON holds the SHA-256 of the tensor file, so a pair torn by a crash between
the two writes (a new tensor file beside an old JSON) is detected: :func:`load_checkpoint`
refuses it with a clear message and, for ``latest``, falls back to ``previous``, the last
complete pair, which :func:`save_checkpoint` keeps (as hard links, so it costs nothing).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import PosesynthError
from .io import atomic_write_bytes, atomic_write_json

__all__ = ["save_checkpoint", "load_checkpoint", "optimizer_to_flat", "optimizer_from_flat", "module_tensors",
           "load_module", "checkpoint_exists", "TornCheckpoint"]

log = logging.getLogger(__name__)


class TornCheckpoint(PosesynthError):
    """The two files of a checkpoint disagree (a crash between their writes) or are damaged."""


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


def _pair(path: "str | Path") -> tuple[Path, Path]:
    path = Path(path)
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def checkpoint_exists(path: "str | Path") -> bool:
    """Whether any file of the checkpoint ``path`` (or its ``previous``) is there."""
    st, js = _pair(path)
    pst, pjs = _pair(Path(path).with_name("previous"))
    return any(p.exists() for p in (st, js)) or (Path(path).name == "latest" and any(p.exists() for p in (pst, pjs)))


def _keep_previous(path: Path) -> None:
    """Make ``previous`` the current complete ``path`` pair (hard links; a copy where links fail)."""
    st, js = _pair(path)
    if not (st.exists() and js.exists()):
        return
    try:
        _verify(path)
    except TornCheckpoint:
        return  # never keep a torn pair as the fallback
    for src in (st, js):
        dst = src.with_name("previous" + src.suffix)
        tmp = dst.with_name("." + dst.name + ".link.tmp")
        try:
            if tmp.exists():
                tmp.unlink()
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)


def save_checkpoint(path: "str | Path", tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    keep_previous: bool = True) -> None:
    """Write ``path.safetensors`` then ``path.json`` (which marks the pair complete).

    ``meta["step"]`` (the step, or the epoch) goes into both files with the tensor file's hash.
    With ``keep_previous`` the pair being replaced stays as ``previous``.
    """
    path = Path(path)
    st, js = _pair(path)
    if keep_previous:
        _keep_previous(path)
    step = str(meta.get("step", meta.get("epoch", "")))
    blob = st_save(tensors, metadata={"step": step})
    meta = dict(meta)
    meta["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    meta["tensors_step"] = step
    atomic_write_bytes(st, blob)
    atomic_write_json(js, meta, indent=1)


def _verify(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    st, js = _pair(path)
    if not js.exists() or not st.exists():
        missing = " and ".join(p.name for p in (st, js) if not p.exists())
        raise TornCheckpoint(f"{path}: incomplete checkpoint ({missing} missing)")
    try:
        meta = json.loads(js.read_text())
        blob = st.read_bytes()
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise TornCheckpoint(f"{path}: checkpoint is damaged ({e.__class__.__name__}: {e})") from None
    want = meta.get("tensors_sha256")
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise TornCheckpoint(f"{path}: {st.name} does not belong to {js.name} (its content hash differs: the run "
                             "stopped between writing the two files)")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error type
        raise TornCheckpoint(f"{path}: checkpoint is damaged ({e.__class__.__name__}: {e})") from None
    if "tensors_step" in meta:
        from safetensors import safe_open

        with safe_open(str(st), "pt") as f:
            st_step = (f.metadata() or {}).get("step")
        if st_step is not None and st_step != meta["tensors_step"]:
            raise TornCheckpoint(f"{path}: {st.name} is from step {st_step}, {js.name} from {meta['tensors_step']}")
    return tensors, meta


def load_checkpoint(path: "str | Path", fallback: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint pair.  A torn or incomplete ``latest`` is refused with a
    warning and ``previous`` is used instead when it is complete (``fallback``)."""
    path = Path(path)
    try:
        return _verify(path)
    except TornCheckpoint as e:
        prev = path.with_name("previous")
        if not fallback or path.name != "latest" or not _pair(prev)[1].exists():
            if not any(p.exists() for p in _pair(path)):
                raise PosesynthError(f"{path}: no complete checkpoint ({path.name}.json and "
                                     f"{path.name}.safetensors needed)") from None
            raise
        tensors, meta = _verify(prev)
        log.warning("%s; using the previous complete checkpoint (step %s) instead", e, meta.get("step", meta.get("epoch")))
        return tensors, meta
