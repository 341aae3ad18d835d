"""Pose detectors behind one interface: RGB frames in, keypoints in frame pixels out.

``make_detector(spec)`` with ``spec``:

- ``mediapipe``: BlazePose (full model, the one mediapipe 0.10.14 ships in its wheel), one
  person per frame, in video mode (it tracks from frame to frame, so frames must come in
  order).  Also returns its 33 points.  Needs the optional ``mediapipe`` package (see the
  README: install it without its ``opencv-contrib-python`` dependency).
- ``keypointrcnn``: torchvision's Keypoint R-CNN (ResNet-50 FPN) with COCO weights, read
  from the torch hub cache or a given file; several people per frame.  Nothing is downloaded.
- ``posenet:RUN``: a pose network trained with ``posesynth train-posenet`` (its own layout).

Every detector returns, for each frame, a :class:`Detections`: ``keypoints`` ``(P, K, 3)``
``[x, y, v]`` in pixels of the frame (COCO visibility: 2 where the detector's confidence is
at least ``min_score`` and the point is inside the frame, else 0 with the coordinates kept),
``scores`` ``(P, K)`` per-keypoint confidences in [0, 1], ``person_scores`` ``(P,)``, and
``extra`` arrays (``"blazepose33"``: ``(P, 33, 4)`` ``[x, y, z, visibility]``, x/y/z in pixels).
People are sorted by person score, best first, at most ``max_people`` (0: all).
"""
from __future__ import annotations

import importlib.metadata as md
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..datasets.convert import BLAZEPOSE33_NAMES
from ..datasets.layouts import COCO17, KeypointLayout
from ..datasets.posemaps import from_grid
from ..errors import ConfigError, PosesynthError

__all__ = ["Detections", "Detector", "MediaPipeDetector", "KeypointRCNNDetector", "PoseNetDetector",
           "make_detector", "DETECTORS", "KEYPOINTRCNN_FILE", "cv2_distributions", "DetectorError",
           "pose_consistency"]

log = logging.getLogger(__name__)
DETECTORS = ("mediapipe", "keypointrcnn", "posenet:RUN")
KEYPOINTRCNN_FILE = "keypointrcnn_resnet50_fpn_coco-fc266e95.pth"  # torchvision's COCO_V1 weights
_BLAZE_TO_COCO = np.array([BLAZEPOSE33_NAMES.index(n) for n in COCO17.keypoints])
CV2_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                     "opencv-contrib-python-headless")


class DetectorError(PosesynthError):
    """A detector cannot be set up (missing package or weights, unknown name)."""


@dataclass
class Detections:
    """One frame's people; see the module docstring for the fields."""

    keypoints: np.ndarray
    scores: np.ndarray
    person_scores: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_people(self) -> int:
        return int(self.keypoints.shape[0])


class Detector(Protocol):
    """``detector(frames)``: a list of ``(H, W, 3)`` uint8 RGB frames -> one :class:`Detections` each."""

    name: str
    layout: KeypointLayout

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]: ...

    def close(self) -> None: ...


def _visibility(xy: np.ndarray, scores: np.ndarray, size: tuple[int, int], min_score: float) -> np.ndarray:
    """COCO ``v``: 2 for a confident point inside the frame (pixel centres 0 .. W-1), else 0."""
    h, w = size
    inside = (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] <= h - 1)
    return np.where(inside & (scores >= min_score), 2.0, 0.0).astype(np.float32)


def _pack(xy: np.ndarray, scores: np.ndarray, person: np.ndarray, size: tuple[int, int], min_score: float,
          max_people: int, extra: "dict[str, np.ndarray] | None" = None) -> Detections:
    order = np.argsort(-person, kind="stable")
    if max_people > 0:
        order = order[:max_people]
    xy, scores, person = xy[order], scores[order], person[order]
    kp = np.concatenate([xy, _visibility(xy, scores, size, min_score)[..., None]], -1).astype(np.float32)
    ex = {k: v[order] for k, v in (extra or {}).items()}
    return Detections(kp, scores.astype(np.float32), person.astype(np.float32), ex)


def cv2_distributions() -> dict[str, str]:
    """Installed distributions that provide the ``cv2`` module: name -> version.  Exactly one
    should be installed: two of them write over each other's files in one ``cv2`` folder."""
    found = {}
    for name in CV2_DISTRIBUTIONS:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


class MediaPipeDetector:
    """BlazePose through ``mediapipe.solutions.pose`` (model complexity 1, the full model).

    Args:
        min_score: BlazePose visibility below which a keypoint gets ``v = 0``.
        min_detection_confidence, min_tracking_confidence: mediapipe's thresholds.
        smooth: mediapipe's temporal landmark smoothing (video mode).
        static: treat every frame as unrelated (no tracking; slower).
    """

    name = "mediapipe"
    layout = COCO17

    def __init__(self, min_score: float = 0.5, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, smooth: bool = True, static: bool = False) -> None:
        try:
            from mediapipe.python.solutions import pose as mp_pose
        except ImportError as e:
            raise DetectorError(
                f"the mediapipe detector needs the optional package mediapipe==0.10.14 ({e}); install it "
                "with: pip install --no-deps mediapipe==0.10.14 absl-py 'attrs>=19.1.0' 'flatbuffers>=2.0' "
                "'protobuf>=4.25.3,<5' (see README: People from video)") from None

        self.min_score = min_score
        os.environ.setdefault("GLOG_minloglevel", "2")
        # complexity 1 is the model inside the wheel; 0 and 2 would be downloaded at run time
        self._pose = mp_pose.Pose(static_image_mode=static, model_complexity=1, smooth_landmarks=smooth,
                                  enable_segmentation=False, min_detection_confidence=min_detection_confidence,
                                  min_tracking_confidence=min_tracking_confidence)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        out = []
        for rgb in frames:
            h, w = rgb.shape[:2]
            res = self._pose.process(np.ascontiguousarray(rgb))
            lm = res.pose_landmarks
            if lm is None:
                out.append(Detections(np.zeros((0, 17, 3), np.float32), np.zeros((0, 17), np.float32),
                                      np.zeros((0,), np.float32), {"blazepose33": np.zeros((0, 33, 4), np.float32)}))
                continue
            a = np.array([[p.x * w, p.y * h, p.z * w, p.visibility] for p in lm.landmark], np.float32)  # (33, 4)
            blaze = a[None]
            xy, sc = blaze[:, _BLAZE_TO_COCO, :2], blaze[:, _BLAZE_TO_COCO, 3]
            out.append(_pack(xy, sc, sc.mean(1), (h, w), self.min_score, 1, {"blazepose33": blaze}))
        return out

    def close(self) -> None:
        self._pose.close()


def _keypointrcnn_weights(path: "str | Path | None") -> Path:
    if path:
        p = Path(path)
        if not p.is_file():
            raise DetectorError(f"{p}: Keypoint R-CNN weights file not found")
        return p
    p = Path(torch.hub.get_dir()) / "checkpoints" / KEYPOINTRCNN_FILE
    if not p.is_file():
        raise DetectorError(
            f"Keypoint R-CNN COCO weights not found at {p} (nothing is downloaded): put torchvision's "
            f"{KEYPOINTRCNN_FILE} there, or give the file with --weights")
    return p


class KeypointRCNNDetector:
    """torchvision's ``keypointrcnn_resnet50_fpn`` with COCO weights (a ``.pth`` state dict or
    ``.safetensors``).

    Args:
        weights: weights file (default: the torch hub cache's ``KEYPOINTRCNN_FILE``).
        min_person_score: box score below which a person is dropped.
        min_score: keypoint score (a logit, squashed to [0, 1] with a sigmoid) below which ``v = 0``.
        max_people: keep the best ``max_people`` (0: all).
        batch_size: frames per forward pass.
    """

    name = "keypointrcnn"
    layout = COCO17

    def __init__(self, weights: "str | Path | None" = None, device: str = "cpu", min_person_score: float = 0.7,
                 min_score: float = 0.5, max_people: int = 0, batch_size: int = 2) -> None:
        path = _keypointrcnn_weights(weights)
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            from torchvision.models.detection import keypointrcnn_resnet50_fpn

            model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
            model.load_state_dict(sd)
        except Exception as e:  # a wrong or damaged file
            raise DetectorError(f"{path}: not Keypoint R-CNN ResNet-50 FPN weights ({e.__class__.__name__}: "
                                f"{str(e).splitlines()[0][:200]})") from None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.min_person_score, self.min_score = min_person_score, min_score
        self.max_people, self.batch_size = max_people, batch_size

    @torch.no_grad()
    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        out = []
        for s in range(0, len(frames), self.batch_size):
            chunk = frames[s:s + self.batch_size]
            ims = [torch.from_numpy(np.ascontiguousarray(f)).to(self.device).permute(2, 0, 1).float() / 255
                   for f in chunk]
            for f, r in zip(chunk, self.model(ims)):
                keep = r["scores"] >= self.min_person_score
                kp = r["keypoints"][keep].cpu().numpy()                          # (P, 17, 3), v = 1
                sc = torch.sigmoid(r["keypoints_scores"][keep]).cpu().numpy()   # (P, 17)
                ps = r["scores"][keep].cpu().numpy()
                # torchvision's coordinates have their origin at the first pixel's top-left corner;
                # posesynth puts pixel centres at integers
                out.append(_pack(kp[..., :2] - 0.5, sc, ps, f.shape[:2], self.min_score, self.max_people))
        return out

    def close(self) -> None:
        pass


class PoseNetDetector:
    """A trained posesynth pose network (:func:`~posesynth.posenet.trainer.load_posenet`).

    Frames are resized to the network's training size (aspect not kept, as in training) and
    the decoded keypoints mapped back to frame pixels.  Output is in the run's layout
    (``coco17`` if it was trained on it).  Per-keypoint scores are heatmap peak values.
    """

    name = "posenet"

    def __init__(self, run: "str | Path", device: str = "cpu", min_score: "float | None" = None,
                 multi_person: "bool | None" = None, max_people: int = 0, batch_size: int = 4) -> None:
        from .trainer import load_posenet

        run = Path(run)
        if not run.is_dir():
            raise DetectorError(f"{run}: pose-network run directory not found (posenet:RUN)")
        model, layout, meta = load_posenet(run, device)
        cfg = meta.get("config", {})
        self._setup(model, layout, tuple(cfg.get("size", (384, 384))),
                    float(cfg.get("decode_threshold", 0.1) if min_score is None else min_score),
                    bool(cfg.get("multi_person", False) if multi_person is None else multi_person),
                    max_people, batch_size, device)

    def _setup(self, model: torch.nn.Module, layout: KeypointLayout, size: tuple[int, int], threshold: float,
               multi_person: bool, max_people: int, batch_size: int, device: str) -> None:
        self.model, self.layout, self.size = model, layout, tuple(size)
        self.threshold, self.multi_person = threshold, multi_person
        self.max_people, self.batch_size = max_people, batch_size
        self.device = torch.device(device)

    @classmethod
    def from_model(cls, model: torch.nn.Module, layout: KeypointLayout, size: tuple[int, int],
                   threshold: float = 0.1, multi_person: bool = False, max_people: int = 0, batch_size: int = 4,
                   device: str = "cpu") -> "PoseNetDetector":
        """A detector around a network already in memory: ``model(images (B, 3, H, W) in [-1, 1])``
        returns ``(heatmaps, pafs, mask logits)`` like :class:`~posesynth.posenet.model.PoseNet`."""
        obj = cls.__new__(cls)
        obj._setup(model, layout, size, threshold, multi_person, max_people, batch_size, device)
        return obj

    @torch.no_grad()
    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        import cv2

        from ..datasets.torch_dataset import image_to_tensor
        from .trainer import predict_batch

        out = []
        h, w = self.size
        for s in range(0, len(frames), self.batch_size):
            chunk = frames[s:s + self.batch_size]
            ims = torch.stack([image_to_tensor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA))
                               for f in chunk]).to(self.device)
            kps, person, _, (hm, _, _) = predict_batch(self.model, ims, self.layout, self.multi_person, self.threshold)
            peaks = hm.float().flatten(2).amax(2).clamp(0, 1).cpu().numpy()       # (B, K)
            for i, f in enumerate(chunk):
                kp = np.asarray(kps[i], np.float32).reshape(-1, self.layout.num_keypoints, 3)
                xy = from_grid(kp[..., :2], f.shape[:2], self.size)
                # a decoded keypoint's score is its heatmap peak; undecoded ones score 0
                sc = np.where(kp[..., 2] > 0, peaks[i][None], 0.0).astype(np.float32)
                out.append(_pack(xy, sc, np.asarray(person[i], np.float32).reshape(-1), f.shape[:2], self.threshold,
                                 self.max_people))
        return out

    def close(self) -> None:
        pass


def make_detector(spec: str, device: str = "cpu", weights: "str | Path | None" = None, min_score: "float | None" = None,
                  max_people: int = 0, every: int = 1) -> Detector:
    """The detector ``spec`` names: ``mediapipe``, ``keypointrcnn`` or ``posenet:RUN``.

    ``weights``: the Keypoint R-CNN weights file; ``min_score``: confidence for ``v = 2``
    (defaults: 0.5 for mediapipe and Keypoint R-CNN, the run's decode threshold for posenet).
    ``every``: the frames will be every ``every``-th of a video (0: unrelated images, e.g.
    renders to score): mediapipe tracks and smooths over consecutive frames (``every == 1``)
    and detects each frame afresh otherwise (its
    smoothing across gaps drags the points: on the squats clip with every 4th frame, median
    error 9.3 px smoothed against 5.7 px per frame).
    """
    if spec == "mediapipe":
        if weights:
            raise ConfigError("--weights is for keypointrcnn; mediapipe uses the model inside its wheel")
        return MediaPipeDetector(min_score=0.5 if min_score is None else min_score, smooth=every == 1,
                                 static=every != 1)
    if spec == "keypointrcnn":
        return KeypointRCNNDetector(weights, device, min_score=0.5 if min_score is None else min_score,
                                    max_people=max_people)
    if spec.startswith("posenet:"):
        run = spec.split(":", 1)[1]
        if not run:
            raise ConfigError("posenet:RUN needs a run directory after the colon, e.g. posenet:runs/judge")
        return PoseNetDetector(run, device, min_score, max_people=max_people)
    raise ConfigError(f"unknown detector {spec!r}: use one of {', '.join(DETECTORS)}")


def pose_consistency(detector: Detector, images: Sequence[np.ndarray], keypoints: np.ndarray,
                     layout: KeypointLayout, alpha: float = 0.2) -> dict[str, float]:
    """How well rendered images show the poses they were rendered from: ``detector`` finds
    the people in ``images`` (``(H, W, 3)`` uint8 RGB), and its keypoints are scored against
    ``keypoints`` ``(N, P, K, 3)`` (the input skeletons, in pixels of the images, in
    ``layout``) with :class:`~posesynth.posenet.metrics.PoseMetrics`: ``PCK@alpha`` (of the
    torso size), ``mean_px_error``, OKS ``AP``/``AR``, plus ``detected`` (the share of images
    where the detector found someone).  Detections are converted to ``layout`` when the
    detector's differs (e.g. coco17 -> driver9).
    """
    from ..datasets.convert import convert_keypoints
    from .metrics import PoseMetrics

    kp = np.asarray(keypoints, np.float32)
    if len(images) != len(kp):
        raise ValueError(f"{len(images)} images but {len(kp)} skeletons")
    metrics = PoseMetrics(layout, alpha)
    found = 0
    for img, gt, det in zip(images, kp, detector(list(images))):
        pred = det.keypoints
        if detector.layout.keypoints != layout.keypoints:
            pred = convert_keypoints(pred, detector.layout, layout)
        metrics.add(gt, pred, det.person_scores, img.shape[:2])
        found += det.num_people > 0
    out = {k: v for k, v in metrics.result().items() if "/" not in k or k.endswith("/arms")}
    out["detected"] = found / max(len(kp), 1)
    return out
