"""What every training run shares: its folder, config record, CSV log, TensorBoard, checkpoint
pair and resume; the device and precision it runs with.

Used by ``train-gan``, ``train-posenet`` and ``train-motion``::

    RUN/config.yaml          the resolved config (rewritten on resume with the new options)
    RUN/<log>.csv            one row per step or epoch, rewritten atomically
    RUN/checkpoints/         latest, previous (the last complete pair) and named ones (best)
    RUN/tb/                  TensorBoard, when the package is installed
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import numpy as np

from .checkpoint import checkpoint_exists, load_checkpoint, load_module, module_tensors, save_checkpoint
from .config import save_config
from .errors import ConfigError
from .io import atomic_write_text, remove_stale_temps

__all__ = ["RunDir", "training_bar", "resolve_device", "resolve_gan_device", "Precision", "PRECISIONS", "remove_stale_temps",
           "WeightAverage"]

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class RunDir:
    """A run folder.  Only the main process (rank 0) writes; other ranks get no-ops."""

    def __init__(self, path: "str | Path", main: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        self.ckpt = self.path / "checkpoints"
        self._tb = None

    def exists(self) -> bool:
        return checkpoint_exists(self.ckpt / "latest")

    def prepare(self, cfg: Any, resume: bool) -> None:
        """Check that a new run does not overwrite one, clean up after a crash (every temporary
        file of an interrupted atomic write anywhere in the run folder), record ``cfg``."""
        if not resume and self.exists():
            raise ConfigError(f"{self.path} already holds a run: pass --resume to continue it, or choose another --out")
        if resume and not self.exists():
            raise ConfigError(f"{self.path}: nothing to resume (no checkpoints/latest)")
        if not self.main:
            return
        removed = remove_stale_temps(self.path)   # anywhere in the run: checkpoints/, web/, the logs
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted write in %s", removed, self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.path / "config.yaml")

    def save(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if self.main:
            save_checkpoint(self.ckpt / name, tensors, meta, keep_previous=(name == "latest"))

    def load(self, name: str = "latest") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return load_checkpoint(self.ckpt / name)

    def read_csv(self, name: str) -> list[dict[str, Any]]:
        path = self.path / name
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def write_csv(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not self.main:
            return
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys or ["step"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path / name, buf.getvalue())

    def write_gallery(self, grid: "np.ndarray", step: int, heading: str, columns: str) -> Path:
        """Add ``web/images/step_NNNNNN.png`` (``grid``: ``(H, W, 3)`` uint8 RGB) to the run's
        gallery and rewrite ``web/index.html`` (every step's picture, newest first, under
        ``heading`` and a line naming the ``columns``); TensorBoard gets the picture too."""
        if not self.main:
            return self.path / "web" / "index.html"
        import html

        import cv2

        web = self.path / "web"
        (web / "images").mkdir(parents=True, exist_ok=True)
        name = f"step_{step:06d}.png"
        if not cv2.imwrite(str(web / "images" / name), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{web / 'images' / name}: cannot write the gallery image")
        if self.tb is not None:
            self.tb.add_image("gallery", grid, step, dataformats="HWC")
        imgs = sorted((web / "images").glob("step_*.png"), reverse=True)
        body = "\n".join(f"<h3>step {int(p.stem[5:])}</h3><img src='images/{html.escape(p.name)}' "
                         "style='max-width:100%'>" for p in imgs)
        atomic_write_text(web / "index.html",
                          f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='60'>"
                          f"<title>{html.escape(self.path.name)}: gallery</title></head><body>"
                          f"<h1>{html.escape(heading)}</h1><p>columns: {html.escape(columns)}</p>{body}</body></html>")
        return web / "index.html"

    @property
    def tb(self):
        """A TensorBoard SummaryWriter (``None`` when tensorboard is not installed or not rank 0)."""
        if self._tb is None and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard is optional
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb or None

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        tb = self.tb
        if tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    tb.add_scalar(f"{prefix}/{k}", v, step)


def resolve_device(spec: str = "auto", local_rank: "int | None" = None, world: "int | None" = None,
                   shared_ok: bool = False) -> torch.device:
    """The device a process runs on.

    ``auto``: ``cuda:LOCAL_RANK`` when CUDA is there, otherwise ``cpu``; a bare ``cuda`` is
    ``cuda:LOCAL_RANK`` too (with fewer GPUs than ranks: shared round robin where ``shared_ok``,
    else a :class:`ConfigError`); anything else as given.  ``local_rank`` and ``world`` default to
    torchrun's ``LOCAL_RANK`` and ``WORLD_SIZE``.  Under torchrun with more than one process, a
    GPU named by index (``cuda:0``) would put every rank on that one GPU, which NCCL refuses:
    it is a :class:`ConfigError` naming the fix, unless ``shared_ok`` (a device without
    collectives, such as each rank's own generator).  Clear errors for a CUDA device on a
    machine without one, or an index beyond the GPUs there are."""
    lr = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    ws = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    spec = (spec or "auto").strip()
    if spec == "auto":
        return _rank_gpu(lr, shared_ok) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec} asked for, but this machine has no CUDA GPU (use --device cpu or auto)")
        if dev.index is None:
            dev = _rank_gpu(lr, shared_ok)
        elif ws > 1 and not shared_ok:
            raise ConfigError(f"--device {spec} names one GPU for all {ws} torchrun processes, and NCCL refuses two "
                              "ranks on one GPU: use --device cuda or auto (each rank takes cuda:LOCAL_RANK), "
                              "or CUDA_VISIBLE_DEVICES to choose the GPUs")
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {dev} asked for, but there are {torch.cuda.device_count()} GPUs")
    return dev


def _rank_gpu(local_rank: int, shared_ok: bool) -> torch.device:
    """``cuda:LOCAL_RANK``.  With more processes on this machine than GPUs, ranks without
    collectives (``shared_ok``) share them round robin; others get a ConfigError naming the fix,
    rather than CUDA's "invalid device ordinal" from deep inside the first allocation."""
    n = torch.cuda.device_count()
    if local_rank < n:
        return torch.device(f"cuda:{local_rank}")
    if shared_ok and n:
        return torch.device(f"cuda:{local_rank % n}")
    raise ConfigError(f"more processes were started on this machine than it has GPUs (this is local rank "
                      f"{local_rank}, there are {n}), and each rank needs a GPU of its own: with torchrun use "
                      f"--nproc_per_node={n}, or --device cpu")


def resolve_gan_device(spec: str, device: torch.device, local_rank: int = 0, world: int = 1) -> torch.device:
    """``auto``: a GPU of its own for each rank's generator when there are enough
    (``cuda:world + local_rank``), otherwise the pose network's ``device``.  An explicit
    ``cuda:N`` may be shared by the ranks (the generator takes part in no collective)."""
    if not spec or spec == "auto":
        if device.type == "cuda" and torch.cuda.device_count() >= 2 * world:
            return torch.device(f"cuda:{world + local_rank}")
        return device
    return resolve_device(spec, local_rank, world, shared_ok=True)


class Precision:
    """Mixed precision for a training step: ``autocast`` in bf16 or fp16 on CUDA (fp16 with a
    GradScaler), plain fp32 elsewhere.  ``auto`` is bf16 on a CUDA GPU that supports it, else
    fp32.

    With fp16 the loss is scaled before ``backward`` and the gradients unscaled in :meth:`step`;
    a step whose gradients overflowed is skipped by the scaler (the scale halves), and
    :meth:`step` returns False.  The scaler's state (scale and growth count) belongs in a
    checkpoint (:meth:`state_dict`, :meth:`load_state_dict`) for a resume to continue exactly.

    ``reduced_on_cpu`` (class attribute, for tests only) lets bf16/fp16 run on the CPU, where
    they are refused because they are hundreds of times slower there."""

    reduced_on_cpu = False

    def __init__(self, spec: str, device: torch.device) -> None:
        if spec not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {spec!r}")
        if spec == "auto":
            spec = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        if spec != "fp32" and device.type != "cuda" and not self.reduced_on_cpu:
            raise ConfigError(f"--precision {spec} needs a CUDA GPU; on the CPU use fp32 (bf16 is hundreds of times "
                              "slower there)")
        self.name, self.device = spec, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec)
        self.scaler = torch.amp.GradScaler(device.type) if spec == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer) -> bool:
        """Step ``opt`` (through the scaler with fp16); False when the scaler skipped the step
        because the gradients overflowed."""
        if self.scaler is None:
            opt.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        return self.scaler.get_scale() >= before   # the scale only drops after an overflow

    def state_dict(self) -> "dict[str, Any]":
        """The scaler's state (``{}`` without one): JSON-serialisable, for a checkpoint's meta."""
        if self.scaler is None:
            return {}
        st = self.scaler.state_dict()
        return {"scale": float(st["scale"]), "growth_tracker": int(st["_growth_tracker"])}

    def load_state_dict(self, state: "dict[str, Any] | None") -> None:
        """Restore :meth:`state_dict` (nothing to do for an empty state or without a scaler)."""
        if self.scaler is None or not state:
            return
        st = self.scaler.state_dict()
        st.update(scale=float(state["scale"]), _growth_tracker=int(state["growth_tracker"]))
        self.scaler.load_state_dict(st)


class WeightAverage:
    """An exponential moving average of a network's weights (``--ema D``), for the pose network
    and the GAN generator alike.  After each optimiser step ``avg = d avg + (1 - d) w`` with
    ``d = min(D, (1 + n) / (10 + n))`` after ``n`` updates (a warm-up: the first averages forget
    the random start quickly); buffers (batch-norm statistics, spectral-norm vectors) are copied.
    :attr:`module` is the average (eval mode, no gradients).

    In a checkpoint (:meth:`tensors`, :meth:`load`) the average is saved under the network's
    own name (what every consumer loads and uses) and the trained weights under ``train_name``
    beside it, so a resumed run continues exactly."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
        for b, src in zip(self.module.buffers(), model.buffers()):
            b.copy_(src)

    @staticmethod
    def tensors(average: "WeightAverage | None", model: torch.nn.Module, name: str, train_name: str,
                with_train: bool = True) -> "dict[str, torch.Tensor]":
        """Checkpoint tensors: the weights in use (the average if any) as ``name``, and with an
        average the trained ones as ``train_name`` (``with_train``: for resuming)."""
        out = module_tensors(average.module if average is not None else model, name)
        if average is not None and with_train:
            out.update(module_tensors(model, train_name))
        return out

    @staticmethod
    def load(average: "WeightAverage | None", model: torch.nn.Module, tensors: "dict[str, torch.Tensor]",
             meta: dict, name: str, train_name: str, path: str) -> None:
        """Restore what :meth:`tensors` saved (and the update count from ``meta["ema_updates"]``),
        refusing a checkpoint saved with an average into a run without one, and the reverse."""
        saved_avg = any(k.startswith(train_name + ".") for k in tensors)
        if average is not None and not saved_avg:
            raise ConfigError(f"{path}: saved without --ema; resume it without --ema")
        if average is None and saved_avg:
            raise ConfigError(f"{path}: saved with --ema (its '{name}' is the average, not the trained weights); "
                              "resume it with the same --ema")
        load_module(model, tensors, train_name if average is not None else name, path)
        if average is not None:
            load_module(average.module, tensors, name, path)
            average.updates = int(meta.get("ema_updates", 0))


def training_bar(steps: int, start: int, time_limit_min: float = 0.0, desc: str = "train", disable: bool = False):
    """A tqdm bar over a run's steps; a time-limited run (``time_limit_min`` > 0) counts seconds
    of its budget instead, not steps it will never reach.  Advance it with
    ``bar.update(min(elapsed, limit) - bar.n)`` (timed) or ``bar.update(1)``."""
    from tqdm import tqdm

    if time_limit_min > 0:
        return tqdm(total=time_limit_min * 60, initial=0, desc=desc, unit="s", disable=disable, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
    return tqdm(total=steps, initial=start, desc=desc, unit="it", disable=disable, dynamic_ncols=True)
