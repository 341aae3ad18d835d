"""Motion transfer (Everybody Dance Now, Chan et al., ICCV 2019), the parts that need no
trained generator: global pose normalisation, retiming and mirroring a keypoint sequence, and
rendering a sequence to an MP4 through any ``render`` callable, with a side-by-side video
(source | skeleton | render).

Global pose normalisation (:class:`GlobalPoseNormalizer`).  For each video, :func:`pose_stats`
finds, on the first person of every frame, the anchor (the mean of the labelled ankles, or
of the hips where the layout or the data has no ankles): its smallest and largest image y
over the video, ``far`` and ``close`` (the camera looks down, so a larger y is closer), the
tallest skeleton (y extent of the labelled keypoints) among the frames whose anchor lies
within ``band`` of ``far`` and of ``close`` (``height_far``, ``height_close``), and the median
anchor x.  A source pose whose anchor is at ``a`` sits at the fraction
``t = (a - far_s) / (close_s - far_s)`` of the source's depth range (``t = 0.5`` when that
range is under 5% of the source's height: the source does not move in depth, and the jitter
of its detected ankles must not be stretched over the target's range), and is

- scaled by ``s = r_far + t (r_close - r_far)`` with ``r = height_target / height_source``
  at each end (the paper's linear interpolation of the two scales), about its anchor;
- moved so its anchor is at ``y = far_t + t (close_t - far_t)`` and ``x = cx_t + (ax - cx_s) s``.

So the source's far and close poses get the target's far and close heights and positions,
and its range of standing heights maps onto the target's.

``render(keypoints, size)``: ``keypoints`` ``(B, P, K, 3)`` float tensor in pixels of an
``(H, W) = size`` image, returns ``(B, 3, H, W)`` in [-1, 1].  Any generator fits behind it
(SPADE on pose maps, pix2pix on stick figures, the skeleton-vector network, retrieval).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..datasets.layouts import KeypointLayout
from ..datasets.placement import PoseStats, anchor_points, pose_stats, skeleton_heights, source_pose_stats
from ..datasets.sample import pad_people
from ..datasets.posemaps import to_grid
from ..datasets.stickfigure import stick_figure_images
from ..datasets.torch_dataset import tensor_to_image
from ..datasets.video import VideoWriter, probe_video, read_frames
from ..errors import PosesynthError

__all__ = ["PoseStats", "pose_stats", "anchor_points", "skeleton_heights", "GlobalPoseNormalizer", "SourceSequence",
           "load_sequence", "transfer_sequence", "source_pose_stats",
           "mirror_sequence", "retime_sequence", "render_sequence", "RenderFn", "side_by_side", "side_by_side_path",
           "transfer_from_run"]

RenderFn = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
DEFAULT_FPS = 25.0   # the frame rate of a source that records none (said, with --fps to set one)


class GlobalPoseNormalizer:
    """Maps source poses into the target's frame (see the module docstring).

    Args:
        source, target: their :class:`PoseStats` (same anchor kind).
        layout: the keypoints' layout.
        min_range: a source depth range (``close - far``) below this fraction of the source's
            standing height counts as none (``t = 0.5`` for every pose).
    """

    def __init__(self, source: PoseStats, target: PoseStats, layout: KeypointLayout, min_range: float = 0.05) -> None:
        if source.anchor != target.anchor:
            raise PosesynthError(f"source placed by {source.anchor}s, target by {target.anchor}s: compute both "
                                 "with the same anchor")
        self.source, self.target, self.layout = source, target, layout
        self.min_range = min_range

    def depth_fraction(self, anchor_y: np.ndarray) -> np.ndarray:
        """``t``: where an anchor y lies in the source's depth range (0 far, 1 close)."""
        s = self.source
        if s.close - s.far < self.min_range * max(s.height_far, s.height_close):
            return np.full_like(anchor_y, 0.5, dtype=np.float64)
        return (anchor_y - s.far) / (s.close - s.far)

    def scale(self, t: np.ndarray) -> np.ndarray:
        s, g = self.source, self.target
        r_far, r_close = g.height_far / s.height_far, g.height_close / s.height_close
        return r_far + t * (r_close - r_far)

    def __call__(self, keypoints: np.ndarray) -> np.ndarray:
        """``(N, P, K, 3)`` source keypoints -> the same in the target's frame (``v`` kept).

        A person without an anchor is placed as if their anchor were at the source's median
        depth, about the source's median x.
        """
        kp = np.asarray(keypoints, np.float64)
        s, g = self.source, self.target
        pts = anchor_points(kp, self.layout, s.anchor)                       # (N, P, 2)
        mid_y = (s.far + s.close) / 2
        ax = np.where(np.isfinite(pts[..., 0]), pts[..., 0], s.center_x)
        ay = np.where(np.isfinite(pts[..., 1]), pts[..., 1], mid_y)
        t = self.depth_fraction(ay)
        sc = self.scale(t)                                                   # (N, P)
        new_ay = g.far + t * (g.close - g.far)
        new_ax = g.center_x + (ax - s.center_x) * sc
        out = kp.copy()
        out[..., 0] = (kp[..., 0] - ax[..., None]) * sc[..., None] + new_ax[..., None]
        out[..., 1] = (kp[..., 1] - ay[..., None]) * sc[..., None] + new_ay[..., None]
        return out.astype(np.float32)


def mirror_sequence(keypoints: np.ndarray, layout: KeypointLayout, width: int) -> np.ndarray:
    """Mirror ``(N, P, K, 3)`` keypoints left-right in a ``width``-pixel frame (``x -> W - 1 - x``),
    exchanging left and right keypoints so the skeleton stays anatomically labelled."""
    kp = np.asarray(keypoints, np.float32)[..., layout.flip_index, :].copy()
    kp[..., 0] = np.where(kp[..., 2] > 0, width - 1 - kp[..., 0], kp[..., 0])
    return kp


def retime_sequence(keypoints: np.ndarray, speed: float) -> tuple[np.ndarray, np.ndarray]:
    """Play ``(N, P, K, 3)`` keypoints at ``speed`` times the original rate (0.5: twice as
    many frames, slow motion; 2: every other frame).

    Output frame ``j`` is at source time ``j * speed`` (in frames), for ``j = 0 ..
    floor((N - 1) / speed)``; its keypoints are interpolated linearly between the two source
    frames around it where both label a keypoint, else taken from the nearer one.

    Returns:
        ``(M, P, K, 3)`` keypoints and ``(M,)`` the nearest source frame of each (to show
        beside it).
    """
    if not speed > 0:
        raise PosesynthError(f"speed must be positive, not {speed}")
    kp = np.asarray(keypoints, np.float32)
    n = len(kp)
    if n == 0:
        return kp.copy(), np.zeros(0, np.int64)
    m = int(np.floor((n - 1) / speed + 1e-9)) + 1
    t = np.arange(m) * speed
    i0 = np.clip(np.floor(t).astype(np.int64), 0, n - 1)
    i1 = np.clip(i0 + 1, 0, n - 1)
    f = (t - i0).astype(np.float32)[:, None, None]
    a, b = kp[i0], kp[i1]
    both = (a[..., 2] > 0) & (b[..., 2] > 0)
    near = np.where((f < 0.5)[..., None], a, b)
    out = near.copy()
    out[..., :2] = np.where(both[..., None], a[..., :2] * (1 - f[..., None]) + b[..., :2] * f[..., None], near[..., :2])
    return out, np.where(f[:, 0, 0] < 0.5, i0, i1)


def side_by_side(panels: Sequence[np.ndarray], height: int) -> np.ndarray:
    """Panels ``(h_i, w_i, 3)`` uint8 resized to ``height`` (aspect kept) and joined left to right,
    padded with black to even width and height (what H.264 needs)."""
    row = []
    for p in panels:
        h, w = p.shape[:2]
        nw = max(int(round(w * height / h)), 1)
        row.append(p if (h, w) == (height, nw) else cv2.resize(p, (nw, height), interpolation=cv2.INTER_AREA))
    img = np.concatenate(row, 1)
    ph, pw = img.shape[0] % 2, img.shape[1] % 2
    return np.pad(img, ((0, ph), (0, pw), (0, 0))) if ph or pw else img


def render_sequence(render: RenderFn, keypoints: np.ndarray, layout: KeypointLayout, in_size: tuple[int, int],
                    size: tuple[int, int], out: "str | Path", fps: float,
                    source_frames: "Iterable[np.ndarray] | None" = None, side_by_side_out: "str | Path | None" = None,
                    batch_size: int = 8, device: "str | torch.device" = "cpu", progress: bool = True,
                    desc: str = "transfer") -> dict[str, Any]:
    """Render every frame of a keypoint sequence and write the videos.

    Args:
        render: the generator behind :data:`RenderFn`.
        keypoints: ``(N, P, K, 3)`` in pixels of ``in_size`` frames (e.g. the target's frames,
            after :class:`GlobalPoseNormalizer`).
        in_size: ``(H, W)`` the keypoints refer to; they are mapped to ``size`` (pixel centres
            kept, :func:`~posesynth.datasets.posemaps.to_grid`).
        size: ``(H, W)`` the generator renders.
        out: the MP4 of the renders (``size``, ``N`` frames).
        source_frames: ``N`` RGB frames to show on the left of the side-by-side video (any
            size; read lazily).  Without them the side-by-side has skeleton | render.
        side_by_side_out: the side-by-side MP4 (``source | skeleton | render`` at height ``H``),
            or ``None`` for none.

    Returns:
        ``{"video": WrittenVideo, "side_by_side": WrittenVideo | None, "frames": N,
        "seconds_per_frame": ...}`` (the render time alone).
    """
    kp = np.asarray(keypoints, np.float32)
    if kp.ndim != 4 or kp.shape[2] != layout.num_keypoints or kp.shape[3] != 3:
        raise PosesynthError(f"keypoints must be (N, P, {layout.num_keypoints}, 3) for layout '{layout.name}', "
                             f"got {kp.shape}")
    n = len(kp)
    if n == 0:
        raise PosesynthError("nothing to render: the sequence has no frame")
    grid = kp.copy()
    grid[..., :2] = to_grid(kp[..., :2], in_size, size)
    src_iter: "Iterator[np.ndarray] | None" = iter(source_frames) if source_frames is not None else None
    writer = VideoWriter(out, fps)
    sbs = VideoWriter(side_by_side_out, fps) if side_by_side_out else None
    t_render = 0.0
    bar = tqdm(total=n, desc=desc, unit="frame", disable=not progress, dynamic_ncols=True)
    try:
        for s in range(0, n, batch_size):
            batch = torch.from_numpy(grid[s:s + batch_size]).to(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                img = render(batch, tuple(size))
            t_render += time.perf_counter() - t0
            if tuple(img.shape) != (len(batch), 3, *size):
                raise PosesynthError(f"the generator returned {tuple(img.shape)}, expected {(len(batch), 3, *size)}")
            frames = tensor_to_image(img)
            writer.write_batch(frames)
            if sbs is not None:
                skel = stick_figure_images(grid[s:s + batch_size], layout, tuple(size))
                for i in range(len(frames)):
                    panels = [skel[i], frames[i]]
                    if src_iter is not None:
                        try:
                            panels.insert(0, next(src_iter))
                        except StopIteration:
                            raise PosesynthError(f"the source has fewer frames than its {n} skeletons") from None
                    sbs.write(side_by_side(panels, size[0]))
            bar.update(len(frames))
        result = {"video": writer.close(), "side_by_side": sbs.close() if sbs is not None else None, "frames": n,
                  "seconds_per_frame": t_render / n}
    except BaseException:
        writer.abort()
        if sbs is not None:
            sbs.abort()
        raise
    finally:
        bar.close()
    return result


# ---- sources and the whole transfer ------------------------------------------------------
@dataclass
class SourceSequence:
    """A source's poses and (lazily) its frames.

    Attributes:
        keypoints: ``(N, P, K, 3)`` in pixels of ``frame_size`` frames, in ``layout``.
        frame_size: ``(H, W)``.
        fps: frames per second of the sequence.
        layout: the keypoints' layout.
        frames: a callable returning a fresh iterator over the ``N`` RGB frames (``None``
            when there are no images).
        name: for messages.
        fps_from: where ``fps`` came from (``--fps``, the video, the dataset's ``videos`` list),
            or ``""`` when nothing said and the default was used.
    """

    keypoints: np.ndarray
    frame_size: tuple[int, int]
    fps: float
    layout: KeypointLayout
    frames: "Callable[[], Iterator[np.ndarray]] | None" = None
    name: str = "source"
    fps_from: str = "--fps"


def load_sequence(path: "str | Path", layout: "KeypointLayout | None" = None, detector: str = "mediapipe",
                  every: int = 1, fps: "float | None" = None, device: str = "cpu", progress: bool = True
                  ) -> SourceSequence:
    """A source for :func:`transfer_sequence`: a video (people detected with ``detector``; see
    :func:`~posesynth.posenet.detectors.make_detector`) or a keypoint dataset that
    :func:`~posesynth.datasets.formats.open_dataset` reads (COCO with ``frame_id`` entries,
    in frame order; BlazePose JSON beside its video).

    ``layout``: convert the keypoints to it (e.g. the generator's); ``fps``: override the
    frame rate (default: a video's divided by ``every``; a dataset's recorded rate, see
    :func:`~posesynth.datasets.formats.recorded_frame_rate`; else :data:`DEFAULT_FPS`, and
    ``fps_from`` is ``""``).
    """
    from ..datasets.convert import convert_keypoints
    from ..datasets.formats import VIDEO_EXTS, open_dataset, recorded_frame_rate

    p = Path(path)
    if p.suffix.lower() in VIDEO_EXTS + (".m4v",):
        from ..posenet.detectors import make_detector

        info = probe_video(p)
        det = make_detector(detector, device=device, max_people=1, every=every)
        kps = []
        try:
            total = -(-info.frame_count // every) if info.frame_count else None
            for _, rgb in tqdm(read_frames(p, every), total=total, desc=f"detect ({detector})", unit="frame",
                               disable=not progress, dynamic_ncols=True):
                kps.append(det([rgb])[0].keypoints)
        finally:
            det.close()
        kp = pad_people(kps, num_keypoints=det.layout.num_keypoints)
        src_layout = det.layout
        if layout is not None and layout.keypoints != src_layout.keypoints:
            kp = convert_keypoints(kp, src_layout, layout)
            src_layout = layout
        rate, where = (fps, "--fps") if fps else ((info.fps / every, f"the video {p.name}") if info.fps
                                                  else (DEFAULT_FPS, ""))
        return SourceSequence(kp, info.size, rate, src_layout, lambda: (f for _, f in read_frames(p, every)), str(p),
                              where)
    ds = open_dataset(p, layout=layout)
    n = len(ds)
    if n == 0:
        raise PosesynthError(f"{p}: no frames")
    order = list(range(n))
    entries = getattr(ds, "entries", None)
    if entries is not None and all("frame_id" in e.image for e in entries):
        order.sort(key=lambda i: entries[i].image["frame_id"])
    samples = [ds[i] for i in order]
    sizes = {s.image.shape[:2] for s in samples}
    if len(sizes) != 1:
        raise PosesynthError(f"{p}: frames of different sizes {sorted(sizes)}; a sequence needs one frame size")
    rate, where = (fps, "--fps") if fps else recorded_frame_rate(ds)
    kp = pad_people([s.keypoints for s in samples], num_keypoints=ds.layout.num_keypoints)
    return SourceSequence(kp, sizes.pop(), rate or DEFAULT_FPS, ds.layout, lambda: (ds[i].image for i in order),
                          str(p), where if rate else "")


def transfer_sequence(render: RenderFn, source: SourceSequence, target: PoseStats, size: tuple[int, int],
                      out: "str | Path", side_by_side_out: "str | Path | None" = None, mirror: bool = False,
                      speed: float = 1.0, normalise: bool = True, batch_size: int = 8,
                      device: "str | torch.device" = "cpu", progress: bool = True, fit: str = "stretch",
                      extra: "np.ndarray | None" = None) -> dict[str, Any]:
    """Make the target person perform the source's moves.

    The source sequence (followed by ``extra`` poses, if any) is retimed (``speed``), mirrored
    (in its own frame), placed in the target's frame by :class:`GlobalPoseNormalizer`
    (unless ``normalise`` is off: then the source's own frame is used), brought to the
    generator's ``size`` as the generator's training frames were (``fit``: ``stretch`` or
    ``letterbox``, :func:`~posesynth.datasets.transforms.fit_matrix`), and rendered by
    :func:`render_sequence` (frames written at ``source.fps``).

    Args:
        extra: ``(M, P, K, 3)`` poses in the source's frame that continue it (e.g. its motion
            continued by a motion model); the source's statistics are taken from its own
            poses only, and the side-by-side shows a black frame beside them.

    Returns :func:`render_sequence`'s result plus ``"source_stats"``, ``"target_stats"``.
    """
    from ..datasets.transforms import fit_matrix

    n_src = len(source.keypoints)
    seq = source.keypoints
    if extra is not None and len(extra):
        seq = pad_people([*np.asarray(source.keypoints, np.float32), *np.asarray(extra, np.float32)],
                         num_keypoints=source.layout.num_keypoints)
    kp, near = retime_sequence(seq, speed)
    if mirror:
        kp = mirror_sequence(kp, source.layout, source.frame_size[1])
    if normalise:
        s_stats = pose_stats(kp[near < n_src], source.layout, source.frame_size, anchor=target.anchor,
                             source=source.name)
        kp = GlobalPoseNormalizer(s_stats, target, source.layout)(kp)
        frame = tuple(target.frame_size)
    else:
        s_stats = None
        frame = tuple(source.frame_size)
    m = fit_matrix(frame, tuple(size), fit)
    kp = kp.copy()
    kp[..., :2] = kp[..., :2] @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    frames = None
    if side_by_side_out is not None and source.frames is not None:
        frames = _retimed_frames(source.frames(), near, mirror, n_src, source.frame_size)
    res = render_sequence(render, kp, source.layout, tuple(size), size, out, source.fps, frames, side_by_side_out,
                          batch_size, device, progress)
    res["source_stats"] = s_stats.to_dict() if s_stats is not None else None
    res["target_stats"] = target.to_dict()
    res["continued_frames"] = int((near >= n_src).sum())
    return res


def _retimed_frames(frames: Iterator[np.ndarray], near: np.ndarray, mirror: bool, n_src: "int | None" = None,
                    frame_size: "tuple[int, int] | None" = None) -> Iterator[np.ndarray]:
    """The source frames at indices ``near`` (non-decreasing), read in one pass; a black
    ``frame_size`` frame for indices from ``n_src`` on (poses that have no source frame)."""
    cur, idx = None, -1
    for j in near:
        if n_src is not None and j >= n_src:
            yield np.zeros((*frame_size, 3), np.uint8)
            continue
        while idx < j:
            try:
                cur = next(frames)
            except StopIteration:
                raise PosesynthError(f"the source has fewer frames ({idx + 1}) than its skeletons") from None
            idx += 1
        yield np.ascontiguousarray(cur[:, ::-1]) if mirror else cur


def side_by_side_path(out: "str | Path") -> Path:
    """The side-by-side video's default name beside ``out``: ``NAME_side_by_side.mp4``."""
    out = Path(out)
    return out.with_name(out.stem + "_side_by_side" + (out.suffix or ".mp4"))


def transfer_from_run(gan: "str | Path", source: "str | Path", out: "str | Path",
                      side_by_side_out: "str | Path | None" = "auto", mirror: bool = False, speed: float = 1.0,
                      motion: "str | Path | None" = None, motion_steps: int = 0, seed: int = 0,
                      normalise: bool = True, detector: str = "mediapipe", every: int = 1,
                      fps: "float | None" = None, batch_size: int = 8, device: str = "cpu",
                      progress: bool = True) -> dict[str, Any]:
    """``posesynth transfer``: the person of the GAN run ``gan`` (any arch, full mode) performs
    the moves of ``source`` (a video, whose people ``detector`` finds, or a keypoint dataset).

    The run's training frames give the target's :class:`PoseStats` (recorded in its
    checkpoint, ``meta["target"]``) and the fit of a frame to the generator (``meta["fit"]``).
    With ``motion`` (a ``train-motion`` run), the source's motion is continued for
    ``motion_steps`` more frames (0: as many as the source has) by
    :func:`posesynth.augment.motion.sampler.continue_motion` with noise seeded by ``seed``.
    ``side_by_side_out``: ``"auto"`` (:func:`side_by_side_path`), a path, or ``None``.

    Returns :func:`transfer_sequence`'s result, with ``"fps"`` (the frame rate written: the
    source's, see :func:`load_sequence`) and ``"fps_from"`` (where it came from; ``""``: the
    source records none and :data:`DEFAULT_FPS` was used).
    """
    from ..spade.load import load_render

    render, layout, meta = load_render(gan, device)
    size = tuple(int(v) for v in meta["generator"]["size"])
    target = meta.get("target")
    if normalise and not target:
        raise PosesynthError(f"{gan}: the run records no pose statistics of its target person (trained before they "
                             "were recorded, or on frames of different sizes); use --no-normalise to place the "
                             "source's poses as they are")
    seq = load_sequence(source, layout=layout, detector=detector, every=every, fps=fps, device=device,
                        progress=progress)
    if len(seq.keypoints) == 0:
        raise PosesynthError(f"{source}: no frames")
    extra = None
    if motion:
        try:
            from .motion.sampler import continue_motion
        except ImportError as e:  # the motion model is another part of posesynth
            raise PosesynthError(f"--motion needs posesynth's motion model (posesynth.augment.motion), which "
                                 f"this installation lacks ({e})") from None
        steps = motion_steps or len(seq.keypoints)
        cont = continue_motion(motion, seq.keypoints[:, 0], steps, np.random.default_rng(seed), layout=seq.layout,
                               size=seq.frame_size, device=device)
        extra = np.zeros((steps, seq.keypoints.shape[1], seq.layout.num_keypoints, 3), np.float32)
        extra[:, 0] = cont
    if side_by_side_out == "auto":
        side_by_side_out = side_by_side_path(out)
    stats = PoseStats.from_dict(target) if target else pose_stats(seq.keypoints, seq.layout, seq.frame_size)
    res = transfer_sequence(render, seq, stats, size, out, side_by_side_out, mirror, speed, normalise, batch_size,
                            device, progress, fit=meta.get("fit", "letterbox"), extra=extra)
    res["fps"], res["fps_from"] = seq.fps, seq.fps_from
    return res
