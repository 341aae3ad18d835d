"""Refine mode (issue 18): the generator corrects the warp on crops; the warp on real people;
realism measured on frame pairs of a clip."""
import numpy as np
import pytest
import torch

from posesynth.augment.refine import RefineCropDataset, refine_trainer
from posesynth.augment.renderers import RefineRenderer, WarpRenderer
from posesynth.datasets.crops import crop, to_crop
from posesynth.datasets.geometry import RegionSpec
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.posemaps import PoseMapSpec
from posesynth.datasets.sample import Sample
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.datasets.torch_dataset import image_to_tensor
from posesynth.spade.archs.refine import RefineArch
from posesynth.spade.config import GANConfig


class Scenes:
    layout = DRIVER9

    def __init__(self, n=4, size=128, seed=7):
        self.s = [render_scene(scene_rng(seed, i), size, "narrow", 0.0) for i in range(n)]

    def __len__(self):
        return len(self.s)

    def __getitem__(self, i):
        return self.s[i]


def _moved(s, dx=18.0):
    new = s.keypoints.copy()
    for n in ("right_wrist", "left_wrist"):
        new[0, DRIVER9.index(n), 0] += dx
    return new


def _refiner(generator=None, crop_size=64):
    cfg = GANConfig(mode="refine", crop_size=crop_size, ngf=8, spade_hidden=16, vgg="off").resolve()
    G = generator if generator is not None else RefineArch(cfg, DRIVER9, cfg.posemaps).build_generator()
    return RefineRenderer(G, DRIVER9, PoseMapSpec(size=(crop_size, crop_size)), crop_size, 0.25)


class _Constant(torch.nn.Module):
    """A 'refiner' whose correction is the same everywhere."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.full((x.shape[0], 3, *x.shape[-2:]), self.value)


def test_an_untrained_refiner_returns_the_warp_bit_for_bit():
    s = Scenes(1)[0]
    r = _refiner()
    img, masks = image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float()
    out = r(img, masks, s.keypoints[None], _moved(s)[None])
    warp = WarpRenderer(DRIVER9)(img, masks, s.keypoints[None], _moved(s)[None])
    assert torch.equal(out.images, warp.images)
    assert not torch.equal(out.images, img)   # the warp did move something


def test_crop_and_paste_is_exact():
    """A zero correction pastes back nothing; a constant one c adds exactly M * c inside M (the
    crop, its resizing and the paste add no error), and outside M the output is the source."""
    s = Scenes(1)[0]
    img, masks = image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float()
    new = _moved(s)[None]
    warp = WarpRenderer(DRIVER9)(img, masks, s.keypoints[None], new)
    zero = _refiner(_Constant(0.0))(img, masks, s.keypoints[None], new)
    assert torch.equal(zero.images, warp.images)
    c = 0.25
    out = _refiner(_Constant(c))(img, masks, s.keypoints[None], new)
    M = warp.region
    want = torch.where(M > 0, (warp.images + M * c).clamp(-1, 1), warp.images)
    assert torch.allclose(out.images, want, atol=1e-6)
    assert torch.equal(out.images[(M == 0).expand_as(img)], img[(M == 0).expand_as(img)])   # the source, exactly


def test_outside_the_region_a_trained_refiner_leaves_the_source():
    s = Scenes(1)[0]
    torch.manual_seed(0)
    cfg = GANConfig(mode="refine", crop_size=64, ngf=8, spade_hidden=16, vgg="off").resolve()
    G = RefineArch(cfg, DRIVER9, cfg.posemaps).build_generator()
    torch.nn.init.normal_(G.conv_img.weight, std=0.3)   # any non-zero correction
    img, masks = image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float()
    out = _refiner(G)(img, masks, s.keypoints[None], _moved(s)[None])
    outside = (out.region == 0).expand_as(img)
    assert torch.equal(out.images[outside], img[outside])
    assert not torch.equal(out.images[~outside], WarpRenderer(DRIVER9)(img, masks, s.keypoints[None],
                                                                      _moved(s)[None]).images[~outside])


def test_a_round_trip_sample_has_the_original_crop_as_its_truth():
    src = Scenes(3)
    ds = RefineCropDataset(src, crop_size=64, fill_share=0.0, spec=PoseMapSpec(size=(64, 64)), flip=False,
                           seed=1)
    for i in range(3):
        item = ds[(i, 0)]
        assert item["source_index"] == i
        s = src[i]
        box = tuple(int(v) for v in item["crop_box"])   # where the crop came from
        x0, y0, side = box

        def inside(k):
            return (k[:, 0] >= x0) & (k[:, 0] < x0 + side) & (k[:, 1] >= y0) & (k[:, 1] < y0 + side)

        arms = [s.keypoints[0, [DRIVER9.index(f"{a}_{j}") for j in ("shoulder", "elbow", "wrist")]] for a in
                ("right", "left")]
        assert any(inside(k).all() for k in arms)   # the crop is around an arm of the person
        truth = crop(s.image, box, 64)
        assert torch.equal(item["image"], image_to_tensor(truth))   # the truth is the original (cropped) image
        changed = (item["warped"] != item["image"]).any(0)
        assert changed.any()                                         # the warp's artifacts are in W
        assert (item["region"][0][changed] > 0).all()                # ... all inside M


def test_round_trips_are_made_in_a_layout_with_hand_points(fixtures):
    """BlazePose's hand points go out and back through two affine moves (not bit for bit): real
    frames read in that layout still give round trips, as in coco17, not only fills."""
    from posesynth.datasets.formats import open_dataset

    counts = {}
    for layout in ("blazepose33", "coco17"):
        src = open_dataset(fixtures / "squats" / "pose_squats.full.json", layout=layout)
        ds = RefineCropDataset(src, crop_size=64, fill_share=0.0, spec=PoseMapSpec(size=(64, 64)), flip=False,
                               seed=1)
        for i in range(0, 60, 5):
            ds[(i, 0)]
        counts[layout] = ds.sample_counts["round trip"]
    assert counts["coco17"] > 0 and counts["blazepose33"] >= counts["coco17"] - 2, counts


class _HalfOccluded(Scenes):
    """Scenes whose even images have every arm joint labelled occluded: the warp moves no arm
    there, so no round trip can be made of them (a fill still can)."""

    def __getitem__(self, i):
        s = self.s[i]
        if i % 2 == 0:
            s = Sample(s.image, s.keypoints.copy(), s.masks)
            for n in ("shoulder", "elbow", "wrist"):
                for a in ("right", "left"):
                    s.keypoints[:, DRIVER9.index(f"{a}_{n}"), 2] = 1
        return s


def test_an_image_with_no_round_trip_gives_a_fill_of_itself():
    """Even images allow no round trip (every arm occluded): a round trip drawn there becomes a
    fill of that image, counted as such; a fill drawn is counted as a fill, wherever; odd
    images give round trips (and fills where a drawn p' crosses the arms).  An image with no
    arm gives no item and is not counted."""
    src = _HalfOccluded(8, size=96)
    src.s[3] = Sample(src.s[3].image, src.s[3].keypoints[:, :0].reshape(0, len(DRIVER9.keypoints), 3), src.s[3].masks)
    ds = RefineCropDataset(src, crop_size=64, fill_share=0.3, spec=PoseMapSpec(size=(64, 64)), seed=2)
    kinds = {0: set(), 1: set()}
    for i in range(64):
        index, epoch = i % 8, i // 8
        before = dict(ds.sample_counts)
        item = ds[(index, epoch)]
        changed = [k for k in ds.sample_counts if ds.sample_counts[k] != before[k]]
        assert len(changed) == 1 and ds.sample_counts[changed[0]] == before[changed[0]] + 1   # counted once
        kind = changed[0]
        got = int(item["source_index"])
        assert got == index or (index == 3 and got == 4)   # the image asked for; one with no person: the next
        drawn_fill = np.random.default_rng([2, epoch, got]).random() < 0.3   # the draw of fill or round trip
        assert (kind == "fill") == drawn_fill, (index, epoch, kind)
        kinds[got % 2].add(kind)
    assert kinds[0] == {"fill", "fill (no round trip)"}
    assert "round trip" in kinds[1]
    assert sum(ds.sample_counts.values()) == 64


def test_crop_keypoints_follow_the_pixels():
    """A bright dot at a keypoint stays under the keypoint in the crop (pixel-centre mapping)."""
    img = np.zeros((300, 400, 3), np.uint8)
    kp = np.array([[[123.0, 87.0, 2]]], np.float32)
    img[85:90, 121:126] = 255
    box = (60, 20, 200)
    c = crop(img, box, 64)
    k = to_crop(kp, box, 64)[0, 0]
    y, x = np.unravel_index(np.argmax(c[..., 0]), c.shape[:2])
    assert abs(x - k[0]) <= 1 and abs(y - k[1]) <= 1


def test_refine_trainer_trains_and_reloads_as_a_renderer(tmp_path):
    from posesynth.augment.renderers import make_renderer

    cfg = GANConfig(mode="refine", crop_size=64, ngf=8, ndf=8, spade_hidden=16, batch_size=2, steps=2, vgg="off",
                    device="cpu", gallery_every=1)
    t = refine_trainer(cfg, tmp_path / "r", source=Scenes(2), progress=False)
    t.fit()
    assert (tmp_path / "r" / "web" / "index.html").exists()
    r = make_renderer("refine", DRIVER9, str(tmp_path / "r"))
    s = Scenes(1)[0]
    out = r(image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float(), s.keypoints[None],
            _moved(s)[None])
    assert out.images.shape == (1, 3, 128, 128) and out.keypoints is not None
    from posesynth.errors import ConfigError

    with pytest.raises(ConfigError, match="refine-mode run"):
        make_renderer("gan", DRIVER9, str(tmp_path / "r"))


# ---- the warp on real people ----------------------------------------------------------------------
def test_an_occluded_arm_is_not_moved():
    s = Scenes(1)[0]
    kp = s.keypoints.copy()
    rw, re = DRIVER9.index("right_wrist"), DRIVER9.index("right_elbow")
    kp[0, rw, 2] = 1   # labelled but occluded
    new = kp.copy()
    new[0, rw, 0] += 15
    new[0, re, 0] += 8
    w = WarpRenderer(DRIVER9)
    out = w(image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float(), kp[None], new[None])
    assert torch.equal(out.images, image_to_tensor(s.image)[None])
    np.testing.assert_array_equal(out.keypoints[0], kp)   # the labels keep the pose drawn
    assert w.stats["skipped"] == {"occluded": 1}


def test_crossed_arms_are_not_moved():
    """Two forearms over each other: one hides the other, so neither is cut out and moved."""
    s = Scenes(1)[0]
    kp = s.keypoints.copy()
    L = DRIVER9
    for side, sign in (("right", 1), ("left", -1)):
        sh = kp[0, L.index(f"{side}_shoulder"), :2]
        kp[0, L.index(f"{side}_elbow"), :2] = sh + np.array([sign * 4.0, 30.0])
        kp[0, L.index(f"{side}_wrist"), :2] = kp[0, L.index("neck"), :2] + np.array([0.0, 45.0])
    new = kp.copy()
    new[0, L.index("right_wrist"), 0] += 12
    w = WarpRenderer(L)
    out = w(image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float(), kp[None], new[None])
    assert w.stats["skipped"].get("crossed", 0) >= 1
    np.testing.assert_array_equal(out.keypoints[0], kp)


# ---- pairs of a clip --------------------------------------------------------------------------------
def test_pairs_are_found_where_bodies_match_and_arms_differ():
    from posesynth.augment.render import find_pairs

    base = render_scene(scene_rng(2, 0), 128, "narrow", 0.0).keypoints[0]
    L = DRIVER9
    ts = float(np.linalg.norm(base[L.index("neck"), :2] - base[[L.index("left_hip"), L.index("right_hip")], :2].mean(0)))
    frames = [base.copy() for _ in range(4)]
    frames[1][L.index("right_wrist"), 0] += 0.5 * ts     # the arms differ from frame 0
    frames[2][L.index("right_wrist"), 0] += 0.1 * ts     # too little arm motion
    frames[3][L.index("right_wrist"), 0] += 0.5 * ts     # arms differ, but the body moved too
    frames[3][L.index("left_hip"), 1] += 0.2 * ts
    pairs = set(find_pairs(np.stack(frames), L))
    assert pairs == {(0, 1), (1, 0), (1, 2), (2, 1)}


def test_pairs_count_a_foot_as_body_and_a_hand_as_arm():
    """In BlazePose's 33 points, ``left_foot_index`` is a foot (the body must match there) and
    ``left_index`` a hand point (it moves with the arm and is not held to the body's tolerance)."""
    from posesynth.augment.render import find_pairs
    from posesynth.datasets.geometry import torso_size
    from posesynth.datasets.layouts import BLAZEPOSE33 as L

    rng = np.random.default_rng(0)
    base = np.concatenate([rng.uniform(200, 400, (33, 2)), np.full((33, 1), 2.0)], 1)
    for n, xy in (("left_shoulder", (340, 200)), ("right_shoulder", (260, 200)), ("left_hip", (330, 360)),
                  ("right_hip", (270, 360))):
        base[L.index(n), :2] = xy
    ts = torso_size(base, L)
    frames = [base.copy() for _ in range(4)]
    for f in frames[1:]:
        f[L.index("left_wrist"), 0] += 0.5 * ts                 # the arms differ from frame 0
    frames[2][L.index("left_index"), 1] += 0.3 * ts             # and a finger with them: still a pair
    frames[3][L.index("left_foot_index"), 1] += 0.2 * ts        # the foot moved: not a pair
    pairs = set(find_pairs(np.stack(frames), L))
    assert (0, 1) in pairs and (0, 2) in pairs
    assert (0, 3) not in pairs and (3, 0) not in pairs


def test_render_quality_pairs_on_a_clip(tmp_path):
    """End to end on a tiny clip of one synthetic driver: the copy baseline and the warp scored
    against the real target frames inside the arm region."""
    from posesynth.augment.render import QualityConfig, render_pairs
    from posesynth.datasets.coco import write_coco

    from posesynth.datasets.synthetic import SceneSpec, redraw_scene

    spec = SceneSpec(2, 0, 128, "narrow", 0.0)
    s0 = spec.render()
    L = DRIVER9
    moved = s0.keypoints.copy()
    moved[0, L.index("right_wrist"), 0] += 20
    moved[0, L.index("right_elbow"), 0] += 10
    frames = [s0, redraw_scene(spec, moved)]
    write_coco(tmp_path / "clip", frames, L)
    res = render_pairs(QualityConfig(pairs=str(tmp_path / "clip"), out=str(tmp_path / "q"), renderer=("warp",),
                                     num=0, device="cpu"), progress=False)
    assert res["pairs"] == 2
    assert set(res["renderers"]) == {"copy", "warp"}
    assert (tmp_path / "q" / "pairs.png").exists() and (tmp_path / "q" / "index.html").exists()
    # the region's three parts: the copy's pooled PSNR over them is the region's pooled PSNR
    # computed here from the images
    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.geometry import limb_region

    clip = open_dataset(tmp_path / "clip")   # the frames as written (and read back)
    sse = n = 0
    for i, j in ((0, 1), (1, 0)):
        old, new = frames[i].keypoints, frames[j].keypoints
        r = limb_region(old[None], new[None], L, (128, 128))[0, 0].numpy() > 0
        sse += float(((clip[i].image.astype(float) - clip[j].image) ** 2)[r].sum())
        n += int(r.sum())
    copy = res["renderers"]["copy"]
    assert sum(res["part_pixels"].values()) == n
    pooled = -10 * np.log10(sum(10 ** (-copy["psnr_parts"][k] / 10) * res["part_pixels"][k] for k in copy["psnr_parts"]
                                if res["part_pixels"][k]) / n)
    assert pooled == pytest.approx(10 * np.log10(255 ** 2 / (sse / (3 * n))), abs=1e-6)
    assert sum(copy["sse_share"].values()) == pytest.approx(1.0)


def test_the_arm_region_splits_into_old_new_and_both():
    """Where only the old arm was, only the new one is, and both: disjoint, together the region;
    the old wrist lies in the first, the new wrist in the second."""
    from posesynth.augment.render import region_parts
    from posesynth.datasets.geometry import limb_region

    L = DRIVER9
    old = render_scene(scene_rng(2, 0), 128, "narrow", 0.0).keypoints[:1]
    new = old.copy()
    new[0, L.index("right_wrist"), :2] += (-35, 10)     # outwards, clear of the other arm and the body
    new[0, L.index("right_elbow"), :2] += (-14, 4)
    region = limb_region(old[None], new[None], L, (128, 128))
    parts = region_parts(old, new, L, (128, 128), region, (0, 128, 0, 128))
    masks = list(parts.values())
    assert sum(m.astype(int) for m in masks).max() == 1                       # disjoint
    assert np.array_equal(np.any(masks, 0), region[0, 0].numpy() > 0)        # the whole region
    (ox, oy), (nx, ny) = old[0, L.index("right_wrist"), :2].astype(int), new[0, L.index("right_wrist"), :2].astype(int)
    assert parts["old arm only"][oy, ox] and parts["new arm only"][ny, nx]
    assert parts["both"][tuple(old[0, L.index("right_shoulder"), :2].astype(int)[::-1])]   # the shoulder stays
