"""Arm perturbations: new, plausible poses from a person's own keypoints.

Modes (``PerturbConfig.mode``):

- ``arms-angle`` (default): the upper arm rotated about the shoulder by up to
  ``max_shoulder`` degrees and a new elbow flexion; bone lengths are kept exactly.
- ``arms-slight``: elbow and wrist each moved by up to 10% of their limb's length (upper arm
  for the elbow, forearm for the wrist), in a random direction.
- ``arms-high``: any abduction in the shoulder range and any flexion in the elbow range, with
  bone lengths near the person's own (x U(0.9, 1.1)).
- ``poses:FILE``: each arm's new elbow and wrist taken from a COCO keypoint file, matched by
  image file name, then by annotation order (see :class:`PoseFile`).
- ``learned:RUN``: new arms sampled by a trained motion model (``posesynth train-motion``).

Joint limits, in the person's own frame (:func:`posesynth.datasets.geometry.arm_angles`), hold
for every mode: abduction within ``shoulder_range``, elbow flexion within ``[0,
max_flexion]`` on the anatomical side, the elbow never inside the shoulder-hip quadrilateral,
and the wrist inside it only when ``hands_in_torso``.  A draw that breaks a limit or leaves
the image is redrawn (``tries`` candidates, drawn at once); when none is valid the arm keeps
its pose.  ``rare`` draws the target angles where the training set's arm-angle histogram is
thin (:class:`ArmAngleHistogram`) instead of uniformly.

Rules: a side's arm is perturbed only when its shoulder, elbow and wrist are labelled and the
person's shoulders and hips give a body frame; people whose torso is under ``min_torso``
pixels are left as they are; visibility flags are kept; the input is never changed, and the
result depends only on the generator passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..datasets.geometry import ABDUCTION_RANGE, MAX_FLEXION, arm_angles, arm_chains, arm_from_angles, body_frame, in_polygon, torso_polygon, torso_size
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import rescale_keypoints
from ..errors import ConfigError

__all__ = ["PerturbConfig", "perturb_keypoints", "MODES", "arm_indices", "Perturber", "ArmAngleHistogram",
           "PoseFile", "plausible_arms", "check_mode"]

MODES = ("arms-angle", "arms-slight", "arms-high")
PREFIXED = ("poses:", "learned:")
arm_indices = arm_chains  # the name this module used to export


def check_mode(mode: str) -> str:
    """``mode`` if it names a perturbation, else a clear error."""
    if mode in MODES or (mode.startswith(PREFIXED) and mode.split(":", 1)[1]):
        return mode
    raise ConfigError(f"perturbation must be one of {', '.join(MODES)}, poses:FILE or learned:RUN, not {mode!r}")


@dataclass
class PerturbConfig:
    """How arms are perturbed (angles in degrees, lengths in pixels)."""

    mode: str = "arms-angle"
    min_torso: float = 20.0              # people with a smaller torso are left as they are
    slight: float = 0.10                 # arms-slight: offset radius as a fraction of the limb length
    max_shoulder: float = 60.0           # arms-angle: largest rotation about the shoulder
    max_flexion: float = MAX_FLEXION     # elbow flexion range [0, max_flexion] (the joint limit in geometry)
    shoulder_range: tuple[float, float] = ABDUCTION_RANGE   # abduction range (the joint limit in geometry)
    hands_in_torso: bool = True          # may a wrist lie inside the shoulder-hip quadrilateral?
    rare: bool = False                   # draw target angles where the training data is thin
    tries: int = 24
    histogram: "ArmAngleHistogram | None" = field(default=None, repr=False)


# ---- plausibility ------------------------------------------------------------------------
def _frame_for(kp: np.ndarray, layout: KeypointLayout):
    fr = body_frame(kp, layout)
    if fr is None:
        return None
    top, down, across = fr
    return down, {"right": -across, "left": across}, torso_polygon(kp, layout)


def _side(layout: KeypointLayout, shoulder: int) -> str:
    return "right" if layout.keypoints[shoulder].startswith("right") else "left"


def _limits_ok(abd, flex, elbow, wrist, poly, cfg: PerturbConfig) -> np.ndarray:
    lo, hi = cfg.shoulder_range
    ok = (abd >= lo) & (abd <= hi) & (flex >= 0) & (flex <= cfg.max_flexion)
    if poly is not None:
        ok &= ~in_polygon(elbow, poly)
        if not cfg.hands_in_torso:
            ok &= ~in_polygon(wrist, poly)
    return ok


def plausible_arms(keypoints: np.ndarray, layout: KeypointLayout, cfg: PerturbConfig = PerturbConfig()
                   ) -> np.ndarray:
    """``(P, A)`` bool: whether each arm of each person ``(P, K, 3)`` keeps the joint limits
    (``True`` where it cannot be judged: an unlabelled joint or no body frame)."""
    kp = np.asarray(keypoints, np.float64)
    arms = arm_chains(layout)
    out = np.ones((kp.shape[0], len(arms)), bool)
    for p in range(kp.shape[0]):
        fr = _frame_for(kp[p], layout)
        if fr is None:
            continue
        down, outs, poly = fr
        for j, (s, e, w) in enumerate(arms):
            if (kp[p, [s, e, w], 2] <= 0).any():
                continue
            abd, flex = arm_angles(kp[p, s, :2], kp[p, e, :2], kp[p, w, :2], down, outs[_side(layout, s)])
            out[p, j] = bool(_limits_ok(abd, flex, kp[p, e, :2], kp[p, w, :2], poly, cfg))
    return out


# ---- rarity ------------------------------------------------------------------------------
@dataclass
class ArmAngleHistogram:
    """Counts of a dataset's arms over (abduction, flexion) bins within the joint limits.

    :meth:`sample` draws angles with bin probability proportional to ``1 / (1 + count)``, so
    new arms go where the data lacks poses (uniform inside a bin).
    """

    abd_edges: np.ndarray
    flex_edges: np.ndarray
    counts: np.ndarray                    # (len(abd_edges) - 1, len(flex_edges) - 1)

    @classmethod
    def from_keypoints(cls, people: Iterable[np.ndarray], layout: KeypointLayout,
                       cfg: PerturbConfig = PerturbConfig(), bins: tuple[int, int] = (12, 10)) -> "ArmAngleHistogram":
        """From ``(P, K, 3)`` keypoint arrays (one per image)."""
        abd_e = np.linspace(*cfg.shoulder_range, bins[0] + 1)
        flex_e = np.linspace(0.0, cfg.max_flexion, bins[1] + 1)
        pairs = []
        for kp in people:
            kp = np.asarray(kp, np.float64).reshape(-1, layout.num_keypoints, 3)
            for person in kp:
                fr = _frame_for(person, layout)
                if fr is None:
                    continue
                down, outs, _ = fr
                for s, e, w in arm_chains(layout):
                    if (person[[s, e, w], 2] > 0).all():
                        pairs.append(arm_angles(person[s, :2], person[e, :2], person[w, :2], down,
                                                outs[_side(layout, s)]))
        a = np.array(pairs, np.float64).reshape(-1, 2)
        counts, _, _ = np.histogram2d(a[:, 0], a[:, 1], bins=[abd_e, flex_e]) if len(a) else (
            np.zeros((bins[0], bins[1])), None, None)
        return cls(abd_e, flex_e, counts)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        w = (1.0 / (1.0 + self.counts)).ravel()
        cells = rng.choice(w.size, size=n, p=w / w.sum())
        i, j = np.unravel_index(cells, self.counts.shape)
        abd = rng.uniform(self.abd_edges[i], self.abd_edges[i + 1])
        flex = rng.uniform(self.flex_edges[j], self.flex_edges[j + 1])
        return abd, flex

    def to_dict(self) -> dict[str, Any]:
        return {"abd_edges": self.abd_edges.tolist(), "flex_edges": self.flex_edges.tolist(),
                "counts": self.counts.tolist()}


# ---- target poses from a file ----------------------------------------------------------------
class PoseFile:
    """New arm keypoints from a COCO keypoint file: ``lookup(file_name, size)`` gives its
    people ``(P, K, 3)`` for an image of that name (in this layout, scaled to ``size`` when the
    file states the image size), matched to the source's annotations in order."""

    def __init__(self, path: "str | Path", layout: KeypointLayout) -> None:
        from ..datasets.coco import CocoKeypointDataset

        self.path = Path(path)
        ds = CocoKeypointDataset(self.path, layout=layout, on_error="skip", check_files=False)
        self.layout = layout
        self.by_name: dict[str, tuple[np.ndarray, "tuple[int, int] | None"]] = {}
        for e, kp in zip(ds.entries, ds.annotations()):   # the file's people in this layout
            im = e.image
            hw = (int(im["height"]), int(im["width"])) if im.get("height") and im.get("width") else None
            self.by_name[Path(im["file_name"]).name] = (np.asarray(kp, np.float32), hw)
        if not self.by_name:
            raise ConfigError(f"{self.path}: no annotated images to take poses from")

    def lookup(self, file_name: str, size: tuple[int, int]) -> "np.ndarray | None":
        hit = self.by_name.get(Path(file_name).name)
        if hit is None:
            return None
        kp, hw = hit
        return rescale_keypoints(kp, hw, tuple(size)) if hw is not None else kp.copy()


# ---- proposals ---------------------------------------------------------------------------
def _candidates(s, e, w, down, out, cfg: PerturbConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``cfg.tries`` candidate ``(elbow, wrist)`` pairs ``(T, 2)`` each for one arm."""
    n = cfg.tries
    upper, fore = np.linalg.norm(e - s), np.linalg.norm(w - e)
    if cfg.mode == "arms-slight":
        def off(r):
            t = rng.uniform(0, 2 * np.pi, n)
            return np.stack([np.cos(t), np.sin(t)], 1) * rng.uniform(0, r, n)[:, None]
        return e + off(cfg.slight * upper), w + off(cfg.slight * fore)
    abd0, _ = arm_angles(s, e, w, down, out)
    if cfg.rare and cfg.histogram is not None:
        abd, flex = cfg.histogram.sample(rng, n)
    elif cfg.mode == "arms-angle":
        abd = abd0 + rng.uniform(-cfg.max_shoulder, cfg.max_shoulder, n)
        flex = rng.uniform(0, cfg.max_flexion, n)
    else:  # arms-high
        abd = rng.uniform(*cfg.shoulder_range, n)
        flex = rng.uniform(0, cfg.max_flexion, n)
    if cfg.mode == "arms-high":
        lu, lf = upper * rng.uniform(0.9, 1.1, n), fore * rng.uniform(0.9, 1.1, n)
    else:
        lu, lf = np.full(n, upper), np.full(n, fore)
    return arm_from_angles(s, abd, flex, lu, lf, down, out)


def _inside(pts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return (pts[..., 0] >= 0).all(-1) & (pts[..., 1] >= 0).all(-1) & (pts[..., 0] <= w - 1).all(-1) & \
        (pts[..., 1] <= h - 1).all(-1)


def perturb_keypoints(keypoints: np.ndarray, layout: KeypointLayout, size: tuple[int, int],
                      rng: np.random.Generator, cfg: PerturbConfig = PerturbConfig(),
                      targets: "np.ndarray | None" = None) -> np.ndarray:
    """Perturbed copy of ``(P, K, 3)`` keypoints in an image of ``size = (H, W)``.

    ``targets`` (``poses:FILE`` mode): ``(P', K, 3)`` new keypoints whose labelled elbows and
    wrists replace the people's in order (when they keep the joint limits and the frame).
    """
    if cfg.mode not in MODES and not (targets is not None and cfg.mode.startswith("poses:")):
        raise ValueError(f"perturb_keypoints handles {MODES} (and poses: with targets), not {cfg.mode!r}; "
                         "use Perturber for the other modes")
    kp = np.array(keypoints, dtype=np.float32, copy=True)
    arms = arm_chains(layout)
    for p in range(kp.shape[0]):
        person = kp[p].astype(np.float64)
        ts = torso_size(person, layout)
        fr = _frame_for(person, layout)
        if not np.isfinite(ts) or ts < cfg.min_torso or fr is None:
            continue
        down, outs, poly = fr
        for si, ei, wi in arms:
            if (person[[si, ei, wi], 2] <= 0).any():
                continue
            s, e, w = person[si, :2], person[ei, :2], person[wi, :2]
            out = outs[_side(layout, si)]
            if targets is not None:
                if p >= len(targets) or (targets[p, [ei, wi], 2] <= 0).any():
                    continue
                e2, w2 = targets[p, ei:ei + 1, :2].astype(np.float64), targets[p, wi:wi + 1, :2].astype(np.float64)
            else:
                e2, w2 = _candidates(s, e, w, down, out, cfg, rng)
            abd, flex = arm_angles(s, e2, w2, down, out)
            ok = _limits_ok(abd, flex, e2, w2, poly, cfg) & _inside(np.stack([e2, w2], 1), size)
            if ok.any():
                j = int(np.argmax(ok))
                kp[p, ei, :2], kp[p, wi, :2] = e2[j], w2[j]
    return kp


class Perturber:
    """Every perturbation mode behind one call: ``perturber(keypoints, size, rng, file_name)``.

    Holds what some modes need besides the keypoints: the training set's arm-angle histogram
    (``rare``), the pose file (``poses:FILE``), the motion model (``learned:RUN``), and an
    optional plausibility critic (``plausibility``: a ``train-motion`` run whose critic must
    accept the new pose, else the source pose is kept).
    """

    def __init__(self, cfg: PerturbConfig, layout: KeypointLayout, train_keypoints: "Iterable[np.ndarray] | None" = None,
                 plausibility: str = "", device: str = "cpu") -> None:
        check_mode(cfg.mode)
        self.layout = layout
        self.cfg = cfg
        if cfg.rare and cfg.histogram is None:
            if train_keypoints is None:
                raise ConfigError("--rare needs the training keypoints to know which poses are rare")
            self.cfg = replace(cfg, histogram=ArmAngleHistogram.from_keypoints(train_keypoints, layout, cfg))
        self.poses = PoseFile(cfg.mode.split(":", 1)[1], layout) if cfg.mode.startswith("poses:") else None
        self.learned = None
        if cfg.mode.startswith("learned:"):
            from .motion.sampler import LearnedArmSampler

            self.learned = LearnedArmSampler(cfg.mode.split(":", 1)[1], device=device)
        self.critic = None
        if plausibility:
            from .motion.sampler import PlausibilityCritic

            self.critic = PlausibilityCritic(plausibility, device=device)
        self.kept_by_critic = 0

    @property
    def needs_file_name(self) -> bool:
        return self.poses is not None

    def __call__(self, keypoints: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                 file_name: str = "") -> np.ndarray:
        """Perturbed copy of one image's ``(P, K, 3)`` keypoints (``size = (H, W)``)."""
        if self.poses is not None:
            targets = self.poses.lookup(file_name, size)
            if targets is None:
                return np.array(keypoints, np.float32, copy=True)
            new = perturb_keypoints(keypoints, self.layout, size, rng, self.cfg, targets=targets)
        elif self.learned is not None:
            new = self.learned.perturb(np.asarray(keypoints, np.float32), self.layout, size, rng)
            bad = ~plausible_arms(new, self.layout, self.cfg)
            if bad.any():  # joint limits hold for every mode
                new = _restore_arms(new, keypoints, self.layout, bad)
        else:
            new = perturb_keypoints(keypoints, self.layout, size, rng, self.cfg)
        if self.critic is not None and len(new):
            ok = self.critic.plausible(new, self.layout) if hasattr(self.critic, "plausible") else None
            if ok is not None and not np.all(ok):
                self.kept_by_critic += int((~np.asarray(ok)).sum())
                new = np.where(np.asarray(ok)[:, None, None], new, np.asarray(keypoints, np.float32))
        return new


def _restore_arms(new: np.ndarray, old: np.ndarray, layout: KeypointLayout, bad: np.ndarray) -> np.ndarray:
    out = new.copy()
    for (p, j) in zip(*np.nonzero(bad)):
        s, e, w = arm_chains(layout)[j]
        out[p, [e, w]] = np.asarray(old)[p, [e, w]]
    return out
