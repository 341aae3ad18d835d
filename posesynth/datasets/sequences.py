"""Pose sequences: people followed through the frames of a clip, as training data for motion models.

Sources (:func:`load_sequences` recognises them):

- **A video dataset**: a COCO dataset whose images are the frames of one clip (the output of
  ``extract`` or ``convert``), ordered by the image entries' ``"frame_id"``, else by image id.
- **COCO datasets with video ids** (PoseTrack style): image entries carry ``"video_id"`` (or
  PoseTrack's ``"vid_id"``) and ``"frame_id"``; annotations may carry ``"track_id"``.  Each
  video is one clip, ordered by ``frame_id`` (else image id).
- **A BlazePose-33 per-frame JSON** beside its video (one person), read without decoding frames.
- **Synthetic driver scenes** whose arms move smoothly (:func:`synthetic_arm_motion`,
  :func:`synthetic_sequences`; ``posesynth make-data --sequences N --length T`` writes them
  as images).

Tracks: within a clip, people are followed by their annotations' ``track_id``; without one,
by their order in the frame (the k-th annotation of each frame is track k), which is right
for one person per frame and for writers that keep a fixed order (posesynth's synthetic
scenes do).  Frames of a clip that hold no annotation at all are treated as unlabelled and
skipped (PoseTrack labels only some frames); a labelled frame that lacks a track ends that
track's sequence, and the track starts a new one when it reappears.

Images are never decoded: only the annotation JSON (and, for a BlazePose JSON, the video's
frame size) is read.  A malformed annotation drops its frame with a warning (the readers'
``on_error="skip"``), so the clip goes on without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DatasetError
from .convert import convert_keypoints
from .layouts import DRIVER9, KeypointLayout, get_layout
from .synthetic import POSE_RANGES, SceneSpec

__all__ = ["PoseSequence", "load_sequences", "synthetic_arm_motion", "synthetic_sequences", "motion_rng",
           "split_sequences", "ARM_LIMITS"]

# joint limits of the synthetic arm motions, degrees: (upper arm from hanging, outward positive),
# (elbow flexion towards the body): the ``wide`` pose range of the synthetic scenes
ARM_LIMITS: tuple[tuple[float, float], tuple[float, float]] = POSE_RANGES["wide"]


@dataclass
class PoseSequence:
    """One person followed through consecutive labelled frames of one clip.

    Attributes:
        keypoints: ``(T, K, 3)`` float32 ``[x, y, v]`` in image pixels (v as COCO: 0 unlabelled,
            1 occluded, 2 visible), in the layout :func:`load_sequences` returns.
        size: ``(H, W)`` of the frames in pixels.
        video: the clip's id (``video_id``/``vid_id``, or the file for a one-clip dataset).
        track: the person's track id within the clip (or their order in the frame).
        frame_ids: ``(T,)`` int64 frame ids (``frame_id``, else image ids, else frame indices).
    """

    keypoints: np.ndarray
    size: tuple[int, int]
    video: str
    track: str
    frame_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


def _int_or_none(v: Any) -> "int | None":
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _coco_sequences(path: Path, layout: "str | Path | KeypointLayout | None") -> tuple[list[PoseSequence], KeypointLayout]:
    from .coco import CocoKeypointDataset

    ds = CocoKeypointDataset(path, layout=layout, check_files=False, on_error="skip")
    src = ds.source_layout
    convert = ds._convert   # keypoints are read in the file's layout and converted here
    # clip of each image: video_id, PoseTrack's vid_id, else the whole dataset is one clip
    clips: dict[str, list[Any]] = {}
    for e in ds.entries:
        im = e.image
        vid = im.get("video_id", im.get("vid_id"))
        clips.setdefault(str(vid) if vid is not None else str(ds.ann_file), []).append(e)
    seqs: list[PoseSequence] = []
    for vid, entries in clips.items():
        pos = {id(e): i for i, e in enumerate(entries)}

        def order(e) -> tuple[int, int]:
            iid = _int_or_none(e.image["id"])
            iid = iid if iid is not None else pos[id(e)]          # string ids: file order
            fid = _int_or_none(e.image.get("frame_id"))
            return (fid if fid is not None else iid, iid)

        entries = sorted(entries, key=order)
        entries = [e for e in entries if len(e.ann_ids)]            # unlabelled frames are skipped
        # track of every annotation: its track_id, else its order in the frame
        open_tracks: dict[str, dict[str, list]] = {}
        for e in entries:
            im = e.image
            w, h = getattr(e, "size", None) or (im.get("width"), im.get("height"))
            if not (w and h):
                raise DatasetError(f"{ds.ann_file}: image {im['id']} has no 'width'/'height' (needed for sequences)")
            fid = order(e)[0]
            seen = set()
            for k, (aid, kp) in enumerate(zip(e.ann_ids, e.keypoints)):
                tid = ds.coco.anns[aid].get("track_id", k)
                tid = str(tid)
                if tid in seen:
                    raise DatasetError(f"{ds.ann_file}: image {im['id']} has two annotations with track_id {tid}")
                seen.add(tid)
                tr = open_tracks.setdefault(tid, {"kp": [], "fid": [], "size": (int(h), int(w))})
                tr["kp"].append(kp)
                tr["fid"].append(fid)
            for tid in list(open_tracks):                          # a labelled frame without the track
                if tid not in seen:
                    seqs.append(_finish(open_tracks.pop(tid), vid, tid))
        for tid, tr in open_tracks.items():
            seqs.append(_finish(tr, vid, tid))
    out = []
    for s in seqs:
        kp = s.keypoints
        if convert:
            kp = convert_keypoints(kp, src, ds.layout)
        out.append(PoseSequence(kp.astype(np.float32), s.size, s.video, s.track, s.frame_ids))
    return out, ds.layout


def _finish(tr: dict[str, Any], vid: str, tid: str) -> PoseSequence:
    return PoseSequence(np.stack(tr["kp"]).astype(np.float32), tr["size"], vid, tid, np.asarray(tr["fid"], np.int64))


def _blazepose_sequences(path: Path, layout: "str | Path | KeypointLayout | None") -> tuple[list[PoseSequence], KeypointLayout]:
    import cv2

    from .formats import BlazePoseVideoDataset

    ds = BlazePoseVideoDataset(path, layout=get_layout(layout) if layout else "coco17")
    cap = cv2.VideoCapture(str(ds.video))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    if w <= 0 or h <= 0:
        raise DatasetError(f"{ds.video}: cannot read the video's frame size")
    xy = ds.frames                                                 # (T, 33, 2)
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)
    kp = np.concatenate([xy, np.where(inside, 2.0, 0.0)[..., None]], -1).astype(np.float32)
    kp = convert_keypoints(kp, "blazepose33", ds.layout)
    return [PoseSequence(kp, (h, w), str(path), "0", np.arange(len(kp), dtype=np.int64))], ds.layout


def load_sequences(path: "str | Path", layout: "str | Path | KeypointLayout | None" = None,
                   min_length: int = 2) -> tuple[list[PoseSequence], KeypointLayout]:
    """Every person's sequences in a video dataset, a COCO dataset with video ids, or a
    BlazePose-33 JSON beside its video (see the module docstring for the rules).

    Args:
        path: dataset folder, COCO JSON file, or BlazePose per-frame JSON.
        layout: convert the keypoints to this layout (default: the data's own; coco17 for
            BlazePose).
        min_length: sequences shorter than this many frames are dropped.

    Returns:
        ``(sequences, layout)``; raises :class:`DatasetError` when nothing usable is found.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_dir():
        if not (p / "annotations.json").exists():
            raise DatasetError(f"{p}: not a dataset folder (no annotations.json inside)")
        seqs, lay = _coco_sequences(p, layout)
    else:
        with open(p, "rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(b"{"):
            seqs, lay = _coco_sequences(p, layout)
        elif head.startswith(b"["):
            seqs, lay = _blazepose_sequences(p, layout)
        else:
            raise DatasetError(f"{p}: not a COCO or BlazePose JSON file")
    seqs = [s for s in seqs if len(s) >= min_length]
    if not seqs:
        raise DatasetError(f"{p}: no pose sequence of at least {min_length} labelled frames "
                           "(a video dataset, COCO with video_id/frame_id, or BlazePose JSON is needed)")
    return seqs, lay


# ---- synthetic smooth arm motions ----------------------------------------------------------
_IDX = {n: i for i, n in enumerate(DRIVER9.keypoints)}
_ARMS = [(-1.0, _IDX["right_shoulder"], _IDX["right_elbow"], _IDX["right_wrist"]),
         (1.0, _IDX["left_shoulder"], _IDX["left_elbow"], _IDX["left_wrist"])]


def motion_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sequence ``index``'s motion (independent of its scene's generator)."""
    return np.random.default_rng([int(seed), int(index), 7919])


def _rot(v: np.ndarray, deg: np.ndarray) -> np.ndarray:
    """Rotate ``(..., 2)`` vectors by ``deg`` degrees (broadcast), the scenes' convention."""
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def _signed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], (a * b).sum(-1)))


def synthetic_arm_motion(keypoints: np.ndarray, length: int, rng: np.random.Generator, size: "tuple[int, int]",
                         hold_prob: float = 0.25, step_frames: tuple[int, int] = (6, 14),
                         max_change: tuple[float, float] = (70.0, 60.0)) -> np.ndarray:
    """Smooth arm motions of driver9 people: ``(P, 9, 3)`` -> ``(length, P, 9, 3)``.

    Each arm's upper-arm angle (from hanging along the torso, outward positive) and elbow
    flexion (towards the body) follow keyframes ``step_frames`` frames apart; each keyframe
    changes them by up to ``max_change`` degrees (or holds them, with ``hold_prob``) within
    :data:`ARM_LIMITS`, and they move between keyframes with a cosine ease (zero speed at the
    keyframes, so the motion is smooth).  Bone lengths are the person's own, exactly; the
    torso stays.  Keyframes that would put the elbow or wrist outside the image are redrawn
    (10 tries, else held).  Frame 0 is the input pose.  An arm moves only when its shoulder,
    elbow, wrist, the neck and both hips are labelled.

    Returns keypoints with ``v = 2`` on every labelled point (so ``render_scene(...,
    keypoints=kp_t)`` redraws every moved point; it recomputes visibility itself), and the
    input ``v`` elsewhere.
    """
    kp = np.asarray(keypoints, np.float64).reshape(-1, 9, 3)
    h, w = size
    out = np.repeat(kp[None], length, 0)
    out[..., 2] = np.where(out[..., 2] > 0, 2.0, 0.0)
    (a_lo, a_hi), (f_lo, f_hi) = ARM_LIMITS
    for p in range(kp.shape[0]):
        k = kp[p]
        if (k[[_IDX["neck"], _IDX["right_hip"], _IDX["left_hip"]], 2] <= 0).any():
            continue
        down = (k[_IDX["right_hip"], :2] + k[_IDX["left_hip"], :2]) / 2 - k[_IDX["neck"], :2]
        down = down / max(np.linalg.norm(down), 1e-9)
        for sign, si, ei, wi in _ARMS:
            if (k[[si, ei, wi], 2] <= 0).any():
                continue
            sh, el, wr = k[si, :2], k[ei, :2], k[wi, :2]
            upper, fore = np.linalg.norm(el - sh), np.linalg.norm(wr - el)
            a0 = float(np.clip(-sign * _signed(down, el - sh), a_lo, a_hi))
            f0 = float(np.clip(sign * _signed(el - sh, wr - el), f_lo, f_hi))

            def joints(a: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                d_up = _rot(down, -sign * a)
                e = sh + upper * d_up
                return e, e + fore * _rot(d_up, sign * f)

            def inside(a: float, f: float) -> bool:
                pts = np.stack(joints(np.array(a), np.array(f)))
                return bool((pts >= 0).all() and (pts[:, 0] <= w - 1).all() and (pts[:, 1] <= h - 1).all())

            keys_t, keys_a, keys_f = [0], [a0], [f0]
            while keys_t[-1] < length - 1:
                keys_t.append(keys_t[-1] + int(rng.integers(step_frames[0], step_frames[1] + 1)))
                a, f = keys_a[-1], keys_f[-1]
                if rng.random() >= hold_prob:
                    for _ in range(10):
                        a2 = float(np.clip(a + rng.uniform(-max_change[0], max_change[0]), a_lo, a_hi))
                        f2 = float(np.clip(f + rng.uniform(-max_change[1], max_change[1]), f_lo, f_hi))
                        if inside(a2, f2):
                            a, f = a2, f2
                            break
                keys_a.append(a)
                keys_f.append(f)
            t = np.arange(length, dtype=np.float64)
            seg = np.clip(np.searchsorted(keys_t, t, side="right") - 1, 0, len(keys_t) - 2)
            t0, t1 = np.asarray(keys_t)[seg], np.asarray(keys_t)[seg + 1]
            s = (1 - np.cos(np.pi * (t - t0) / (t1 - t0))) / 2        # cosine ease, 0 -> 1
            ka, kf = np.asarray(keys_a), np.asarray(keys_f)
            a_t = ka[seg] + (ka[seg + 1] - ka[seg]) * s
            f_t = kf[seg] + (kf[seg + 1] - kf[seg]) * s
            e_t, w_t = joints(a_t, f_t)
            e_t[0], w_t[0] = el, wr                                 # frame 0 is the scene's own pose
            out[:, p, ei, :2], out[:, p, wi, :2] = e_t, w_t
            out[:, p, [ei, wi], 2] = 2.0
    return out.astype(np.float32)


def _visible_in(kp: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labelled points outside the image become unlabelled (coordinates 0), as the scenes do."""
    h, w = size
    x, y = kp[..., 0], kp[..., 1]
    inside = (kp[..., 2] > 0) & (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    out = kp.copy()
    out[..., :2] = np.where(inside[..., None], kp[..., :2], 0.0)
    out[..., 2] = np.where(inside, kp[..., 2], 0.0)
    return out


def synthetic_sequences(num: int, length: int, seed: int = 0, size: int = 384, pose_range: str = "narrow",
                        passenger_prob: float = 0.3, passenger_pose_range: "str | None" = None,
                        start: int = 0) -> list[PoseSequence]:
    """Keypoint-only synthetic sequences (no images written): scene ``i`` of ``(seed, size,
    pose_range, passenger_prob)`` with the arm motion of :func:`synthetic_arm_motion` drawn
    from :func:`motion_rng` ``(seed, i)``, one :class:`PoseSequence` per person (track = the
    person's order in the scene, passenger first).  The same sequences as ``make-data
    --sequences`` writes, except that wheel occlusion (``v = 1``) is not marked."""
    seqs = []
    for i in range(start, start + num):
        spec = SceneSpec(seed, i, size, pose_range, passenger_prob, passenger_pose_range)
        base = spec.render().keypoints
        motion = _visible_in(synthetic_arm_motion(base, length, motion_rng(seed, i), (size, size)), (size, size))
        for p in range(base.shape[0]):
            seqs.append(PoseSequence(motion[:, p], (size, size), str(i + 1), str(p), np.arange(length, dtype=np.int64)))
    return seqs


def split_sequences(seqs: Sequence[PoseSequence], fraction: float, seed: int = 0) -> tuple[list[PoseSequence], list[PoseSequence]]:
    """``(train, held_out)``: about ``fraction`` of the clips held out, whole (chosen by ``seed``)."""
    videos = sorted({s.video for s in seqs})
    rng = np.random.default_rng(seed)
    n_val = int(round(len(videos) * fraction))
    held = set(np.asarray(videos, dtype=object)[rng.permutation(len(videos))[:n_val]].tolist()) if n_val else set()
    return [s for s in seqs if s.video not in held], [s for s in seqs if s.video in held]
