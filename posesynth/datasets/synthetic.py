"""Procedurally drawn in-vehicle driver scenes with exact labels (the embedded default dataset).

A camera on the dashboard faces a seated driver: the driver's right side appears on the
left of the image.  Each scene has a cabin background (seat and headrest, side window,
B-pillar, headliner, steering-wheel rim) with varied colours, textures, lighting and sensor
noise; a driver's upper body (head, neck, torso, two shaded arms with hands) in a sampled,
anatomically plausible pose; a seatbelt band from the left shoulder to the right hip, whose
visible pixels form the ``seatbelt`` mask; and sometimes a passenger at the image edge.

Labels are exact: keypoints are the joint centres used to draw the body, visibility 2
where the joint is seen, 1 where the steering-wheel rim covers it, 0 outside the image.

Arm poses come from ``pose_range``:
- ``narrow``: driving posture, hands near the wheel (upper arm 0-30 deg outward from
  hanging, elbow flexed 30-75 deg towards the body);
- ``wide``: any plausible arm pose (upper arm from -20 deg across the body to 170 deg
  raised, elbow flexion 0-150 deg), so a held-out set can hold poses that are rare in a
  ``narrow`` training set.

A passenger (``passenger_prob``) uses its own ``passenger_pose_range``, by default the
driver's, so a ``narrow`` split holds no wide arms.

Every scene is a pure function of ``(seed, index)``: :func:`render_scene` takes its own
``numpy.random.Generator``.  The same scene can be redrawn with other keypoints
(``keypoints=``): background, colours, body, lighting and noise stay, and the arms are drawn
where the keypoints say.  That gives a true image for every perturbed pose
(:func:`redraw_scene`, from the ``scene`` provenance :mod:`make_data` records per image).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import cv2
import numpy as np

from .layouts import DRIVER9
from .sample import Sample

__all__ = ["render_scene", "scene_rng", "POSE_RANGES", "PoseRange", "SceneSpec", "redraw_scene"]

PoseRange = Literal["narrow", "wide"]
# (upper-arm angle from hanging, outward positive; elbow flexion towards the body), degrees
POSE_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "narrow": ((0.0, 30.0), (30.0, 75.0)),
    "wide": ((-20.0, 170.0), (0.0, 150.0)),
}
_IDX = {n: i for i, n in enumerate(DRIVER9.keypoints)}


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of a dataset with ``seed`` (independent streams)."""
    return np.random.default_rng([int(seed), int(index)])


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines one synthetic scene; recorded per image by ``make-data``
    (image entry ``posesynth.scene``) so the scene can be redrawn."""

    seed: int
    index: int
    size: int = 384
    pose_range: str = "narrow"
    passenger_prob: float = 0.3
    passenger_pose_range: "str | None" = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SceneSpec":
        return cls(**{k: d[k] for k in ("seed", "index", "size", "pose_range", "passenger_prob",
                                         "passenger_pose_range") if k in d})

    def render(self, keypoints: "np.ndarray | None" = None, with_arm_mask: bool = False) -> Sample:
        return render_scene(scene_rng(self.seed, self.index), self.size, self.pose_range, self.passenger_prob,
                            keypoints=keypoints, passenger_pose_range=self.passenger_pose_range,
                            with_arm_mask=with_arm_mask)


def redraw_scene(scene: "SceneSpec | dict[str, Any]", keypoints: np.ndarray, with_arm_mask: bool = False) -> Sample:
    """The scene ``scene`` drawn with ``keypoints`` ``(P, 9, 3)`` (people in label order) instead
    of its own: the true image of a perturbed pose, at the scene's own size."""
    spec = scene if isinstance(scene, SceneSpec) else SceneSpec.from_dict(scene)
    return spec.render(keypoints, with_arm_mask)


@dataclass
class _Person:
    kp: np.ndarray            # (9, 2) float, driver9 order
    head: tuple[float, float, float, float]   # cx, cy, rx, ry
    torso: np.ndarray         # (N, 2) polygon
    arm_t: float              # arm thickness (px)
    shirt: tuple
    sleeve: tuple
    skin: tuple
    hair: tuple
    belt: tuple
    belt_from_left: bool      # belt from left shoulder to right hip (driver) or mirrored


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _colour(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


_SKINS = np.array([[255, 224, 196], [234, 192, 160], [198, 150, 110], [160, 110, 75], [110, 75, 50]])


def _sample_person(rng: np.random.Generator, size: int, cx: float, scale: float,
                   pose_range: str, belt_from_left: bool) -> _Person:
    s = size * scale
    neck = np.array([cx, size * rng.uniform(0.30, 0.40) + (1 - scale) * size * 0.1])
    sw = s * rng.uniform(0.14, 0.18)                     # shoulder half-width
    th = s * rng.uniform(0.40, 0.48)                     # neck-to-hip height
    lean = rng.uniform(-7, 7)
    kp = np.zeros((9, 2))
    kp[_IDX["neck"]] = neck
    drop = sw * rng.uniform(0.12, 0.22)
    kp[_IDX["right_shoulder"]] = neck + _rot(np.array([-sw, drop]), lean)
    kp[_IDX["left_shoulder"]] = neck + _rot(np.array([sw, drop]), lean)
    hw = sw * rng.uniform(0.65, 0.8)
    kp[_IDX["right_hip"]] = neck + _rot(np.array([-hw, th]), lean)
    kp[_IDX["left_hip"]] = neck + _rot(np.array([hw, th]), lean)
    (u_lo, u_hi), (f_lo, f_hi) = POSE_RANGES[pose_range]
    upper = th * rng.uniform(0.55, 0.68)
    fore = upper * rng.uniform(0.85, 1.0)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        sh = kp[_IDX[f"{side}_shoulder"]]
        a_up = rng.uniform(u_lo, u_hi)
        flex = rng.uniform(f_lo, f_hi)
        down = np.array([0.0, 1.0])
        # outward = away from the body: -x for the right arm (image left), +x for the left
        d_up = _rot(down, -sign * a_up + lean)
        d_fore = _rot(d_up, sign * flex)             # flex towards the body
        elbow = sh + upper * d_up
        wrist = elbow + fore * d_fore
        kp[_IDX[f"{side}_elbow"]] = elbow
        kp[_IDX[f"{side}_wrist"]] = wrist
    head_r = sw * rng.uniform(0.55, 0.68)
    head_c = neck + _rot(np.array([rng.uniform(-0.15, 0.15) * head_r, -head_r * 1.55]), lean)
    r_sh, l_sh = kp[_IDX["right_shoulder"]], kp[_IDX["left_shoulder"]]
    r_hip, l_hip = kp[_IDX["right_hip"]], kp[_IDX["left_hip"]]
    down_v = _rot(np.array([0.0, 1.0]), lean)
    out_v = _rot(np.array([1.0, 0.0]), lean)
    arm_t = sw * rng.uniform(0.38, 0.5)
    torso = np.array([
        r_sh - out_v * arm_t * 0.35 - down_v * arm_t * 0.3, l_sh + out_v * arm_t * 0.35 - down_v * arm_t * 0.3,
        l_hip + out_v * sw * 0.25 + down_v * th * 0.25, r_hip - out_v * sw * 0.25 + down_v * th * 0.25])
    skin = tuple(int(c) for c in np.clip(_SKINS[rng.integers(len(_SKINS))] + rng.integers(-15, 16, 3), 0, 255))
    shirt = _colour(rng, 20, 235)
    sleeve = shirt if rng.random() < 0.6 else skin
    return _Person(kp, (float(head_c[0]), float(head_c[1]), head_r, head_r * rng.uniform(1.1, 1.25)),
                   torso, float(arm_t), shirt, sleeve, skin, _colour(rng, 10, 90),
                   _colour(rng, 15, 70) if rng.random() < 0.8 else _colour(rng, 120, 200), belt_from_left)


def _shade(c: tuple, f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)


def _pt(p: np.ndarray, sh: int) -> tuple[int, int]:
    return int(round(p[0] * (1 << sh))), int(round(p[1] * (1 << sh)))


_SH = 4  # sub-pixel bits for cv2 drawing


def _limb(img: np.ndarray, a: np.ndarray, b: np.ndarray, t: float, c: tuple) -> None:
    ti = max(int(round(t)), 1)
    cv2.line(img, _pt(a, _SH), _pt(b, _SH), _shade(c, 0.7), ti, cv2.LINE_AA, _SH)
    cv2.line(img, _pt(a, _SH), _pt(b, _SH), c, max(int(round(t * 0.7)), 1), cv2.LINE_AA, _SH)
    off = np.array([-0.15, -0.15]) * t
    cv2.line(img, _pt(a + off, _SH), _pt(b + off, _SH), _shade(c, 1.15), max(int(round(t * 0.25)), 1),
             cv2.LINE_AA, _SH)


def _belt_ends(p: _Person) -> tuple[np.ndarray, np.ndarray]:
    k = p.kp
    if p.belt_from_left:
        top, bottom = k[_IDX["left_shoulder"]], k[_IDX["right_hip"]]
    else:
        top, bottom = k[_IDX["right_shoulder"]], k[_IDX["left_hip"]]
    neck = k[_IDX["neck"]]
    top = top + (neck - top) * 0.2           # on the shoulder, a little towards the neck
    return top, bottom


def _draw_person(img: np.ndarray, belt_mask: np.ndarray, p: _Person) -> None:
    k = p.kp
    cv2.fillConvexPoly(img, np.round(p.torso * (1 << _SH)).astype(np.int32), p.shirt, cv2.LINE_AA, _SH)
    # shading down the torso's centre line
    neck = k[_IDX["neck"]]
    mid_hip = (k[_IDX["left_hip"]] + k[_IDX["right_hip"]]) / 2
    _limb(img, neck, mid_hip, p.arm_t * 0.6, _shade(p.shirt, 0.92))
    cv2.circle(img, _pt(k[_IDX["right_shoulder"]], _SH), int(p.arm_t * 0.6 * (1 << _SH)), p.shirt, -1, cv2.LINE_AA, _SH)
    cv2.circle(img, _pt(k[_IDX["left_shoulder"]], _SH), int(p.arm_t * 0.6 * (1 << _SH)), p.shirt, -1, cv2.LINE_AA, _SH)
    # seatbelt band over the torso
    top, bottom = _belt_ends(p)
    bt = max(int(round(p.arm_t * 0.55)), 2)
    cv2.line(img, _pt(top, _SH), _pt(bottom, _SH), p.belt, bt, cv2.LINE_AA, _SH)
    cv2.line(belt_mask, _pt(top, _SH), _pt(bottom, _SH), 1, bt, cv2.LINE_8, _SH)
    # neck and head
    hc = np.array(p.head[:2])
    _limb(img, neck, neck + (hc - neck) * 0.55, p.arm_t * 0.9, p.skin)
    cv2.ellipse(img, _pt(hc, _SH), (int(p.head[2] * (1 << _SH)), int(p.head[3] * (1 << _SH))), 0, 0, 360,
                p.skin, -1, cv2.LINE_AA, _SH)
    cv2.ellipse(img, _pt(hc - np.array([0, p.head[3] * 0.25]), _SH),
                (int(p.head[2] * 1.05 * (1 << _SH)), int(p.head[3] * 0.8 * (1 << _SH))), 0, 180, 360, p.hair, -1,
                cv2.LINE_AA, _SH)


def _draw_arms(img: np.ndarray, belt_mask: np.ndarray, p: _Person, arm_mask: "np.ndarray | None" = None) -> None:
    k = p.kp
    for side in ("right", "left"):
        sh, el, wr = (k[_IDX[f"{side}_{j}"]] for j in ("shoulder", "elbow", "wrist"))
        if arm_mask is not None:  # the arm's pixels, drawn as on the image
            cv2.line(arm_mask, _pt(sh, _SH), _pt(el, _SH), 1, max(int(round(p.arm_t)), 1), cv2.LINE_8, _SH)
            cv2.circle(arm_mask, _pt(el, _SH), int(p.arm_t * 0.45 * (1 << _SH)), 1, -1, cv2.LINE_8, _SH)
            cv2.line(arm_mask, _pt(el, _SH), _pt(wr, _SH), 1, max(int(round(p.arm_t * 0.85)), 1), cv2.LINE_8, _SH)
            cv2.circle(arm_mask, _pt(wr, _SH), int(p.arm_t * 0.6 * (1 << _SH)), 1, -1, cv2.LINE_8, _SH)
        _limb(img, sh, el, p.arm_t, p.sleeve)
        cv2.circle(img, _pt(el, _SH), int(p.arm_t * 0.45 * (1 << _SH)), _shade(p.sleeve, 0.95), -1, cv2.LINE_AA, _SH)
        _limb(img, el, wr, p.arm_t * 0.85, p.skin)
        cv2.circle(img, _pt(wr, _SH), int(p.arm_t * 0.6 * (1 << _SH)), _shade(p.skin, 0.95), -1, cv2.LINE_AA, _SH)
        # the arm hides the belt behind it
        t = max(int(round(p.arm_t)), 1)
        cv2.line(belt_mask, _pt(sh, _SH), _pt(el, _SH), 0, t, cv2.LINE_8, _SH)
        cv2.line(belt_mask, _pt(el, _SH), _pt(wr, _SH), 0, max(int(round(p.arm_t * 0.85)), 1), cv2.LINE_8, _SH)
        cv2.circle(belt_mask, _pt(wr, _SH), int(p.arm_t * 0.6 * (1 << _SH)), 0, -1, cv2.LINE_8, _SH)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    small = rng.standard_normal((cells, cells, channels), dtype=np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    s = size
    night = rng.random() < 0.2
    cabin = np.array(_colour(rng, 25, 120), np.float32)
    grad = np.linspace(1.15, 0.75, s, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(cabin * grad, (s, s, 3)).copy()
    # side window(s) with sky / street
    sky = np.array(_colour(rng, 20, 60) if night else _colour(rng, 150, 250), np.float32)
    side = rng.integers(0, 3)  # 0 left, 1 right, 2 both
    for x_left in ([0] if side == 0 else [1] if side == 1 else [0, 1]):
        x0, x1 = (0, rng.uniform(0.18, 0.32) * s) if x_left == 0 else (s - rng.uniform(0.18, 0.32) * s, s)
        y0, y1 = rng.uniform(0.05, 0.15) * s, rng.uniform(0.45, 0.6) * s
        poly = np.array([[x0, y0 + 10], [x1, y0], [x1, y1], [x0, y1 + 20]], np.float32)
        win = np.zeros((s, s), np.uint8)
        cv2.fillConvexPoly(win, poly.astype(np.int32), 1, cv2.LINE_AA)
        streak = np.linspace(1.0, 0.7, s, dtype=np.float32)[:, None, None]
        img = np.where(win[..., None] > 0, sky * streak, img)
    img = img.astype(np.float32)
    # headliner
    img[: int(rng.uniform(0.03, 0.08) * s)] = np.array(_colour(rng, 120, 220), np.float32) * (0.4 if night else 1)
    # B-pillar
    bx = int(rng.uniform(0.05, 0.95) * s)
    cv2.rectangle(img, (bx, 0), (bx + int(0.04 * s), s), tuple(float(c) for c in _colour(rng, 30, 110)), -1)
    # seat back and headrest
    seat = tuple(float(c) for c in _colour(rng, 15, 160))
    scx = rng.uniform(0.42, 0.58) * s
    cv2.rectangle(img, (int(scx - 0.27 * s), int(0.3 * s)), (int(scx + 0.27 * s), s), seat, -1, cv2.LINE_AA)
    cv2.ellipse(img, (int(scx), int(0.2 * s)), (int(0.12 * s), int(0.08 * s)), 0, 0, 360, seat, -1, cv2.LINE_AA)
    tex = _smooth_noise(rng, s, int(rng.integers(12, 48)), 1) * rng.uniform(4, 14)
    img += tex
    return img, {"night": night, "seat_cx": scx}


def _wheel(rng: np.random.Generator, size: int, cx: float) -> tuple[tuple, tuple, int, tuple]:
    s = size
    centre = (int(cx + rng.uniform(-0.05, 0.05) * s), int(rng.uniform(0.95, 1.1) * s))
    axes = (int(rng.uniform(0.28, 0.36) * s), int(rng.uniform(0.14, 0.2) * s))
    return centre, axes, max(int(rng.uniform(0.03, 0.045) * s), 2), _colour(rng, 10, 50)


def render_scene(rng: np.random.Generator, size: int = 384, pose_range: PoseRange = "narrow",
                 passenger_prob: float = 0.3, draw_people: bool = True, keypoints: "np.ndarray | None" = None,
                 passenger_pose_range: "PoseRange | None" = None, with_arm_mask: bool = False) -> Sample:
    """Draw one scene.

    Args:
        rng: the scene's generator (see :func:`scene_rng`); the scene is a pure function of it.
        size: output width and height in pixels.
        pose_range: ``"narrow"`` or ``"wide"`` arm-pose distribution of the driver.
        passenger_prob: probability of a second person at the image edge.
        draw_people: ``False`` draws the same scene without people (the labels stay), so
            tests can check that labelled keypoints lie on the drawn body.
        keypoints: optional ``(P, 9, 3)`` keypoints in the order the scene labels its people
            (passenger first when there is one): every labelled point (``v > 0``) that differs
            from the sampled one by more than 1e-3 px replaces it before drawing.  Everything
            else (and every random draw) stays, so the own keypoints redraw the scene
            byte for byte and perturbed ones give its true image.
        passenger_pose_range: the passenger's arm-pose distribution (default: ``pose_range``).
        with_arm_mask: also return ``meta["arm_mask"]``, ``(size, size)`` uint8, 1 on every
            pixel drawn by an arm or hand.

    Returns:
        A :class:`Sample` in the ``driver9`` layout: image ``(size, size, 3)`` uint8,
        keypoints ``(P, 9, 3)`` (driver last), masks ``(1, size, size)`` (seatbelt).
    """
    passenger_pose_range = passenger_pose_range or pose_range
    for pr in (pose_range, passenger_pose_range):
        if pr not in POSE_RANGES:
            raise ValueError(f"pose_range must be one of {sorted(POSE_RANGES)}, not {pr!r}")
    img, bg = _background(rng, size)
    driver = _sample_person(rng, size, bg["seat_cx"] + rng.uniform(-0.04, 0.04) * size,
                            rng.uniform(0.9, 1.1), pose_range, True)
    people = [driver]
    if rng.random() < passenger_prob:
        on_left = rng.random() < 0.5
        px = size * (rng.uniform(-0.02, 0.1) if on_left else rng.uniform(0.9, 1.02))
        people.insert(0, _sample_person(rng, size, px, rng.uniform(0.7, 0.85), passenger_pose_range, not on_left))
    if keypoints is not None:
        kp_new = np.asarray(keypoints, np.float64).reshape(-1, 9, 3)
        if len(kp_new) != len(people):
            raise ValueError(f"the scene has {len(people)} people, {len(kp_new)} keypoint sets were given")
        for p, k in zip(people, kp_new):
            change = (k[:, 2] > 0) & (np.abs(k[:, :2] - p.kp).max(1) > 1e-3)
            p.kp = np.where(change[:, None], k[:, :2], p.kp)
    wheel = _wheel(rng, size, driver.kp[_IDX["neck"], 0])
    light_dir = rng.uniform(0, 2 * np.pi)
    light_amp = rng.uniform(0.1, 0.35)
    gain = rng.uniform(0.6, 1.2) * (0.6 if bg["night"] else 1.0)
    noise_sigma = rng.uniform(2, 9)
    noise_seed = int(rng.integers(2**31))
    blur = rng.random() < 0.25

    belt = np.zeros((size, size), np.uint8)
    arm_mask = np.zeros((size, size), np.uint8) if with_arm_mask else None
    wheel_mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(wheel_mask, wheel[0], wheel[1], 0, 180, 360, 1, wheel[2])
    if draw_people:
        canvas = np.clip(img, 0, 255).astype(np.uint8)
        for p in people:
            _draw_person(canvas, belt, p)
        cv2.ellipse(canvas, wheel[0], wheel[1], 0, 180, 360, wheel[3], wheel[2], cv2.LINE_AA)
        belt[wheel_mask > 0] = 0
        for p in people:
            _draw_arms(canvas, belt, p, arm_mask)
        img = canvas.astype(np.float32)
    else:
        canvas = np.clip(img, 0, 255).astype(np.uint8)
        cv2.ellipse(canvas, wheel[0], wheel[1], 0, 180, 360, wheel[3], wheel[2], cv2.LINE_AA)
        img = canvas.astype(np.float32)
        for p in people:  # labels are the same as with people drawn
            _draw_person(np.zeros_like(canvas), belt, p)
        belt[wheel_mask > 0] = 0
        for p in people:
            _draw_arms(np.zeros_like(canvas), belt, p)

    # lighting: a directional gradient and a vignette
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    light = gain * (1 + light_amp * (np.cos(light_dir) * xx + np.sin(light_dir) * yy) * 2)
    light *= 1 - 0.35 * (xx ** 2 + yy ** 2)
    img *= light[..., None]
    if blur:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    nrng = np.random.default_rng(noise_seed)
    img += nrng.standard_normal(img.shape, dtype=np.float32) * noise_sigma
    image = np.clip(img, 0, 255).astype(np.uint8)

    kps = np.zeros((len(people), 9, 3), np.float32)
    boxes = []
    for i, p in enumerate(people):
        xy = p.kp
        inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= size - 1) & (xy[:, 1] <= size - 1)
        ix = np.clip(np.round(xy).astype(int), 0, size - 1)
        hidden = wheel_mask[ix[:, 1], ix[:, 0]] > 0
        hidden &= ~np.isin(np.arange(9), [_IDX[n] for n in ("right_elbow", "right_wrist", "left_elbow", "left_wrist")])
        kps[i, :, :2] = np.where(inside[:, None], xy, 0.0)
        kps[i, :, 2] = np.where(inside, np.where(hidden, 1.0, 2.0), 0.0)
        pts = np.concatenate([xy, p.torso, [[p.head[0], p.head[1] - p.head[3]]]])
        lo = np.clip(pts.min(0) - p.arm_t * 0.6, 0, size - 1)
        hi = np.clip(pts.max(0) + p.arm_t * 0.6, 0, size - 1)
        boxes.append([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])
    meta: dict[str, Any] = {"bboxes": np.asarray(boxes, np.float32)}
    if arm_mask is not None:
        meta["arm_mask"] = arm_mask
    return Sample(image, kps, belt[None].copy(), meta=meta)
