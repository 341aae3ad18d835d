"""Uses of a trained motion run: new arm poses, a plausibility critic, motion continuation.

- :class:`LearnedArmSampler` (``--augment learned:RUN``): new elbow and wrist positions for
  a person, conditioned on their current pose.
- :class:`PlausibilityCritic` (``--plausibility RUN``): the WGAN critic's score of a pose,
  and a threshold calibrated on real poses.
- :func:`continue_motion` (``transfer --motion RUN``): a clip's motion continued.

**A single pose as a sequence.**  The networks read sequences of ``past + future`` frames
normalised per person (:mod:`.data`).  A single pose becomes the sequence of that pose held
still: the generator is conditioned on ``past`` copies of it, and the critic scores
``past + future`` copies of it.  The critic's threshold is calibrated the same way (real
poses, each held still), so held and moving sequences are never compared.

All keypoints are ``[x, y, v]`` in image pixels; every random draw comes from the
``numpy.random.Generator`` passed in, so results depend only on it.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...datasets.layouts import KeypointLayout
from ...errors import PosesynthError
from ...posenet.metrics import torso_size
from .data import JointMap, arm_joints
from .trainer import MotionRun, load_motion, score_poses

__all__ = ["LearnedArmSampler", "PlausibilityCritic", "continue_motion"]


@functools.lru_cache(maxsize=8)
def _load_cached(run_dir: str, device: str, mtime: float) -> MotionRun:
    return load_motion(run_dir, device)


def _load(run_dir: "str | Path", device: "str | torch.device") -> MotionRun:
    js = Path(run_dir) / "checkpoints" / "latest.json"
    mtime = os.path.getmtime(js) if js.exists() else 0.0
    return _load_cached(str(run_dir), str(device), mtime)


class _Uses:
    def __init__(self, run_dir: "str | Path", device: "str | torch.device" = "cpu") -> None:
        self.run = _load(run_dir, device)
        self.layout = self.run.layout
        self._maps: dict[tuple[str, ...], JointMap] = {}

    def _jmap(self, layout: "KeypointLayout | None") -> JointMap:
        layout = layout or self.layout
        if layout.keypoints not in self._maps:
            self._maps[layout.keypoints] = JointMap(self.layout, layout)
        return self._maps[layout.keypoints]


class LearnedArmSampler(_Uses):
    """New arm poses from the motion model (the ``learned`` perturbation).

    For each person whose torso is at least ``min_torso`` pixels and whose model joints are
    all labelled, the generator is conditioned on the person's current pose held still (see
    the module docstring) with fresh noise ``z``; one of its first ``horizon`` future frames
    (default: all ``future`` frames; drawn uniformly) gives new arm directions.  Rescaled to
    the person: the upper arm and forearm keep the person's own lengths, from their own
    shoulder.  Only elbows and wrists move, only on arms whose shoulder, elbow and wrist are
    labelled; visibility flags are kept; a draw that leaves the image is redrawn (``tries``
    draws), else the arm is kept.
    """

    def __init__(self, run_dir: "str | Path", device: "str | torch.device" = "cpu", horizon: "int | None" = None,
                 tries: int = 10, min_torso: float = 20.0) -> None:
        super().__init__(run_dir, device)
        self.horizon = int(horizon or self.run.cfg.future)
        if not 1 <= self.horizon:
            raise PosesynthError(f"horizon must be at least 1 frame, not {self.horizon}")
        self.tries, self.min_torso = int(tries), float(min_torso)
        if not arm_joints(self.layout):
            raise PosesynthError(f"{run_dir}: the motion model's layout '{self.layout.name}' has no arms "
                                 "(left/right shoulder, elbow and wrist)")

    @torch.no_grad()
    def propose(self, poses: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` generated poses for each of ``poses (P, J, 2)`` (model joints, pixels):
        ``(P, n, J, 2)`` in pixels, each one of the first ``horizon`` future frames."""
        run, c = self.run, self.run.cfg
        root, scale = run.norm.frame(poses)
        x = ((poses - root[:, None]) / scale[:, None, None]).astype(np.float32)
        past = torch.as_tensor(np.repeat(x, n, 0), device=run.device)[:, None].expand(-1, c.past, -1, -1)
        z = torch.as_tensor(rng.standard_normal((len(past), c.z_dim)).astype(np.float32), device=run.device)
        k = rng.integers(0, self.horizon, len(past))
        fut = run.G(past, self.horizon, z).cpu().numpy()                   # (P*n, horizon, J, 2)
        cand = fut[np.arange(len(fut)), k].reshape(len(poses), n, *poses.shape[1:])
        return cand * scale[:, None, None, None] + root[:, None, None, :]

    def perturb(self, keypoints: np.ndarray, layout: KeypointLayout, size: tuple[int, int],
                rng: np.random.Generator,
                accept: "Callable[[np.ndarray, tuple[int, int, int]], np.ndarray] | None" = None) -> np.ndarray:
        """A perturbed copy of ``(P, K, 3)`` keypoints in an image of ``size = (H, W)``.

        ``accept`` (optional), e.g. joint limits: ``accept(candidates (n, K, 3), (shoulder,
        elbow, wrist)) -> (n,) bool`` says which of one person's candidate poses (that arm
        moved) may be used; the first candidate inside the image and accepted is taken."""
        kp = np.array(keypoints, dtype=np.float32, copy=True)
        h, w = size
        jmap = self._jmap(layout)
        mk = jmap(kp)
        people = [p for p in range(kp.shape[0])
                  if (mk[p, :, 2] > 0).all() and torso_size(kp[p], layout) >= self.min_torso]
        if not people:
            return kp
        cand = self.propose(mk[people, :, :2].astype(np.float64), rng, self.tries)
        model_arms = {sign: (s, e, wr) for sign, s, e, wr in arm_joints(self.layout)}
        for i, p in enumerate(people):
            for sign, si, ei, wi in arm_joints(layout):
                if sign not in model_arms or (kp[p, [si, ei, wi], 2] <= 0).any():
                    continue
                ms, me, mw = model_arms[sign]
                s = kp[p, si, :2].astype(np.float64)
                upper = np.linalg.norm(kp[p, ei, :2] - s)
                fore = np.linalg.norm(kp[p, wi, :2] - kp[p, ei, :2])
                du = cand[i, :, me] - cand[i, :, ms]                           # (tries, 2)
                df = cand[i, :, mw] - cand[i, :, me]
                e2 = s + du / np.maximum(np.linalg.norm(du, axis=1, keepdims=True), 1e-9) * upper
                w2 = e2 + df / np.maximum(np.linalg.norm(df, axis=1, keepdims=True), 1e-9) * fore
                pts = np.stack([e2, w2], 1)                                    # (tries, 2, 2)
                ok = ((pts >= 0).all((1, 2)) & (pts[..., 0] <= w - 1).all(1) & (pts[..., 1] <= h - 1).all(1))
                if accept is not None and ok.any():
                    cands = np.repeat(kp[p][None], len(e2), 0)
                    cands[:, ei, :2], cands[:, wi, :2] = e2, w2
                    ok &= np.asarray(accept(cands, (si, ei, wi)), bool)
                if ok.any():
                    t = int(np.argmax(ok))
                    kp[p, ei, :2], kp[p, wi, :2] = e2[t], w2[t]
        return kp


class PlausibilityCritic(_Uses):
    """The motion run's WGAN critic as a judge of single poses.

    ``score`` is the critic's output for the pose held still (see the module docstring);
    higher is more like real data.  ``threshold`` is the ``threshold_quantile`` (default 5%)
    of its scores on real held-out poses, computed when the run saved its checkpoint, so
    about 95% of real poses are ``plausible``.
    """

    def __init__(self, run_dir: "str | Path", device: "str | torch.device" = "cpu") -> None:
        super().__init__(run_dir, device)
        self.threshold = float(self.run.threshold)

    def score(self, keypoints: np.ndarray, layout: "KeypointLayout | None" = None) -> np.ndarray:
        """``(N, K, 3)`` (or ``(K, 3)``) keypoints in ``layout`` (default: the run's) ->
        ``(N,)`` float scores; ``nan`` for a pose that lacks a labelled model joint."""
        kp = np.asarray(keypoints, np.float32)
        kp = kp[None] if kp.ndim == 2 else kp
        mk = self._jmap(layout)(kp)
        ok = (mk[..., 2] > 0).all(-1)
        out = np.full(len(kp), np.nan)
        if ok.any():
            xy = mk[ok, :, :2].astype(np.float64)
            root, scale = self.run.norm.frame(xy)
            x = ((xy - root[:, None]) / scale[:, None, None]).astype(np.float32)
            out[ok] = score_poses(self.run.C, x, self.run.length, self.run.device)
        return out

    def plausible(self, keypoints: np.ndarray, layout: "KeypointLayout | None" = None) -> np.ndarray:
        """``(N,)`` bool: score at least the threshold.  A pose the critic cannot judge (a
        model joint unlabelled) counts as plausible: there is no evidence against it."""
        s = self.score(keypoints, layout)
        return np.where(np.isnan(s), True, s >= self.threshold)


def _fill_gaps(kp: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Unlabelled joints ``(T, J, 3)`` take the nearest labelled frame's position."""
    out = kp.copy()
    t = np.arange(len(kp))
    for j in range(kp.shape[1]):
        lab = np.flatnonzero(kp[:, j, 2] > 0)
        if not len(lab):
            raise PosesynthError(f"continue_motion: joint '{names[j]}' is not labelled in any past frame")
        nearest = lab[np.abs(t[:, None] - lab[None]).argmin(1)]
        out[:, j, :2] = kp[nearest, j, :2]
    return out


@torch.no_grad()
def continue_motion(run_dir: "str | Path", past: np.ndarray, steps: int, rng: np.random.Generator,
                    layout: "KeypointLayout | None" = None, size: "tuple[int, int] | None" = None,
                    device: "str | torch.device" = "cpu") -> np.ndarray:
    """Continue one person's motion: ``past (T, K, 3)`` in image pixels -> ``(steps, K, 3)``.

    The generator reads the last ``past`` frames of the clip (fewer are padded with the first
    one; gaps in a joint take its nearest labelled frame) and predicts ``future`` frames at
    a time with fresh noise from ``rng``, each chunk conditioned on the frames before it.
    ``layout`` (default: the run's) names the keypoints; model joints are matched by name,
    and keypoints the model lacks follow the root's translation from the last past frame.
    Visibility is the last past frame's; with ``size = (H, W)``, points outside the image
    get ``v = 0``.
    """
    run = _load(run_dir, device)
    c = run.cfg
    past = np.asarray(past, np.float32)
    if past.ndim != 3 or past.shape[0] < 1:
        raise PosesynthError(f"continue_motion: past must be (T, K, 3) with T >= 1, not {past.shape}")
    layout = layout or run.layout
    if past.shape[1] != layout.num_keypoints:
        raise PosesynthError(f"continue_motion: past has {past.shape[1]} keypoints, layout '{layout.name}' "
                             f"has {layout.num_keypoints}")
    jmap = JointMap(run.layout, layout)
    mk = _fill_gaps(jmap(past), run.layout.keypoints)[..., :2].astype(np.float64)     # (T, J, 2)
    if len(mk) < c.past:
        mk = np.concatenate([np.repeat(mk[:1], c.past - len(mk), 0), mk])
    seq = list(mk[-c.past:])
    gen: list[np.ndarray] = []
    while len(gen) < steps:
        window = np.stack(seq[-c.past:])
        root, scale = run.norm.frame(window[-1])
        x = torch.as_tensor(((window - root) / scale).astype(np.float32)[None], device=run.device)
        z = torch.as_tensor(rng.standard_normal((1, c.z_dim)).astype(np.float32), device=run.device)
        fut = run.G(x, c.future, z)[0].cpu().numpy() * scale + root                  # (future, J, 2)
        seq += list(fut)
        gen += list(fut)
    gen_xy = np.stack(gen[:steps])
    last = past[-1]
    root_last, _ = run.norm.frame(mk[-1])
    root_t, _ = run.norm.frame(gen_xy)
    out = np.repeat(last[None], steps, 0).astype(np.float64)
    out[:, :, :2] += (root_t - root_last)[:, None, :]                                 # joints the model lacks
    for k, j in jmap.direct:
        out[:, k, :2] = gen_xy[:, j]
    if size is not None:
        h, w = size
        x, y = out[..., 0], out[..., 1]
        out[..., 2] = np.where((x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1), out[..., 2], 0.0)
    return out.astype(np.float32)
