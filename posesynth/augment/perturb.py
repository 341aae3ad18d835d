"""Arm perturbations: new, plausible poses from a person's own keypoints.

Modes (``mode`` argument):

- ``arms-slight``: elbow and wrist each moved by up to 10% of their limb's length (upper arm
  for the elbow, forearm for the wrist), in a random direction, as the original did.
- ``arms-high``: a new upper-arm direction anywhere around the shoulder and a new forearm
  direction anywhere around the elbow; lengths drawn near the person's own (their measured
  upper arm and forearm x U(0.9, 1.1); where a length cannot be measured, 0.77 x torso
  height for the upper arm, as the original, and 0.9 x upper arm for the forearm).
- ``arms-angle``: the upper arm rotated about the shoulder and the forearm about the elbow
  within joint limits (shoulder +-``max_shoulder`` deg, elbow flexion kept within
  [0, ``max_flexion``] deg); bone lengths are preserved exactly.

Rules: a side's arm is perturbed only when its shoulder, elbow and wrist are labelled;
only people whose torso is at least ``min_torso`` pixels are perturbed; new keypoints stay
inside the image (a draw that leaves it is redrawn, up to ``tries`` times, else the arm is
kept); visibility flags are kept; the result is a new array (the input is never changed)
and depends only on the generator passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..datasets.layouts import KeypointLayout
from ..posenet.metrics import torso_size

__all__ = ["PerturbConfig", "perturb_keypoints", "MODES", "arm_indices"]

MODES = ("arms-slight", "arms-high", "arms-angle")


@dataclass
class PerturbConfig:
    mode: str = "arms-high"
    min_torso: float = 20.0      # pixels; smaller people are left as they are
    slight: float = 0.10         # arms-slight: offset radius as a fraction of the limb length
    max_shoulder: float = 60.0   # arms-angle: degrees
    max_flexion: float = 150.0   # arms-angle: degrees
    tries: int = 10


def arm_indices(layout: KeypointLayout) -> list[tuple[int, int, int]]:
    """(shoulder, elbow, wrist) indices of each arm the layout names."""
    out = []
    for side in ("right", "left"):
        names = [f"{side}_{j}" for j in ("shoulder", "elbow", "wrist")]
        if all(n in layout.keypoints for n in names):
            out.append(tuple(layout.keypoints.index(n) for n in names))
    return out


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _rotate(v: np.ndarray, deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _signed_angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b)))


def _propose(s, e, w, torso, cfg: PerturbConfig, rng: np.random.Generator):
    upper, fore = np.linalg.norm(e - s), np.linalg.norm(w - e)
    if cfg.mode == "arms-slight":
        e2 = e + _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, cfg.slight * upper)
        w2 = w + _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, cfg.slight * fore)
        return e2, w2
    if cfg.mode == "arms-high":
        lu = (upper if upper > 1e-3 else 0.77 * torso) * rng.uniform(0.9, 1.1)
        lf = (fore if fore > 1e-3 else 0.9 * lu) * rng.uniform(0.9, 1.1)
        e2 = s + _unit(rng.uniform(0, 2 * np.pi)) * lu
        return e2, e2 + _unit(rng.uniform(0, 2 * np.pi)) * lf
    if cfg.mode == "arms-angle":
        du, df = e - s, w - e
        d_sh = rng.uniform(-cfg.max_shoulder, cfg.max_shoulder)
        du2 = _rotate(du, d_sh)
        df_carried = _rotate(df, d_sh)                   # the forearm moves with the upper arm
        flex = _signed_angle(du2, df_carried)            # current flexion, signed
        sign = 1.0 if flex >= 0 else -1.0
        new_flex = rng.uniform(0, cfg.max_flexion)       # within the joint's range
        df2 = _rotate(du2 / max(np.linalg.norm(du2), 1e-9) * np.linalg.norm(df), sign * new_flex)
        e2 = s + du2
        return e2, e2 + df2
    raise ValueError(f"perturbation mode must be one of {MODES}, not {cfg.mode!r}")


def perturb_keypoints(keypoints: np.ndarray, layout: KeypointLayout, size: tuple[int, int],
                      rng: np.random.Generator, cfg: PerturbConfig = PerturbConfig()) -> np.ndarray:
    """Perturbed copy of ``(P, K, 3)`` keypoints in an image of ``size = (H, W)``."""
    kp = np.array(keypoints, dtype=np.float32, copy=True)
    h, w = size
    arms = arm_indices(layout)
    for p in range(kp.shape[0]):
        torso = torso_size(kp[p], layout)
        if not np.isfinite(torso) or torso < cfg.min_torso:
            continue
        for si, ei, wi in arms:
            if (kp[p, [si, ei, wi], 2] <= 0).any():
                continue
            s, e, wr = kp[p, si, :2].astype(np.float64), kp[p, ei, :2].astype(np.float64), kp[p, wi, :2].astype(np.float64)
            for _ in range(cfg.tries):
                e2, w2 = _propose(s, e, wr, torso, cfg, rng)
                pts = np.stack([e2, w2])
                if (pts >= 0).all() and (pts[:, 0] <= w - 1).all() and (pts[:, 1] <= h - 1).all():
                    kp[p, ei, :2], kp[p, wi, :2] = e2, w2
                    break
    return kp
