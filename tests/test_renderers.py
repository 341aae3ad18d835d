"""Renderers, arm geometry and plausible perturbations (issue 9)."""
import numpy as np
import pytest
import torch

from posesynth.augment.perturb import MODES, ArmAngleHistogram, PerturbConfig, Perturber, perturb_keypoints, plausible_arms
from posesynth.augment.renderers import GANRenderer, WarpRenderer, change_region
from posesynth.datasets.geometry import RegionSpec, arm_angles, arm_chains, arm_from_angles, body_frame, moved_limb_cover
from posesynth.datasets.layouts import COCO17, DRIVER9
from posesynth.datasets.posemaps import (PoseMapSpec, render_heatmaps, render_heatmaps_torch, render_pafs,
                                         render_pafs_torch)
from posesynth.datasets.synthetic import SceneSpec, render_scene, scene_rng
from posesynth.datasets.torch_dataset import image_to_tensor


def test_redraw_with_own_keypoints_is_byte_identical():
    for i in range(12):
        spec = SceneSpec(3, i, 96, "wide" if i % 2 else "narrow", 0.5)
        a = spec.render()
        b = spec.render(a.keypoints)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks), i
        assert np.array_equal(a.keypoints, b.keypoints)


def test_redraw_moves_the_arm_and_nothing_else():
    spec = SceneSpec(4, 1, 128, "narrow", 0.0)
    a = spec.render(with_arm_mask=True)
    kp = a.keypoints.copy()
    e, w = DRIVER9.index("left_elbow"), DRIVER9.index("left_wrist")
    kp[0, [e, w], 0] += 12
    b = spec.render(kp, with_arm_mask=True)
    import cv2

    changed = np.abs(a.image.astype(int) - b.image).max(-1) > 0
    arms = ((a.meta["arm_mask"] > 0) | (b.meta["arm_mask"] > 0)).astype(np.uint8)
    near = cv2.dilate(arms, np.ones((5, 5), np.uint8)) > 0   # anti-aliased edges and the optional blur
    assert changed.sum() > 50 and not (changed & ~near).any()   # only pixels at the old or new arm change


def test_angles_round_trip_and_synthetic_ranges():
    rng = np.random.default_rng(0)
    down, out = np.array([0.0, 1.0]), np.array([-1.0, 0.0])   # a right arm, person facing the camera
    abd, flex = rng.uniform(-30, 175, 50), rng.uniform(0, 150, 50)
    e, w = arm_from_angles(np.array([50.0, 40.0]), abd, flex, 20.0, 18.0, down, out)
    a2, f2 = arm_angles(np.array([50.0, 40.0]), e, w, down, out)
    np.testing.assert_allclose(a2, abd, atol=1e-6)
    np.testing.assert_allclose(f2, flex, atol=1e-6)
    # the scene generator's own wide poses: abduction in [-20, 170], flexion in [0, 150]
    for i in range(40):
        kp = render_scene(scene_rng(7, i), 256, "wide", 0.0).keypoints[0].astype(np.float64)
        top, dn, across = body_frame(kp, DRIVER9)
        for (s, el, wr), side in zip(arm_chains(DRIVER9), (-1, 1)):
            if (kp[[s, el, wr], 2] <= 0).any():   # a joint outside the image is unlabelled
                continue
            a, f = arm_angles(kp[s, :2], kp[el, :2], kp[wr, :2], dn, side * across)
            assert -21 <= a <= 171 and -1 <= f <= 151


def _arm_changes(old, new):
    for p in range(len(old)):
        for j, (s, e, w) in enumerate(arm_chains(DRIVER9)):
            if np.abs(new[p, [e, w], :2] - old[p, [e, w], :2]).max() > 1e-4:
                yield p, j


def test_every_mode_draws_only_plausible_arms():
    kps = [render_scene(scene_rng(0, i), 128, "narrow", 0.3).keypoints for i in range(40)]
    cfg = PerturbConfig()
    # the test can fail: arms drawn as the old arms-high did (both directions over 360 deg)
    naive_bad = naive = 0
    rng = np.random.default_rng(1)
    for kp in kps:
        new = kp.copy()
        for s, e, w in arm_chains(DRIVER9):
            up, fo = np.linalg.norm(kp[:, e, :2] - kp[:, s, :2], axis=-1), np.linalg.norm(kp[:, w, :2] - kp[:, e, :2], axis=-1)
            t1, t2 = rng.uniform(0, 2 * np.pi, (2, len(kp)))
            new[:, e, :2] = kp[:, s, :2] + up[:, None] * np.stack([np.cos(t1), np.sin(t1)], 1)
            new[:, w, :2] = new[:, e, :2] + fo[:, None] * np.stack([np.cos(t2), np.sin(t2)], 1)
        ok = plausible_arms(new, DRIVER9, cfg)
        naive += ok.size
        naive_bad += (~ok).sum()
    assert naive_bad / naive > 0.3
    hist = ArmAngleHistogram.from_keypoints(kps, DRIVER9, cfg)
    for mode in MODES + ("rare",):
        pc = PerturbConfig("arms-angle", rare=True, histogram=hist) if mode == "rare" else PerturbConfig(mode)
        moved = bad = 0
        for i, kp in enumerate(kps):
            for r in range(5):
                new = perturb_keypoints(kp, DRIVER9, (128, 128), np.random.default_rng([i, r]), pc)
                ok = plausible_arms(new, DRIVER9, pc)
                for p, j in _arm_changes(kp, new):
                    moved += 1
                    bad += not ok[p, j]
        assert moved > 300, mode
        assert bad == 0, (mode, bad)


def test_rare_sampling_goes_where_data_is_thin():
    kps = [render_scene(scene_rng(0, i), 128, "narrow", 0.0).keypoints for i in range(60)]
    hist = ArmAngleHistogram.from_keypoints(kps, DRIVER9)
    abd, flex = hist.sample(np.random.default_rng(0), 4000)
    # narrow training poses: abduction 0-30, flexion 30-75; rare draws fall mostly elsewhere
    inside = (abd > 0) & (abd < 30) & (flex > 30) & (flex < 75)
    assert inside.mean() < 0.05


def test_poses_from_file_replace_the_arms(tmp_path):
    from posesynth.datasets.coco import write_coco

    a = render_scene(scene_rng(2, 0), 128, "narrow", 0.0)
    a.file_name = "000001.jpg"
    target = render_scene(scene_rng(2, 0), 128, "narrow", 0.0)
    kp = target.keypoints.copy()
    e, w = DRIVER9.index("right_elbow"), DRIVER9.index("right_wrist")
    s = DRIVER9.index("right_shoulder")
    # raise the right arm: horizontal, outward, straight
    kp[0, e, :2] = kp[0, s, :2] + [-20, 0]
    kp[0, w, :2] = kp[0, s, :2] + [-32, 0]
    target.keypoints = kp
    write_coco(tmp_path / "poses", [target], DRIVER9)
    per = Perturber(PerturbConfig(f"poses:{tmp_path / 'poses'}"), DRIVER9)
    new = per(a.keypoints, (128, 128), np.random.default_rng(0), "000001.jpg")
    np.testing.assert_allclose(new[0, [e, w], :2], kp[0, [e, w], :2], atol=1e-3)
    arms = [DRIVER9.index(f"{side}_{j}") for side in ("left", "right") for j in ("elbow", "wrist")]
    untouched = [i for i in range(9) if i not in arms]
    np.testing.assert_array_equal(new[0, untouched], a.keypoints[0, untouched])
    np.testing.assert_allclose(new[0, arms], kp[0, arms], atol=1e-3)   # the file's (rounded) arms
    same = per(a.keypoints, (128, 128), np.random.default_rng(0), "unknown.jpg")
    np.testing.assert_array_equal(same, a.keypoints)
    # training batches carry no file names: the mixer refuses poses:FILE rather than render unmoved arms
    from posesynth.augment.mixing import BatchMixer
    from posesynth.errors import ConfigError

    with pytest.raises(ConfigError, match="file name"):
        BatchMixer(DRIVER9, PoseMapSpec(size=(128, 128)), 0.5, "render", WarpRenderer(DRIVER9), per)


def test_torch_pose_maps_equal_numpy():
    ss = [render_scene(scene_rng(3, i), 96, "wide", 0.6) for i in range(4)]
    p = max(s.num_people for s in ss)
    kp = np.zeros((4, p, 9, 3), np.float32)
    for i, s in enumerate(ss):
        kp[i, :s.num_people] = s.keypoints
    for out in ((24, 24), (96, 96), (24, 40)):
        hn = np.stack([render_heatmaps(k, (96, 96), out, 7.0) for k in kp])
        pn = np.stack([render_pafs(k, DRIVER9.limbs, (96, 96), out, 8.0) for k in kp])
        np.testing.assert_allclose(render_heatmaps_torch(torch.from_numpy(kp), (96, 96), out, 7.0).numpy(), hn, atol=1e-5)
        np.testing.assert_allclose(render_pafs_torch(torch.from_numpy(kp), DRIVER9.limbs, (96, 96), out, 8.0).numpy(), pn,
                                   atol=1e-5)


def _scene_pair(i, size=128):
    spec = SceneSpec(0, i, size, "narrow", 0.0)
    s = spec.render(with_arm_mask=True)
    new = perturb_keypoints(s.keypoints, DRIVER9, (size, size), np.random.default_rng(i), PerturbConfig())
    return spec, s, new


def test_region_covers_old_and_new_limbs():
    spec, s, new = _scene_pair(1)
    gt = spec.render(new, with_arm_mask=True)
    region = change_region(s.keypoints[None], new[None], DRIVER9, (128, 128))[0, 0].numpy()
    moved = set(j for _, j in _arm_changes(s.keypoints, new))
    assert moved
    # every pixel of the old and the new drawn arms lies in M (the arms that did not move need not)
    old_arm, new_arm = s.meta["arm_mask"] > 0, gt.meta["arm_mask"] > 0
    changed = np.abs(s.image.astype(int) - gt.image).max(-1) > 0
    assert (region[changed & (old_arm | new_arm)] > 0).mean() > 0.99


def test_capsule_region_is_the_distance_ramp_everywhere():
    """Each pixel of the region is max over segments of clip((r + f - distance) / f, 0, 1), with
    distance to the segment, r = (radius + dilate) x torso and f = feather x torso (at least 1 px),
    computed here in float64 NumPy over the whole frame; segments near and beyond the frame's
    edges, NaN padding and images of a batch with capsules far apart included."""
    from posesynth.datasets.geometry import capsule_region

    rng = np.random.default_rng(3)
    h, w = 50, 70
    spec = RegionSpec()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    for _ in range(40):
        seg = rng.uniform(-20, 90, (3, 4, 2, 2)) * [w / 70, h / 50 * 0.75]
        torso = rng.uniform(5, 60, (3, 4))
        seg[rng.random((3, 4)) < 0.2] = np.nan
        got = capsule_region(torch.from_numpy(seg.astype(np.float32)), torch.from_numpy(torso.astype(np.float32)),
                             (h, w), spec)[:, 0].numpy()
        for i in range(3):
            want = np.zeros((h, w))
            for (a, b), t in zip(seg[i].astype(np.float32).astype(np.float64), torso[i]):
                if not np.isfinite(a).all():
                    continue
                d = b - a
                u = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
                dist = np.hypot(xs - a[0] - u * d[0], ys - a[1] - u * d[1])
                r, f = (spec.radius + spec.dilate) * t, max(spec.feather * t, 1.0)
                want = np.maximum(want, np.clip((r + f - dist) / f, 0, 1))
            np.testing.assert_allclose(got[i], want, atol=2e-4)


def test_dilation_in_the_box_is_the_whole_frames():
    """The warp dilates masks inside their box grown by the kernel only: the pixels are those
    of OpenCV's dilation of the whole frame, for blobs at the frame's edges and corners too."""
    import cv2

    from posesynth.augment.renderers import _dilate

    rng = np.random.default_rng(0)
    for k in (3, 7, 15):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        for _ in range(20):
            m = np.zeros((40, 60), np.uint8)
            x, y = rng.integers(-5, 60), rng.integers(-5, 40)
            m[max(y, 0):y + rng.integers(1, 12), max(x, 0):x + rng.integers(1, 12)] = 1
            np.testing.assert_array_equal(_dilate(m, kernel), cv2.dilate(m, kernel) > 0)
            np.testing.assert_array_equal(_dilate(m > 0, kernel), cv2.dilate(m, kernel) > 0)


def test_the_feathered_edge_blurred_in_a_window_is_the_whole_frames():
    """The pasted part's feathered edge is blurred in a window around its support only: the values
    are those of the blur over the whole frame, for parts inside the frame and at its edges, in
    float32 and float64 (the warp's alpha)."""
    import cv2

    from posesynth.augment.renderers import _feather

    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        for _ in range(60):
            h, w = rng.integers(40, 90, 2)
            a = np.zeros((h, w), dtype)
            y, x = rng.integers(-10, h), rng.integers(-10, w)
            part = rng.uniform(0.2, 1.0, (rng.integers(3, 25), rng.integers(3, 25)))
            ys, xs = slice(max(y, 0), max(y, 0) + part.shape[0]), slice(max(x, 0), max(x, 0) + part.shape[1])
            a[ys, xs] = part[:a[ys, xs].shape[0], :a[ys, xs].shape[1]]
            sigma = float(rng.uniform(0.5, 4.0))
            want = np.minimum(a, cv2.GaussianBlur(a, (0, 0), sigma) * 1.5)
            got = _feather(a, sigma)
            assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.fixture(scope="module")
def inpaint_generator():
    from posesynth.spade.generator import GeneratorConfig, SPADEGenerator

    torch.manual_seed(0)
    return SPADEGenerator(GeneratorConfig(DRIVER9.num_channels + 4, (64, 64), ngf=8))


def _capsules(old, new, layout, hw, spec=RegionSpec()):
    """The region a renderer may change, computed here from the keypoints alone (plain NumPy,
    not the geometry module): ``(H, W)`` float64, the distance in px beyond the nearest
    capsule, <= 0 inside.  Capsules: every moved arm's upper arm, forearm and hand (the wrist
    to ``hand`` x forearm beyond it), at the old and at the new position, radius
    ``(radius + dilate + feather) x torso size`` (neck, else the shoulders' midpoint, to the
    hips' midpoint) of that person."""
    names = list(layout.keypoints)
    ix = names.index
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.full((h, w), np.inf)

    def seg_dist(a, b):
        d = b - a
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
        return np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1])

    for o, n in zip(np.asarray(old, np.float64), np.asarray(new, np.float64)):
        if "neck" in names and o[ix("neck"), 2] > 0:
            top = o[ix("neck"), :2]
        else:
            top = (o[ix("left_shoulder"), :2] + o[ix("right_shoulder"), :2]) / 2
        torso = np.linalg.norm(top - (o[ix("left_hip"), :2] + o[ix("right_hip"), :2]) / 2)
        reach = (spec.radius + spec.dilate + spec.feather) * torso
        for side in ("right", "left"):
            s, e, wr = (ix(f"{side}_{j}") for j in ("shoulder", "elbow", "wrist"))
            if (o[[s, e, wr], 2] <= 0).any() or np.abs(n[[e, wr], :2] - o[[e, wr], :2]).max() <= 1e-3:
                continue
            for kp in (o, n):
                a, b, c = kp[s, :2], kp[e, :2], kp[wr, :2]
                for p0, p1 in ((a, b), (b, c), (c, c + spec.hand * (c - b))):
                    out = np.minimum(out, seg_dist(p0, p1) - reach)
    return out


def _scene_batch(seed: int, n: int, size: int):
    """``n`` drawn scenes (30% with a passenger) as a renderer's batch, with arms-high
    perturbations: (scenes, images, masks, old keypoints, new keypoints)."""
    ss = [render_scene(scene_rng(seed, i), size, "narrow", 0.3) for i in range(n)]
    p = max(s.num_people for s in ss)
    old = np.zeros((len(ss), p, 9, 3), np.float32)
    for i, s in enumerate(ss):
        old[i, :s.num_people] = s.keypoints
    new = np.stack([perturb_keypoints(k, DRIVER9, (size, size), np.random.default_rng(i), PerturbConfig("arms-high"))
                    for i, k in enumerate(old)])
    imgs = torch.stack([image_to_tensor(s.image) for s in ss])
    masks = torch.from_numpy(np.stack([s.masks for s in ss])).float()
    return ss, imgs, masks, old, new


def test_renders_change_nothing_outside_the_capsules(inpaint_generator):
    """Every pixel farther than the capsule reach from every moved bone (old and new position),
    computed from the keypoints alone, is the source's, and the returned region is 0 there and
    1 well inside the capsules (the region itself is not trusted: it is what is tested)."""
    ss, imgs, masks, old, new = _scene_batch(5, 6, 64)
    for r in (GANRenderer(inpaint_generator, "inpaint", DRIVER9, PoseMapSpec(), (64, 64)), WarpRenderer(DRIVER9)):
        out = r(imgs, masks, old, new)
        assert not torch.equal(out.images, imgs), r.name
        drawn = new if out.keypoints is None else out.keypoints   # an arm the warp skips keeps its pose
        for i in range(len(ss)):
            d = _capsules(old[i], drawn[i], DRIVER9, (64, 64))
            far = torch.from_numpy(d > 1e-3)
            assert torch.equal(out.images[i][:, far], imgs[i][:, far]), (r.name, i)
            assert bool((out.region[i, 0][far] == 0).all()), (r.name, i)
            assert bool((out.region[i, 0][torch.from_numpy(d < -1.0 - 0.05 * 64)] == 1).all()), (r.name, i)


def test_warp_on_threads_gives_the_bytes_and_counts_of_one_thread():
    """A batch rendered on several threads (the default on a machine with several cores) gives
    the images, labels, pasted-limb alphas and skip counts of the same batch rendered one image
    after another: each image's GrabCut seeds OpenCV's RNG of its own thread, and each thread
    counts into its own statistics, added in order."""
    ss, imgs, masks, old, new = _scene_batch(7, 8, 128)
    one, many = WarpRenderer(DRIVER9, threads=1), WarpRenderer(DRIVER9, threads=4)
    a, b = one(imgs, masks, old, new), many(imgs, masks, old, new)
    assert not torch.equal(a.images, imgs)
    for x, y in ((a.images, b.images), (a.region, b.region), (a.masks, b.masks)):
        assert torch.equal(x, y)
    assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(one.last_limb, many.last_limb)
    assert one.stats == many.stats and one.stats["moved"] > 0
    # image by image, outside the batch call: the same again, and the counts add up
    solo = WarpRenderer(DRIVER9)
    for i in range(len(ss)):
        img, _, _, drawn = solo.render_pose(np.ascontiguousarray(ss[i].image), old[i], new[i])
        assert np.array_equal(drawn, a.keypoints[i])
        inside = a.region[i, 0].numpy() > 0
        assert np.array_equal(img[inside], ((a.images[i].permute(1, 2, 0).numpy() + 1) * 127.5).round()
                              .astype(np.uint8)[inside])
    assert solo.stats == one.stats
    with pytest.raises(Exception, match="threads"):
        WarpRenderer(DRIVER9, threads=0)


def test_warp_threads_are_shared_among_torchrun_processes(monkeypatch):
    from posesynth.augment import renderers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = renderers._usable_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert renderers._usable_cores() == max(1, alone // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(10 * alone))
    assert renderers._usable_cores() == 1


def test_warp_puts_the_arm_where_the_scene_draws_it():
    """The pasted limbs cover the moved arms where the scene draws them in the pose drawn (an arm
    the warp leaves where it is is drawn there too).  Around each shoulder (within the radius the
    warp keeps: the joint belongs to the old and the new arm alike) nothing is pasted, so the
    comparison leaves that disk out."""
    from posesynth.datasets.geometry import torso_size

    ious = []
    for i in range(8):
        spec, s, new = _scene_pair(i)
        r = WarpRenderer(DRIVER9)
        out = r(image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float(), s.keypoints[None], new[None])
        drawn = out.keypoints[0]
        gt = spec.render(drawn, with_arm_mask=True)
        region = out.region[0, 0].numpy() > 0
        if not region.any():
            continue
        pasted = r.last_limb[0] > 0.5
        spec_r = RegionSpec()
        near_new = moved_limb_cover(s.keypoints[None], drawn[None], DRIVER9, s.image.shape[:2],
                                    RegionSpec(radius=spec_r.radius + spec_r.dilate))[0, 0].numpy() > 0
        truth = (gt.meta["arm_mask"] > 0) & region & near_new   # the new pixels of the moved arms
        ys, xs = np.mgrid[0:s.image.shape[0], 0:s.image.shape[1]]
        keep = np.ones_like(region)
        for p in range(len(drawn)):
            rad = (RegionSpec().radius + RegionSpec().dilate) * torso_size(s.keypoints[p], DRIVER9)
            for side in ("right", "left"):
                sh = s.keypoints[p, DRIVER9.index(f"{side}_shoulder"), :2]
                keep &= np.hypot(xs - sh[0], ys - sh[1]) > (r.shoulder_keep * 0.5 + 0.6) * rad
        ious.append((pasted & truth & keep).sum() / max(((pasted | truth) & keep).sum(), 1))
    assert len(ious) >= 6 and np.mean(ious) >= 0.7, ious


def test_warp_on_real_frames_stays_in_the_capsules(fixtures):
    """On a real 720x1280 frame (BlazePose layout: no neck), nothing changes beyond the capsule
    reach of the moved bones, computed from the keypoints alone."""
    from posesynth.datasets.formats import open_dataset

    ds = open_dataset(fixtures / "squats" / "pose_squats.full.json")
    s = ds[20]
    new = perturb_keypoints(s.keypoints, ds.layout, s.image.shape[:2], np.random.default_rng(0), PerturbConfig())
    r = WarpRenderer(ds.layout)
    src = image_to_tensor(s.image)
    out = r(src[None], torch.zeros(1, 0, *s.image.shape[:2]), s.keypoints[None], new[None])
    d = _capsules(s.keypoints, new, ds.layout, s.image.shape[:2])
    changed = (out.images[0] != src).any(0).numpy()
    assert changed.any() and not (changed & (d > 1e-3)).any()
    assert 0.005 < float((d <= 0).mean()) < 0.25   # arms, not the whole frame


def test_the_pose_drawn_has_the_hand_where_it_was_pasted(fixtures):
    """BlazePose's hand points (pinky, index, thumb) are labels too: on real frames read in their
    own 33-point layout, a moved arm's hand points sit where its pasted hand is, placed with the
    forearm (same share of the forearm's length along it, same distance across it, as before
    the move); an arm left where it was keeps all of its points."""
    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.plate import arm_part_indices

    ds = open_dataset(fixtures / "squats" / "pose_squats.full.json", layout="blazepose33")
    L, r, moved = ds.layout, WarpRenderer(ds.layout), 0
    for i, f in enumerate((5, 20, 40)):
        s = ds[f]
        old = s.keypoints
        new = perturb_keypoints(old, L, s.image.shape[:2], np.random.default_rng(i), PerturbConfig())
        _, _, _, drawn = r.render_pose(s.image, old, new)
        for side in ("left", "right"):
            e, w = L.index(f"{side}_elbow"), L.index(f"{side}_wrist")
            hand = [j for j in arm_part_indices(L, side) if j not in (e, w)]
            assert len(hand) == 3
            if np.allclose(drawn[0, [e, w], :2], old[0, [e, w], :2]):   # not moved: nothing of it moves
                np.testing.assert_array_equal(drawn[0, hand, :2], old[0, hand, :2])
                continue
            moved += 1
            np.testing.assert_allclose(drawn[0, [e, w], :2], new[0, [e, w], :2])

            def forearm_coords(k):
                a, b = k[e, :2].astype(np.float64), k[w, :2].astype(np.float64)
                u = (b - a) / np.linalg.norm(b - a)
                d = k[hand, :2] - a
                return d @ u / np.linalg.norm(b - a), d @ np.array([-u[1], u[0]])

            (t0, n0), (t1, n1) = forearm_coords(old[0]), forearm_coords(drawn[0])
            np.testing.assert_allclose(t1, t0, atol=1e-3)
            np.testing.assert_allclose(n1, n0, atol=0.05)
            assert np.abs(drawn[0, hand, :2] - old[0, hand, :2]).max() > 5   # the hand did move
    assert moved >= 2


def test_a_bank_arm_brings_its_own_hand_points(fixtures):
    """With a one-frame limb bank, frame s rendered with frame t's arms pastes t's own arms at
    their own place (when they pass the cut-out tests): the hand points drawn are then t's."""
    from posesynth.augment.renderers import LimbBank
    from posesynth.datasets.formats import open_dataset

    ds = open_dataset(fixtures / "squats" / "pose_squats.full.json", layout="blazepose33")
    L = ds.layout
    arm = [L.index(f"{side}_{n}") for side in ("left", "right") for n in ("elbow", "wrist", "pinky", "index", "thumb")]
    checked = 0
    for f, g in ((4, 24), (8, 41), (20, 53), (40, 7)):
        s, t = ds[f], ds[g]
        new = s.keypoints[:1].copy()
        new[0, arm] = t.keypoints[0, arm]
        r = WarpRenderer(L, bank=LimbBank([t.image], t.keypoints[None, :1], layout=L))
        st = r.new_stats()
        _, _, _, drawn = r.render_pose(s.image, s.keypoints[:1], new, stats=st)
        if not st.get("bank"):
            continue
        for side in ("left", "right"):
            part = [L.index(f"{side}_{n}") for n in ("elbow", "wrist", "pinky", "index", "thumb")]
            if np.allclose(drawn[0, part[:2], :2], t.keypoints[0, part[:2], :2]):
                checked += 1
                np.testing.assert_allclose(drawn[0, part[2:], :2], t.keypoints[0, part[2:], :2], atol=1e-3)
    assert checked >= 2


def test_an_arm_left_in_place_keeps_its_hand_points():
    """An occluded arm is not moved (the image is unchanged), and none of its points move in the
    pose drawn: not its elbow and wrist, nor its hand points."""
    from posesynth.datasets.layouts import BLAZEPOSE33 as L

    kp = np.zeros((1, 33, 3), np.float32)
    for n, x, y, v in (("left_shoulder", 120, 60, 2), ("right_shoulder", 80, 60, 2), ("left_hip", 115, 130, 2),
                       ("right_hip", 85, 130, 2), ("left_elbow", 135, 95, 1), ("left_wrist", 140, 125, 2),
                       ("left_pinky", 142, 135, 2), ("left_index", 141, 137, 2), ("left_thumb", 137, 133, 2)):
        kp[0, L.index(n)] = (x, y, v)
    new = kp.copy()
    arm = [L.index(n) for n in ("left_elbow", "left_wrist", "left_pinky", "left_index", "left_thumb")]
    new[0, arm, :2] += (20, -30)
    img = np.full((200, 200, 3), 120, np.uint8)
    out, _, _, drawn = WarpRenderer(L).render_pose(img, kp, new)
    assert np.array_equal(out, img)
    np.testing.assert_array_equal(drawn[0, :, :2], kp[0, :, :2])


def test_reloaded_inpaint_run_reproduces_its_outputs(tmp_path):
    from posesynth.augment.renderers import load_gan_renderer
    from posesynth.spade.trainer import GANConfig, GANTrainer

    class Src:
        layout = DRIVER9

        def __init__(self):
            self.s = [render_scene(scene_rng(9, i), 64, "narrow", 0.0) for i in range(4)]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.s[i]

    cfg = GANConfig(mode="inpaint", size=(64, 64), ngf=8, ndf=8, steps=2, batch_size=2, vgg="off", device="cpu",
                    gallery_every=100)
    t = GANTrainer(cfg, tmp_path / "gan", source=Src(), progress=False)
    t.fit()
    src = Src()
    old = np.stack([src[i].keypoints for i in range(2)])
    new = np.stack([perturb_keypoints(k, DRIVER9, (64, 64), np.random.default_rng(i), PerturbConfig())
                    for i, k in enumerate(old)])
    imgs = torch.stack([image_to_tensor(src[i].image) for i in range(2)])
    masks = torch.from_numpy(np.stack([src[i].masks for i in range(2)])).float()
    t.G.eval()
    live = GANRenderer(t.G, "inpaint", DRIVER9, t.spec, (64, 64))(imgs, masks, old, new).images
    loaded = load_gan_renderer(str(tmp_path / "gan"), DRIVER9)
    assert loaded.mode == "inpaint" and loaded.spec == t.spec
    again = loaded(imgs, masks, old, new).images
    assert torch.equal(live, again)


def test_warp_needs_a_layout_with_arms():
    from posesynth.datasets.layouts import KeypointLayout
    from posesynth.errors import ConfigError

    with pytest.raises(ConfigError, match="names no arms"):
        WarpRenderer(KeypointLayout("hand3", ("wrist", "thumb", "index"), ((0, 1), (0, 2))))
    assert len(arm_chains(COCO17)) == 2


def test_pck_over_selected_joints_counts_only_those():
    """render-quality's 'moved joints' PCK: a wrist displaced by a whole torso is the only miss,
    so PCK over all joints is (n - 1) / n and over the selected (that wrist) 0."""
    from posesynth.datasets.geometry import torso_size
    from posesynth.posenet.metrics import _pck_counts

    gt = render_scene(scene_rng(3, 0), 128, "narrow", 0.0).keypoints[:1].copy()
    w = DRIVER9.index("right_wrist")
    pred = gt.copy()
    pred[0, w, 0] += torso_size(gt[0], DRIVER9)
    c, n, _, _ = _pck_counts(gt, pred, DRIVER9, 0.2)
    vis = int((gt[0, :, 2] > 0).sum())
    assert n.sum() == vis and c.sum() == vis - 1
    sel = np.zeros(gt.shape[:2], bool)
    sel[0, [w, DRIVER9.index("left_wrist")]] = True
    c, n, _, _ = _pck_counts(gt, pred, DRIVER9, 0.2, select=sel)
    assert n.sum() == 2 and c.sum() == 1


def _hidden_arm_scene(sleeve: tuple[int, int, int]):
    """A 128 px person drawn by hand: a blue torso, the left arm in ``sleeve`` colour out to the
    side, the right arm's keypoints inside the torso with nothing drawn there (hidden behind the
    body), and new keypoints that move the right arm out."""
    import cv2

    img = np.full((128, 128, 3), 120, np.uint8)
    kp = np.zeros((1, 9, 3), np.float32)
    pts = {"neck": (64, 35), "right_shoulder": (44, 42), "left_shoulder": (84, 42), "right_hip": (46, 100),
           "left_hip": (82, 100), "left_elbow": (106, 70), "left_wrist": (110, 98), "right_elbow": (52, 70),
           "right_wrist": (58, 92)}
    for n, (x, y) in pts.items():
        kp[0, DRIVER9.index(n)] = (x, y, 2)
    torso = np.array([pts[n] for n in ("right_shoulder", "left_shoulder", "left_hip", "right_hip")], np.int32)
    cv2.fillPoly(img, [torso], (40, 60, 160))
    cv2.line(img, (92, 52), pts["left_elbow"], sleeve, 9)   # the upper arm drawn clear of the torso polygon
    cv2.line(img, pts["left_elbow"], pts["left_wrist"], sleeve, 9)
    new = kp.copy()
    new[0, DRIVER9.index("right_elbow"), :2] = (24, 66)
    new[0, DRIVER9.index("right_wrist"), :2] = (14, 90)
    return img, kp, new


@pytest.mark.parametrize("sleeve,expected", [((220, 170, 140), "behind the body"), ((40, 60, 160), None)])
def test_an_arm_hidden_behind_the_body_stays_unless_colour_cannot_tell(sleeve, expected):
    """The right arm's cut-out is torso-coloured and lies on the torso.  Where the other arm shows
    a colour of its own (skin), that is an arm behind the body: it is not moved.  Where the arms
    are the shirt's colour wherever they are clear of the torso (sleeves), colour cannot tell in
    front from behind, and the test does not apply (the drawn scenes are like that)."""
    from posesynth.augment.renderers import _seg_dist

    img, old, new = _hidden_arm_scene(sleeve)
    r = WarpRenderer(DRIVER9, grabcut_iters=0)   # the capsule is the cut-out: only the colour tests decide
    (arm,) = r._arms(old, new)
    others = [a for a in r._arms(old, old, every_arm=True) if a.joints != arm.joints]
    ys, xs = np.mgrid[0:128, 0:128].astype(np.float64)
    hand = arm.w + (arm.w - arm.e) * r.region.hand
    m = np.minimum.reduce([_seg_dist(xs, ys, arm.s, arm.e), _seg_dist(xs, ys, arm.e, arm.w),
                           _seg_dist(xs, ys, arm.w, hand)]) <= arm.radius
    assert r.plausible(img, arm, m, others) == expected


def test_limb_bank_moves_the_real_arm_of_the_new_pose():
    """A bank frame whose arm lies exactly at the new pose (the scene redrawn in it) is moved by
    an identity: where the pasted arm is opaque, the render is that frame's pixels, the true
    image of the new pose, while the source's own arm moved there is not."""
    from posesynth.augment.renderers import LimbBank

    used = 0
    for i in range(8):
        spec, s, new = _scene_pair(i)
        gt = spec.render(new)
        img, m = image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float()
        plain = WarpRenderer(DRIVER9)
        banked = WarpRenderer(DRIVER9, bank=LimbBank([gt.image], gt.keypoints[None]))
        a, b = plain(img, m, s.keypoints[None], new[None]), banked(img, m, s.keypoints[None], new[None])
        bank = banked.describe()["bank"]   # every arm moved is counted once: from the bank, or why not
        assert bank["used"] + bank["farther"] + bank["refused"] + bank["other_size"] == banked.stats["moved"], bank
        if not banked.stats.get("bank") or not np.array_equal(b.keypoints[0], new):
            continue
        used += 1
        opaque = banked.last_limb[0] >= 0.999
        out_b = (b.images[0].permute(1, 2, 0).numpy() + 1) * 127.5
        out_a = (a.images[0].permute(1, 2, 0).numpy() + 1) * 127.5
        err_b = np.abs(out_b[opaque] - gt.image[opaque]).max(-1)
        err_a = np.abs(out_a[opaque] - gt.image[opaque]).max(-1)
        assert opaque.sum() > 30 and err_b.max() <= 1.0, (i, err_b.max())
        assert err_a.mean() > 3 * max(err_b.mean(), 0.1), (i, err_a.mean(), err_b.mean())
    assert used >= 5, used


def test_limb_bank_no_nearer_than_the_source_is_not_used():
    """A bank of the source frame itself (its arms at their old places) is never nearer the new
    pose than the source's own arms: the render is the plain warp's, byte for byte."""
    from posesynth.augment.renderers import LimbBank

    spec, s, new = _scene_pair(2)
    img, m = image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float()
    plain = WarpRenderer(DRIVER9)
    banked = WarpRenderer(DRIVER9, bank=LimbBank([s.image], s.keypoints[None]))
    a, b = plain(img, m, s.keypoints[None], new[None]), banked(img, m, s.keypoints[None], new[None])
    assert banked.stats["moved"] > 0 and banked.stats.get("bank_farther") == banked.stats["moved"]
    assert torch.equal(a.images, b.images) and "bank" not in banked.stats


def test_limb_bank_nearest_arm():
    """The nearest arm by the largest of its four point distances, among visible arms only."""
    from posesynth.augment.renderers import LimbBank

    kp = np.zeros((3, 1, DRIVER9.num_keypoints, 3), np.float32)
    s, e, w = (DRIVER9.index(f"left_{j}") for j in ("shoulder", "elbow", "wrist"))
    for n, dx in enumerate((0.0, 5.0, 1.0)):
        kp[n, 0, [s, e, w]] = [[10, 10, 2], [10 + dx, 30, 2], [10 + 2 * dx, 50, 2]]
    kp[2, 0, w, 2] = 1   # frame 2 is the nearest, but its wrist is occluded
    bank = LimbBank([np.zeros((64, 64, 3), np.uint8)] * 3, kp)
    want = np.array([[10, 10], [11, 30], [12, 50], [12 + 0.5 * 2, 50 + 0.5 * 20]], np.float64)  # hand 0.5
    n, q, d = bank.nearest([s, e, w], want, 0.5)
    assert (n, q) == (0, 0) and d == pytest.approx(np.hypot(3, 0), abs=1e-6)   # hand end: (10, 60) vs (13, 60)
    kp[:, 0, w, 2] = 0
    assert LimbBank([np.zeros((64, 64, 3), np.uint8)] * 3, kp).nearest([s, e, w], want, 0.5)[0] == -1
    from posesynth.errors import ConfigError

    with pytest.raises(ConfigError, match="one size"):
        LimbBank([np.zeros((64, 64, 3), np.uint8), np.zeros((32, 64, 3), np.uint8)], kp[:2])


def test_limb_bank_arm_beyond_the_new_pose_is_cut_out_whole(monkeypatch):
    """A bank arm past the new pose (nearer it than the source's own arm, on the far side) lies
    in the box the warp works in, a capsule radius around it included where the frame allows, so
    its cut-out is not cut by the box's edge."""
    from posesynth.augment.renderers import LimbBank

    seen = []
    original = WarpRenderer._bank_arm

    def record(self, a, choice, o, box, st):
        seen.append((choice[2], a.radius, box))
        return original(self, a, choice, o, box, st)

    monkeypatch.setattr(WarpRenderer, "_bank_arm", record)
    for i in range(10):
        spec, s, new = _scene_pair(i)
        beyond = new.copy()
        beyond[..., :2] += 0.6 * (new[..., :2] - s.keypoints[..., :2])   # only the moved joints move
        far = spec.render(beyond)
        r = WarpRenderer(DRIVER9, bank=LimbBank([far.image], far.keypoints[None]))
        r(image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float(), s.keypoints[None], new[None])
    assert len(seen) >= 5, len(seen)
    for pts, radius, (y0, y1, x0, x1) in seen:   # pts: the bank arm's (4, 2) points, full frame
        lo = np.maximum(pts.min(0) - radius, 0)
        hi = np.minimum(pts.max(0) + radius, 127)
        assert lo[0] >= x0 and lo[1] >= y0 and hi[0] <= x1 - 1 and hi[1] <= y1 - 1, (pts, radius, (y0, y1, x0, x1))


def _blank_plate(size: "tuple[int, int]" = (128, 128)):
    """A background plate that knows none of the scene (the body fill needs a plate; this one
    fills nothing itself and tells no scene apart)."""
    from posesynth.datasets.plate import BackgroundPlate

    return BackgroundPlate(np.zeros((*size, 3), np.uint8), np.zeros(size, bool), 0, 0.0)


def _shifted_scene(img: np.ndarray, kp: np.ndarray, dx: int, dy: int) -> "tuple[np.ndarray, np.ndarray]":
    """The frame translated by whole pixels (edges repeated), keypoints with it."""
    import cv2

    out = cv2.warpAffine(img, np.float64([[1, 0, dx], [0, 1, dy]]), (img.shape[1], img.shape[0]),
                         borderMode=cv2.BORDER_REPLICATE)
    k = kp.copy()
    k[..., 0] += dx
    k[..., 1] += dy
    return out, k


def test_limb_bank_fills_the_body_an_arm_hid_from_a_frame_of_that_body(monkeypatch):
    """The bank holds the scene in the new pose (what the moved arm hid is visible there), the
    whole frame shifted by (5, -3) px as a squat moves a body.  Every pixel the body fill fills,
    outside the pasted arms, is the true image's (the frame moved back onto the source's body by
    its shoulders and hips), and on most scenes it fills many."""
    from posesynth.augment.renderers import LimbBank

    calls = []
    original = WarpRenderer._bank_body

    def record(self, img, rest, hole, old, o, moved, box, st):
        out = original(self, img, rest, hole, old, o, moved, box, st)
        calls.append((out, box))
        return out

    monkeypatch.setattr(WarpRenderer, "_bank_body", record)
    filled = []
    for i in range(8):
        spec, s, new = _scene_pair(i)
        gt = spec.render(new)
        frame, kp = _shifted_scene(gt.image, gt.keypoints, 5, -3)
        calls.clear()
        r = WarpRenderer(DRIVER9, bank=LimbBank([frame], kp[None]), background=_blank_plate())
        res, alpha, _, _ = r.render_pose(s.image, s.keypoints, new)
        counted = r.describe()["bank_body"]
        assert counted["filled"] == int(bool(calls) and calls[0][0] is not None), counted
        if not calls or calls[0][0] is None:
            continue
        (_, where), (y0, y1, x0, x1) = calls[0]
        done = np.zeros(res.shape[:2], bool)
        done[y0:y1, x0:x1] = where
        done &= alpha == 0
        err = np.abs(res[done].astype(int) - gt.image[done]).max(-1)
        assert err.max() <= 1, (i, err.max(), done.sum())
        filled.append(int(done.sum()))
    assert len(filled) >= 5 and np.median(filled) > 100, filled
    # the bank frame's body 6 px lower than its keypoints say: the fill is refused, or its pixels
    # are not the true image's (the check above can fail)
    wrong = refused = 0
    for i in range(8):
        spec, s, new = _scene_pair(i)
        gt = spec.render(new)
        frame, _ = _shifted_scene(gt.image, gt.keypoints, 5, 3)
        _, kp = _shifted_scene(gt.image, gt.keypoints, 5, -3)
        calls.clear()
        res, alpha, _, _ = WarpRenderer(DRIVER9, bank=LimbBank([frame], kp[None]),
                                        background=_blank_plate()).render_pose(s.image, s.keypoints, new)
        if calls and calls[0][0] is not None:
            (_, where), (y0, y1, x0, x1) = calls[0]
            done = np.zeros(res.shape[:2], bool)
            done[y0:y1, x0:x1] = where
            done &= alpha == 0
            wrong += int((np.abs(res[done].astype(int) - gt.image[done]).max(-1) > 1).sum())
        else:
            refused += 1
    assert wrong > 100 or refused == 8, (wrong, refused)


def test_limb_bank_body_of_another_light_is_not_used():
    """The same bank frame 40 grey levels brighter disagrees with the source around the hole: it
    fills nothing (counted), and the render is the one without the body fill, byte for byte.
    Without a background plate there is no body fill."""
    from posesynth.augment.renderers import LimbBank

    looked = 0
    for i in range(8):
        spec, s, new = _scene_pair(i)
        gt = spec.render(new)
        bright = np.clip(gt.image.astype(int) + 40, 0, 255).astype(np.uint8)
        bank = LimbBank([bright], gt.keypoints[None])
        plain = WarpRenderer(DRIVER9, bank=LimbBank([bright], gt.keypoints[None], body=False),
                             background=_blank_plate()).render_pose(s.image, s.keypoints, new)
        st = WarpRenderer.new_stats()
        body = WarpRenderer(DRIVER9, bank=bank, background=_blank_plate()).render_pose(s.image, s.keypoints, new,
                                                                                      stats=st)
        assert np.array_equal(plain[0], body[0]) and not st.get("bank_body")
        looked += st.get("bank_body_none", 0)
        st = WarpRenderer.new_stats()
        same = LimbBank([gt.image], gt.keypoints[None])
        WarpRenderer(DRIVER9, bank=same).render_pose(s.image, s.keypoints, new, stats=st)
        assert not st.get("bank_body") and not st.get("bank_body_none")
    assert looked >= 4, looked


def test_bank_body_false_moves_arms_without_the_body_fill(tmp_path, monkeypatch):
    """--bank-body false: a bank read from a folder with ``body=False`` (and its training crops)
    never fills a body; the same frames with the default do, on scenes whose body the bank shows."""
    from posesynth.augment.render import QualityConfig, _bank
    from posesynth.augment.renderers import LimbBank
    from posesynth.datasets.make_data import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "clip", 2, seed=0, size=64, pose_range="narrow", workers=1, progress=False)
    clip = str(tmp_path / "clip")
    off = _bank(QualityConfig(limb_bank=clip, bank_body=False), DRIVER9)   # what render-quality reads
    assert not off.body and not off.cropped((0, 0, 32), 16).body and _bank(QualityConfig(limb_bank=clip), DRIVER9).body
    calls = []
    original = WarpRenderer._bank_body
    monkeypatch.setattr(WarpRenderer, "_bank_body", lambda self, *a: calls.append(1) or original(self, *a))
    used = {}
    for body in (True, False):
        calls.clear()
        for i in range(4):
            spec, s, new = _scene_pair(i)
            gt = spec.render(new)
            frame, kp = _shifted_scene(gt.image, gt.keypoints, 5, -3)
            r = WarpRenderer(DRIVER9, bank=LimbBank([frame], kp[None], body=body), background=_blank_plate())
            r.render_pose(s.image, s.keypoints, new)
        used[body] = len(calls)
        assert (r.describe()["bank_body"] == "off") == (not body)
    assert used[True] >= 2 and used[False] == 0, used


def _drawn_person(kp: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """A person drawn by hand over a static ``scene``: a striped blue torso, a head, skin-coloured
    arms along the bones of ``kp`` ``(1, 9, 3)`` (driver9)."""
    import cv2

    img = scene.copy()
    p = {n: tuple(int(round(v)) for v in kp[0, DRIVER9.index(n), :2]) for n in DRIVER9.keypoints}
    torso = np.array([p["right_shoulder"], p["left_shoulder"], p["left_hip"], p["right_hip"]], np.int32)
    body = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(body, [torso], 1)
    ys, xs = np.arange(img.shape[0]) - p["neck"][1], np.arange(img.shape[1]) - p["neck"][0]   # the shirt's own
    stripes = np.where((ys[:, None] // 3 + xs[None] // 5) % 2 == 0, 150, 110)
    img[body > 0] = np.stack([stripes * 0.3, stripes * 0.4, stripes], -1)[body > 0].astype(np.uint8)
    cv2.circle(img, p["neck"], 9, (200, 150, 120), -1)
    for side in ("right", "left"):
        cv2.line(img, p[f"{side}_shoulder"], p[f"{side}_elbow"], (225, 170, 140), 8)
        cv2.line(img, p[f"{side}_elbow"], p[f"{side}_wrist"], (225, 170, 140), 7)
    return img


def test_limb_bank_body_fill_leaves_the_static_scene(monkeypatch):
    """A static camera: the scene (a grey wall's texture) stays, the person moves by (4, -3) px
    between the bank frame and the source, and the plate is the scene.  Every pixel the body
    fill fills is the true image's: the body moved back, not the scene moved with it (the area
    filled reaches past the body, into the person mask's margin, where the frame shows the
    scene)."""
    from posesynth.augment.renderers import LimbBank
    from posesynth.datasets.plate import BackgroundPlate

    scene = np.random.default_rng(0).integers(112, 129, (32, 32, 1)).repeat(3, -1).astype(np.uint8)
    scene = np.repeat(np.repeat(scene, 4, 0), 4, 1)                  # a grey wall: 4 px blocks of +-8 levels
    kp = np.zeros((1, 9, 3), np.float32)
    pts = {"neck": (64, 30), "right_shoulder": (46, 40), "left_shoulder": (82, 40), "right_hip": (50, 96),
           "left_hip": (78, 96), "left_elbow": (100, 62), "left_wrist": (108, 84), "right_elbow": (54, 66),
           "right_wrist": (70, 86)}                                  # the right forearm across the torso
    for n, (x, y) in pts.items():
        kp[0, DRIVER9.index(n)] = (x, y, 2)
    new = kp.copy()
    new[0, DRIVER9.index("right_elbow"), :2] = (30, 64)
    new[0, DRIVER9.index("right_wrist"), :2] = (22, 88)
    src, gt = _drawn_person(kp, scene), _drawn_person(new, scene)
    plate = BackgroundPlate(scene, np.ones((128, 128), bool), 4, 0.0)
    calls = []
    original = WarpRenderer._bank_body
    monkeypatch.setattr(WarpRenderer, "_bank_body", lambda self, *a: calls.append((original(self, *a), a[6])) or
                        calls[-1][0])
    # the bank's person in the new pose; then in a pose whose right forearm lies across the torso
    # a little beside the source's (its own arm must not be taken for the body)
    across = new.copy()
    across[0, DRIVER9.index("right_elbow"), :2] = (60, 60)
    across[0, DRIVER9.index("right_wrist"), :2] = (80, 78)
    for pose in (new, across):
        other = pose.copy()
        other[..., :2] += (4, -3)
        bank = LimbBank([_drawn_person(other, scene)], other[None])
        calls.clear()
        res, alpha, _, _ = WarpRenderer(DRIVER9, bank=bank, background=plate).render_pose(src, kp, new)
        (_, where), (y0, y1, x0, x1) = calls[0]
        done = np.zeros(res.shape[:2], bool)
        done[y0:y1, x0:x1] = where
        done &= alpha == 0
        err = np.abs(res[done].astype(int) - gt[done]).max(-1)
        assert len(err) > 50 and err.max() <= 1, (len(err), err.max())


def test_limb_bank_body_is_the_median_of_the_frames_that_agree(monkeypatch):
    """Three bank frames of the new pose, one with a magenta blot where the old arm was (a stray
    hand, a gap beside the torso): each filled pixel is the median of the frames, the true image,
    while the blotted frame alone would put the blot in."""
    from posesynth.augment.renderers import LimbBank

    calls = []
    original = WarpRenderer._bank_body
    monkeypatch.setattr(WarpRenderer, "_bank_body", lambda self, *a: calls.append((original(self, *a), a[6])) or
                        calls[-1][0])
    checked = 0
    for i in range(8):
        spec, s, new = _scene_pair(i)
        gt = spec.render(new)
        frame, kp = _shifted_scene(gt.image, gt.keypoints, 5, -3)
        blot = frame.copy()
        old_arm = np.abs(s.image.astype(int) - gt.image).max(-1) > 0          # where the old arm was (and the new)
        blot[np.roll(np.roll(old_arm, -3, 0), 5, 1)] = (255, 0, 255)
        errs = []
        for frames in ([blot, frame, frame], [blot]):   # the blotted frame first: it agrees as well
            calls.clear()
            res, alpha, _, _ = WarpRenderer(DRIVER9, bank=LimbBank(frames, np.stack([kp] * len(frames))),
                                            background=_blank_plate()).render_pose(s.image, s.keypoints, new)
            if not calls or calls[0][0] is None:
                break
            (_, where), (y0, y1, x0, x1) = calls[0]
            done = np.zeros(res.shape[:2], bool)
            done[y0:y1, x0:x1] = where
            done &= (alpha == 0) & old_arm
            errs.append(np.abs(res[done].astype(int) - gt.image[done]).max(-1) if done.sum() > 50 else None)
        if len(errs) == 2 and errs[0] is not None and errs[1] is not None:
            assert errs[0].max() <= 1 and errs[1].mean() > 50, (i, errs[0].max(), errs[1].mean())
            checked += 1
    assert checked >= 3, checked


def test_limb_bank_fills_the_body_of_each_person_whose_arms_moved(monkeypatch):
    """Two people side by side (two drawn scenes, 128 px each, in one 128x256 frame), each moving
    an arm; the bank is the frame in the new poses with each person shifted differently (the first
    by (5, -3) px, the second by (5, 2)). Each person's hidden body is filled from the bank matched
    on that person's own shoulders and hips: every pixel filled, outside the pasted arms, is the
    true image's, on both bodies, and no person's fill lies on the other's side. A third person's
    keypoints over the first's body (not drawn, not moved): none of the first's fill lies on that
    body (which one is in front is unknown), and the rest of its fill is unchanged."""
    from posesynth.augment.renderers import LimbBank
    from posesynth.datasets.plate import person_mask

    calls = []
    original = WarpRenderer._bank_body

    def record(self, img, rest, hole, old, o, moved, box, st):
        out = original(self, img, rest, hole, old, o, moved, box, st)
        calls.append((moved[0].person, out, box))
        return out

    def fills(res, alpha):
        out = {}
        for person, body, (y0, y1, x0, x1) in calls:
            if body is not None:
                done = np.zeros(res.shape[:2], bool)
                done[y0:y1, x0:x1] = body[1]
                out[person] = done & (alpha == 0)
        return out

    monkeypatch.setattr(WarpRenderer, "_bank_body", record)
    both = ghosted = 0
    for i in range(10):
        pairs = [_scene_pair(i), _scene_pair(i + 40)]
        shift = np.float32([[0, 0, 0], [128, 0, 0]])[:, None]    # the second scene to the right
        img = np.concatenate([s.image for _, s, _ in pairs], 1)
        old = np.concatenate([s.keypoints for _, s, _ in pairs]) + shift
        new = np.concatenate([n for _, _, n in pairs]) + shift
        truth = [spec.render(n) for spec, _, n in pairs]
        gt = np.concatenate([t.image for t in truth], 1)
        moved_apart = [_shifted_scene(t.image, t.keypoints, 5, dy) for t, dy in zip(truth, (-3, 2))]
        frame = np.concatenate([f for f, _ in moved_apart], 1)
        kp = np.concatenate([k for _, k in moved_apart]) + shift
        calls.clear()
        r = WarpRenderer(DRIVER9, bank=LimbBank([frame], kp[None]), background=_blank_plate((128, 256)))
        res, alpha, _, drawn = r.render_pose(img, old, new)
        moved = {p for p in range(2) if not np.array_equal(drawn[p, :, :2], old[p, :, :2])}
        assert sorted(c[0] for c in calls) == sorted(moved)   # a fill for each person whose arms moved
        assert r.describe()["bank_body"]["filled"] == sum(c[1] is not None for c in calls)
        filled = set()
        for person, done in fills(res, alpha).items():
            err = np.abs(res[done].astype(int) - gt[done]).max(-1)
            assert err.max() <= 1, (i, person, err.max(), done.sum())
            assert not done[:, 128 * (1 - person):128 * (2 - person)].any()   # never on the other's side
            if done.sum() >= 20:
                filled.add(person)
        both += filled == {0, 1}
        if 0 not in filled:
            continue
        # a third person over the first one's body, 12 px to the right (keypoints only)
        before = fills(res, alpha)[0]
        ghost = old[:1].copy()
        ghost[..., 0] += 12
        ghost_kp = np.concatenate([kp, kp[:1] + np.float32([12, 0, 0])])
        calls.clear()
        r = WarpRenderer(DRIVER9, bank=LimbBank([frame], ghost_kp[None]), background=_blank_plate((128, 256)))
        res, alpha, _, _ = r.render_pose(img, np.concatenate([old, ghost]), np.concatenate([new, ghost]))
        on_ghost = person_mask(ghost, DRIVER9, (128, 256))
        now = fills(res, alpha).get(0, np.zeros((128, 256), bool))
        assert not (now & on_ghost).any()
        if (before & on_ghost).sum() >= 20 and (before & ~on_ghost).sum() >= 20:
            ghosted += 1
            assert (now & ~on_ghost).sum() >= 0.5 * (before & ~on_ghost).sum()
    assert both >= 3 and ghosted >= 2, (both, ghosted)


@pytest.mark.parametrize("mode", ["full", "inpaint"])
def test_a_generator_with_noise_renders_each_image_alike_in_any_batch(mode):
    """A generator that draws noise (``--z-dim > 0``) renders an image the same alone, in a batch
    with others and after any use of torch's global RNG, which it leaves as it was; and its
    noise is used (a render with the noise set to 0 differs)."""
    from posesynth.spade.generator import GeneratorConfig, SPADEGenerator

    torch.manual_seed(0)
    extra = 4 if mode == "inpaint" else 0
    G = SPADEGenerator(GeneratorConfig(DRIVER9.num_channels + extra, (64, 64), ngf=8, z_dim=8, area_channels=extra))
    r = GANRenderer(G, mode, DRIVER9, PoseMapSpec(), (64, 64))
    _, imgs, masks, old, new = _scene_batch(5, 3, 64)
    torch.manual_seed(1)
    batch = r(imgs, masks, old, new).images
    torch.manual_seed(2)
    expect = torch.rand(3)
    torch.manual_seed(2)
    alone = [r(imgs[i:i + 1], masks[i:i + 1], old[i:i + 1], new[i:i + 1]).images[0] for i in (2, 0, 1)]
    assert torch.equal(torch.rand(3), expect)                       # the global RNG is where it was
    for i, a in zip((2, 0, 1), alone):
        assert torch.allclose(a, batch[i], atol=1e-5), i
    forward = G.forward
    G.forward = lambda x, noise=None: forward(x, torch.zeros(x.shape[0], 8, *G.start))
    try:
        assert not torch.allclose(r(imgs, masks, old, new).images, batch, atol=1e-3)
    finally:
        del G.forward


def test_a_vanilla_generator_with_noise_renders_an_image_alike_whatever_the_batch_is_padded_to():
    """The vanilla generator draws a whole image from person 0's keypoint vector and its noise. In
    a batch with a two-person image, a one-person image's keypoints are padded with an empty
    person; its render (seeded from the people it has) is the same as alone.  The CPU generator's
    state is left as it was."""
    from posesynth.spade.baselines import make_render
    from posesynth.spade.vanilla import VanillaConfig, VanillaGenerator

    torch.manual_seed(0)
    G = VanillaGenerator(VanillaConfig(num_keypoints=DRIVER9.num_keypoints, size=(64, 64), ngf=8, n_up=4, z_dim=8))
    r = GANRenderer(G, "full", DRIVER9, PoseMapSpec(), (64, 64), arch="vanilla", render=make_render("vanilla", G, DRIVER9))
    _, imgs, masks, old, new = _scene_batch(5, 2, 64)
    two = np.concatenate([new[1:2], new[1:2] + np.float32([3, 0, 0])], 1)            # (1, 2, K, 3)
    padded = np.concatenate([np.concatenate([new[:1], np.zeros_like(new[:1])], 1), two])   # (2, 2, K, 3)
    state = torch.get_rng_state()
    alone = r(imgs[:1], masks[:1], old[:1], new[:1]).images[0]
    both = r(imgs, masks, padded, padded).images[0]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(alone, both, atol=1e-5)
