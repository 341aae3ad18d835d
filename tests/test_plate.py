"""A static camera's background plate (issue 18): built from a clip's uncovered pixels, refused
for frames that are not one camera's, and used by the warp to fill the area an arm leaves with
what the camera saw there."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posesynth.augment.renderers import WarpRenderer
from posesynth.datasets.crops import crop, to_crop
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.plate import BackgroundPlate, build_plate, load_background, person_mask
from posesynth.errors import ConfigError

L = DRIVER9
SIZE = 160


def _background(seed=0):
    """A textured scene no inpainting can guess: random 8 px blocks, lightly blurred."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(30, 226, (SIZE // 8, SIZE // 8, 3)).astype(np.uint8)
    return cv2.GaussianBlur(cv2.resize(blocks, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST), (3, 3), 0)


def _person(dx=0.0, arm_angle=0.0):
    """driver9 keypoints ``(1, 9, 3)`` of an upright person shifted ``dx`` px, the left arm out to
    the side and turned down by ``arm_angle`` degrees."""
    pts = {"neck": (70, 40), "right_shoulder": (52, 48), "left_shoulder": (88, 48), "right_hip": (55, 108),
           "left_hip": (85, 108), "right_elbow": (50, 80), "right_wrist": (56, 104)}
    a = np.deg2rad(arm_angle)
    el = np.array([88 + 28 * np.cos(a), 48 + 28 * np.sin(a)])
    wr = el + [26 * np.cos(a), 26 * np.sin(a)]
    pts["left_elbow"], pts["left_wrist"] = tuple(el), tuple(wr)
    kp = np.zeros((1, 9, 3), np.float32)
    for n, (x, y) in pts.items():
        kp[0, L.index(n)] = (x + dx, y, 2)
    return kp


def _draw(bg, kp):
    """The person of ``kp`` drawn over ``bg``: a shirt, a head, skin-coloured arms."""
    img = bg.copy()
    p = {n: tuple(int(round(v)) for v in kp[0, L.index(n), :2]) for n in L.keypoints}
    torso = np.array([p[n] for n in ("right_shoulder", "left_shoulder", "left_hip", "right_hip")], np.int32)
    cv2.fillPoly(img, [torso], (30, 60, 170))
    cv2.circle(img, (p["neck"][0], p["neck"][1] - 14), 11, (200, 160, 130), -1)
    for side in ("right", "left"):
        cv2.line(img, p[f"{side}_shoulder"], p[f"{side}_elbow"], (225, 175, 140), 9)
        cv2.line(img, p[f"{side}_elbow"], p[f"{side}_wrist"], (225, 175, 140), 9)
    return img


def _source(frames, listed=None, ids=lambda t: {}):
    """A dataset class of ``frames`` ((image, keypoints) pairs), as ``open_dataset`` gives: the
    frames in the order ``listed`` (default: theirs), frame ``t``'s sample given ``ids(t)``
    (``image_id``, ``meta``)."""
    from posesynth.datasets.sample import Sample

    listed = list(range(len(frames))) if listed is None else listed

    class Clip:
        layout = L

        def __len__(self):
            return len(listed)

        def __getitem__(self, i):
            t = listed[i]
            return Sample(frames[t][0], frames[t][1], np.zeros((1, SIZE, SIZE), np.uint8), **ids(t))
    return Clip


def _clip(n=10, step=4.0):
    bg = _background()
    kps = [_person(dx=step * t, arm_angle=(t % 4) * 25.0) for t in range(n)]
    return bg, [(_draw(bg, k), k) for k in kps]


def test_the_plate_is_the_scene_where_the_person_ever_left_it():
    bg, frames = _clip()
    plate = build_plate(frames, L, min_count=3)
    drawn = np.stack([(im != bg).any(-1) for im, _ in frames])   # where the person really is, per frame
    assert plate.known.any() and plate.residual < 1.0
    assert np.array_equal(plate.image[plate.known], bg[plate.known])     # the scene itself, bit for bit
    assert not (plate.known & drawn.all(0)).any()                        # never seen: not known
    assert ((~drawn).sum(0)[plate.known] >= 3).all()
    # the person masks cover what is drawn (so no person leaks into the median)
    for (im, kp), d in zip(frames, drawn):
        assert not (d & ~person_mask(kp, L, im.shape[:2])).any()


def test_frames_of_no_static_camera_are_refused():
    _, frames = _clip(6)
    moving = [(_draw(_background(seed=t), k), k) for t, (_, k) in enumerate(frames)]   # another scene each time
    with pytest.raises(ConfigError, match="static camera"):
        build_plate(moving, L)
    with pytest.raises(ConfigError, match="sizes"):
        build_plate([frames[0], (frames[1][0][:100], frames[1][1])], L)
    with pytest.raises(ConfigError, match="no such file"):
        load_background("/nonexistent/clip")


def test_the_plate_saves_loads_and_crops_with_its_frames(tmp_path):
    bg, frames = _clip()
    plate = build_plate(frames, L)
    plate.save(tmp_path / "b.png")
    back = load_background(str(tmp_path / "b.png"))
    assert np.array_equal(back.known, plate.known) and np.array_equal(back.image, plate.image)
    box = (100, -20, 80)                                   # reaches above the frame and past its right edge
    c = plate.crop(box, 40, flip=True)
    scene = cv2.resize(np.pad(bg, ((20, 0), (0, 20), (0, 0)))[0:80, 100:180], (40, 40),
                       interpolation=cv2.INTER_AREA)[:, ::-1]    # the scene itself, cropped by hand
    assert c.known.sum() > 100 and np.abs(c.image[c.known].astype(int) - scene[c.known]).max() <= 1
    assert not c.known[:10].any() and c.known[10:].any()   # rows above the frame are not known
    assert not c.known[:, :10].any()                       # nor columns past its right edge (mirrored: left)
    with open(tmp_path / "bad.png", "w") as f:
        f.write("not an image")
    with pytest.raises(ConfigError, match="bad.png"):
        load_background(str(tmp_path / "bad.png"))


def test_the_body_mask_drops_only_the_arm_below_the_shoulder():
    from posesynth.datasets.layouts import BLAZEPOSE33
    from posesynth.datasets.plate import arm_part_indices

    names = [BLAZEPOSE33.keypoints[i] for i in arm_part_indices(BLAZEPOSE33, "left")]
    assert sorted(names) == ["left_elbow", "left_index", "left_pinky", "left_thumb", "left_wrist"]
    assert [L.keypoints[i] for i in arm_part_indices(L, "right")] == ["right_wrist", "right_elbow"]


def test_the_warp_fills_what_the_arm_left_from_the_plate_and_keeps_the_body_inpainted():
    """Moving the left arm up: the background the arm uncovers is the scene's own where the plate
    saw it; the torso and the other arm are never filled from the plate; without a plate, the
    inpainting cannot guess the texture.  (How the rest is inpainted: the next test.)"""
    bg, frames = _clip()
    plate = build_plate(frames, L)
    kp = _person(dx=8.0, arm_angle=40.0)
    img = _draw(bg, kp)
    new = kp.copy()
    new[0, L.index("left_elbow"), :2] = kp[0, L.index("left_shoulder"), :2] + (20, -20)
    new[0, L.index("left_wrist"), :2] = kp[0, L.index("left_shoulder"), :2] + (38, -40)
    with_plate, without = WarpRenderer(L, background=plate), WarpRenderer(L)
    out, alpha, hole, drawn = with_plate.render_pose(img, kp, new)
    ref, _, hole_ref, _ = without.render_pose(img, kp, new)
    assert with_plate.stats["moved"] == 1 and np.array_equal(hole, hole_ref)
    body = kp.copy()
    body[0, [L.index("left_elbow"), L.index("left_wrist")], 2] = 0
    on_body = person_mask(body, L, img.shape[:2])
    free = hole & (alpha == 0)
    seen = free & plate.known & ~on_body
    assert seen.sum() > 100
    assert np.array_equal(out[seen], bg[seen])                            # the scene itself
    assert np.abs(ref[seen].astype(int) - bg[seen]).mean() > 10          # inpainting guesses
    # the body: inpainted (from around it, the plate's part put in first), never the plate's wall
    assert (out[free & on_body] != bg[free & on_body]).any(-1).mean() >= 0.95
    assert np.array_equal(out[~hole & (alpha == 0)], img[~hole & (alpha == 0)])


def _locate(img, hole, crop):
    """Where the box ``crop`` (an image handed to an inpainting) lies in ``img``: the one offset
    at which it equals ``img`` outside ``hole``."""
    h, w = crop.shape[:2]
    at = [(y, x) for y in range(img.shape[0] - h + 1) for x in range(img.shape[1] - w + 1)
          if np.array_equal(img[y:y + h, x:x + w][~hole[y:y + h, x:x + w]], crop[~hole[y:y + h, x:x + w]])]
    assert len(at) == 1
    return at[0]


@pytest.mark.parametrize("inpainting", ["telea", "callable"])
def test_the_rest_of_the_hole_is_inpainted_with_the_plate_s_scene_put_in_first(inpainting, monkeypatch):
    """An arm hanging beside the body (as the squats clip's hands beside the hips): the plate
    fills the hole where it saw the scene away from the body, and only the rest is inpainted,
    from around it with that scene already in the picture: the inpainting (OpenCV's, or a given
    one) is handed the image with the plate's part filled and the rest of the hole alone.
    (Inpainting the whole hole from its outer edge first brought the trousers' black into the
    middle of the hole, and the plate's part then ended in a hard edge against it.)"""
    from posesynth.augment import renderers

    bg, frames = _clip()
    plate = build_plate(frames, L)
    kp = _person(dx=8.0, arm_angle=60.0)      # the left arm down beside the torso
    img = _draw(bg, kp)
    new = kp.copy()
    new[0, L.index("left_elbow"), :2] = kp[0, L.index("left_shoulder"), :2] + (20, -20)
    new[0, L.index("left_wrist"), :2] = kp[0, L.index("left_shoulder"), :2] + (38, -40)
    handed = []
    if inpainting == "telea":
        real = renderers.telea_fill

        def record(image, hole, radius, *a, **k):
            handed.append((image.copy(), hole.copy()))
            return real(image, hole, radius, *a, **k)

        monkeypatch.setattr(renderers, "telea_fill", record)
        r = WarpRenderer(L, background=plate)
    else:
        def fill(image, hole, kps):   # an inpainting that records what it is given
            handed.append((image.copy(), hole.copy()))
            return cv2.inpaint(image, hole, 3, cv2.INPAINT_TELEA)

        r = WarpRenderer(L, background=plate, fill=fill)
    out, alpha, hole, _ = r.render_pose(img, kp, new)
    assert r.stats["moved"] == 1 and len(handed) == 1
    body = kp.copy()
    body[0, [L.index("left_elbow"), L.index("left_wrist")], 2] = 0
    plate_part = hole & plate.known & ~person_mask(body, L, img.shape[:2])
    assert plate_part.sum() > 50 and (hole & ~plate_part).sum() > 50
    image, rest = handed[0]
    y0, x0 = _locate(img, hole, image)
    h, w = rest.shape
    full_rest = np.zeros(hole.shape, bool)
    full_rest[y0:y0 + h, x0:x0 + w] = rest > 0
    full_image = img.copy()
    full_image[y0:y0 + h, x0:x0 + w] = image
    assert np.array_equal(full_rest, hole & ~plate_part)                         # only the rest is inpainted
    assert np.array_equal(full_image[plate_part], bg[plate_part])               # with the scene put in
    assert np.array_equal(out[plate_part & (alpha == 0)], bg[plate_part & (alpha == 0)])


def test_a_plate_of_another_size_is_not_used():
    bg, frames = _clip()
    plate = build_plate(frames, L)
    kp = _person(dx=8.0, arm_angle=40.0)
    big = cv2.resize(_draw(bg, kp), (2 * SIZE, 2 * SIZE))
    k2 = kp.copy()
    k2[..., :2] *= 2
    new = k2.copy()
    new[0, L.index("left_wrist"), 1] -= 60
    a = WarpRenderer(L, background=plate).render_pose(big, k2, new)[0]
    b = WarpRenderer(L).render_pose(big, k2, new)[0]
    assert np.array_equal(a, b)


def test_a_refine_run_keeps_its_plate_and_renders_with_it(tmp_path):
    from posesynth.augment.refine import refine_trainer
    from posesynth.augment.renderers import make_renderer
    from posesynth.datasets.coco import write_coco
    from posesynth.datasets.sample import Sample
    from posesynth.spade.config import GANConfig

    bg, frames = _clip(8)
    write_coco(tmp_path / "clip", [Sample(im, kp, np.zeros((1, SIZE, SIZE), np.uint8)) for im, kp in frames], L)
    cfg = GANConfig(mode="refine", data=str(tmp_path / "clip"), background=str(tmp_path / "clip"), crop_size=64,
                    ngf=8, ndf=8, spade_hidden=16, batch_size=2, steps=1, vgg="off", device="cpu")
    t = refine_trainer(cfg, tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "background.png").exists()
    t.fit()
    r = make_renderer("refine", L, str(tmp_path / "r"))
    assert r.warp.background is not None and r.describe()["background"]["frames"] == 8
    assert np.array_equal(r.warp.background.known, build_plate(frames, L).known)
    assert make_renderer("refine", L, str(tmp_path / "r"), background=False).warp.background is None
    # resumed with another plate, or none: refused; a plate of another size: refused
    from dataclasses import replace

    with pytest.raises(ConfigError, match="trained with --background"):
        refine_trainer(replace(cfg, background="", steps=2), tmp_path / "r", resume=True, progress=False)
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(ConfigError, match="60x50, but the training images are 160x160"):
        refine_trainer(replace(cfg, background=str(tmp_path / "small.png")), tmp_path / "r2", progress=False)


def test_refine_training_fills_from_the_plate_cropped_with_each_sample(monkeypatch):
    """Erase-and-reconstruct samples of a static clip: inside M, away from the body, W is the
    scene the plate saw (cropped, resized and flipped with the sample), not an inpainting; the
    rest of M is inpainted with that scene put in first, as the warp does."""
    from posesynth.augment import refine
    from posesynth.augment.refine import RefineCropDataset
    from posesynth.datasets.posemaps import PoseMapSpec
    from posesynth.datasets.torch_dataset import tensor_to_image

    bg, frames = _clip()

    Clip = _source(frames)

    plate = build_plate(frames, L)
    handed = []
    real_fill = refine.telea_fill

    def record(image, hole, radius, *a, **k):
        handed.append((image.copy(), hole.copy()))
        return real_fill(image, hole, radius, *a, **k)

    monkeypatch.setattr(refine, "telea_fill", record)
    errs = {}
    for name, p in (("plate", plate), ("none", None)):
        ds = RefineCropDataset(Clip(), crop_size=64, fill_share=1.0, spec=PoseMapSpec(size=(64, 64)), seed=3,
                               background=p)
        e = []
        for i in range(len(frames)):
            item = ds[(i, 0)]
            w, truth = tensor_to_image(item["warped"][None])[0], tensor_to_image(item["image"][None])[0]
            assert item["source_index"] == i   # a fill sample is made of the image asked for
            box = tuple(int(v) for v in item["crop_box"])   # where the sample's crop came from
            flip = bool(item["flipped"])
            real = crop(frames[i][0], box, 64)      # the truth is the frame's crop there
            assert np.abs(truth.astype(int) - (real[:, ::-1] if flip else real)).max() <= 1
            person = cv2.dilate((frames[i][0] != bg).any(-1).astype(np.float32), np.ones((5, 5), np.uint8))
            scene = crop(person, box, 64) == 0      # area averaging, as the image: no person in the footprint
            if flip:
                scene = scene[:, ::-1]
            # away from the torso and head (where the plate is not used), where the plate saw the scene
            body = to_crop(frames[i][1], box, 64)
            if flip:
                body = body[:, L.flip_index]
                body[..., 0] = 63 - body[..., 0]
            body[:, [L.index(n) for n in ("right_elbow", "right_wrist", "left_elbow", "left_wrist")], 2] = 0
            far = ~person_mask(body, L, (64, 64)) & plate.crop(box, 64, flip).known
            m = (item["region"][0].numpy() > 0) & scene & far
            e.append(np.abs(w[m].astype(int) - truth[m]).mean(-1))
            if p is not None and handed:   # what the inpainting was handed: the plate's part put in, the rest
                image, hole = handed.pop()
                plate_part = (item["region"][0].numpy() > 0) & far
                pc = plate.crop(box, 64, flip)
                assert not (hole.astype(bool) & plate_part).any()
                assert np.array_equal(image[plate_part], pc.image[plate_part])
            handed.clear()
        errs[name] = np.concatenate(e)
    # where the erased area shows the scene in the truth, the plate gives it back; inpainting guesses
    assert len(errs["plate"]) >= 200
    assert np.mean(errs["plate"] <= 2) >= 0.9 and np.mean(errs["none"] <= 2) <= 0.2, {
        k: np.mean(v <= 2) for k, v in errs.items()}


def test_a_plate_of_another_scene_is_not_used():
    """Same size, another scene (a refine run's plate on another camera's video): the scene
    around the hole disagrees with the plate, so the warp inpaints as without one, and says so."""
    bg, frames = _clip()
    plate = build_plate(frames, L)
    kp = _person(dx=8.0, arm_angle=40.0)
    img = _draw(_background(seed=5), kp)
    new = kp.copy()
    new[0, L.index("left_wrist"), 1] -= 30
    r = WarpRenderer(L, background=plate)
    a = r.render_pose(img, kp, new)[0]
    assert np.array_equal(a, WarpRenderer(L).render_pose(img, kp, new)[0])
    assert r.stats["moved"] == 1 and r.describe()["background"]["disagrees"] == 1


def test_generate_renders_a_static_clip_with_its_plate(tmp_path):
    """``generate --background CLIP`` end to end: the plate is built from the clip, recorded with
    the settings, and refused where it cannot serve (the gan renderer)."""
    import json

    from posesynth.augment.generate import GenerateConfig, generate_dataset
    from posesynth.datasets.coco import write_coco
    from posesynth.datasets.sample import Sample

    bg, frames = _clip(6)
    write_coco(tmp_path / "clip", [Sample(im, kp, np.zeros((1, SIZE, SIZE), np.uint8)) for im, kp in frames], L)
    outs = {}
    for name, b in (("plate", str(tmp_path / "clip")), ("none", "")):
        outs[name] = generate_dataset(GenerateConfig(data=str(tmp_path / "clip"), out=str(tmp_path / name),
                                                     per_image=1, background=b, device="cpu"), progress=False)
    info = json.loads(Path(outs["plate"]).read_text())
    assert len(info["images"]) == 6 and info["info"]["background"] == str((tmp_path / "clip").resolve())
    # where the two renders differ, the one with the plate is the scene (up to JPEG)
    err = {k: [] for k in outs}
    for im in info["images"]:
        a, b = (cv2.cvtColor(cv2.imread(str(Path(outs[k]).parent / "images" / im["file_name"].split("/")[-1])),
                             cv2.COLOR_BGR2RGB).astype(int) for k in ("plate", "none"))
        d = np.abs(a - b).max(-1) > 30
        err["plate"].append(np.abs(a[d] - bg[d]).mean() if d.any() else 0.0)
        err["none"].append(np.abs(b[d] - bg[d]).mean() if d.any() else 0.0)
    assert np.mean(err["plate"]) < 0.4 * np.mean(err["none"]) and np.mean(err["none"]) > 25, err
    with pytest.raises(ConfigError, match="warp and refine"):
        generate_dataset(GenerateConfig(data=str(tmp_path / "clip"), out=str(tmp_path / "g2"), renderer="gan",
                                        gan=str(tmp_path / "nothing"), background=str(tmp_path / "clip")),
                         progress=False)


def test_a_limb_bank_is_in_the_clip_order():
    """``LimbBank.from_source`` puts a clip's frames in time order (distinct ``frame_id`` values,
    else distinct integer image ids, else the dataset's order), so refine mode's leave-out window (a frame and
    those either side of it, by bank index) is its neighbours in time, however the dataset lists
    its images."""
    from posesynth.augment.renderers import LimbBank

    _, frames = _clip(6)
    listed = [3, 0, 5, 1, 4, 2]   # the dataset's order of the clip's frames

    def bank(ids):
        return LimbBank.from_source(_source(frames, listed, ids)())

    def order(b):
        return [next(t for t, (im, _) in enumerate(frames) if np.array_equal(im, f)) for f in b.images]

    assert order(bank(lambda t: {"image_id": 100 - t, "meta": {"frame_id": t}})) == list(range(6))  # frame_id first
    assert order(bank(lambda t: {"image_id": 10 + t})) == list(range(6))
    assert order(bank(lambda t: {"image_id": 1})) == listed                   # no usable order: as listed
    assert order(bank(lambda t: {"image_id": f"f{t}"})) == listed
    # two clips each numbered from 0 (frame_ids repeat): not interleaved, by image id here
    assert order(bank(lambda t: {"image_id": 10 + t, "meta": {"frame_id": t % 3}})) == list(range(6))
    assert order(bank(lambda t: {"image_id": 1, "meta": {"frame_id": t % 3}})) == listed
    b = bank(lambda t: {"image_id": 10 + t})
    kps = np.stack([np.asarray(k).reshape(b.keypoints.shape[2:]) for _, k in frames])
    assert np.array_equal(b.keypoints[:, 0], kps)


def test_a_pair_leaves_out_the_bank_s_frames_near_its_own_in_time():
    """``render-quality --pairs`` with a bank that holds the clip: pair (i, j) leaves out the
    bank's frames equal to the clip's frames within N of i and of j in time (the clip listed out
    of order, its frame ids giving the order), every copy of a repeated frame, and the bank's
    frames within N of i's and j's own in the bank's order; a frame not in the clip stays."""
    from posesynth.augment.render import _bank_leave_out
    from posesynth.augment.renderers import LimbBank

    _, frames = _clip(8)
    listed = [3, 0, 5, 1, 7, 4, 2, 6]
    src = _source(frames, listed, lambda t: {"meta": {"frame_id": t}})()
    # the bank: frames 0-7 in time, frame 5 again (8), and a frame the clip does not hold (9)
    imgs = [f[0] for f in frames] + [frames[5][0], frames[0][0] + 1]
    kps = np.stack([f[1] for f in frames] + [frames[5][1], frames[0][1]])
    near = _bank_leave_out(LimbBank(imgs, kps, L), src, 1)
    at = {t: listed.index(t) for t in range(8)}    # where frame t is in the clip's listing
    assert near.held == 8
    assert near(at[2], at[6]) == {1, 2, 3, 5, 6, 7, 8}
    assert near(at[0], at[7]) == {0, 1, 6, 7, 8}   # (8 is 7's neighbour in the bank)
    bank = LimbBank(imgs[:8] + imgs[:8], np.concatenate([kps[:8], kps[:8]]), L)   # the clip twice over
    assert _bank_leave_out(bank, src, 0)(at[3], at[4]) == {3, 4, 11, 12}          # every copy
    assert _bank_leave_out(LimbBank(imgs[9:], kps[9:], L), src, 2) is None


def test_pairs_and_generate_with_a_limb_bank(tmp_path):
    """``render-quality --pairs CLIP --limb-bank BANK`` and ``generate --limb-bank`` end to end,
    on a static clip whose left arm takes four angles, with its plate. The bank is a second take
    of the same four poses (one grey level brighter): it holds each target's arm, so the warp
    moves a real arm of the new pose by an identity and scores closer to the real targets inside
    the arm region. With the clip itself as the bank, each pair's frames are left out of it (the
    renders would copy the targets); generate records the bank with its settings and the gan renderer refuses it."""
    import json

    from conftest import run_cli
    from posesynth.augment.generate import GenerateConfig, generate_dataset
    from posesynth.datasets.coco import write_coco
    from posesynth.datasets.sample import Sample

    bg = _background()
    kps = [_person(arm_angle=t * 30.0 - 10.0) for t in range(4)]
    frames = [Sample(_draw(bg, k), k, np.zeros((1, SIZE, SIZE), np.uint8)) for k in kps]
    write_coco(tmp_path / "clip", frames, L)
    write_coco(tmp_path / "take2", [Sample(f.image + 1, f.keypoints, f.masks) for f in frames], L)
    psnr = {}
    for name, bank in (("plain", []), ("bank", ["--limb-bank", tmp_path / "take2"])):
        r = run_cli("render-quality", "--pairs", tmp_path / "clip", "--out", tmp_path / name, "--renderer", "warp",
                    "--num", "0", "--background", tmp_path / "clip", *bank)
        assert r.returncode == 0, r.stderr
        res = json.loads((tmp_path / name / "pairs.json").read_text())
        psnr[name] = res["renderers"]["warp"]["psnr"]
        if bank:
            used = res["renderers"]["warp"]["describe"]["bank"]
            assert used["frames"] == 4 and used["used"] == res["renderers"]["warp"]["describe"]["moved"] > 0, used
    # (not all the way to the target: the shoulder's disk is kept and the upper arm fades in from it
    # over the inpainted old arm there, for either warp)
    assert psnr["bank"] > psnr["plain"] + 2, psnr
    # a bank that holds the clip: each pair leaves out its own frames and those near them. Arms at 0
    # and 60 degrees as the clip, with a bank of arms at 0, 5, 55 and 60 degrees, render exactly as
    # with a bank of the 5 and 55 degree frames only (which are nearer the targets than the sources)
    near = [Sample(_draw(bg, k), k, np.zeros((1, SIZE, SIZE), np.uint8))
            for k in (_person(arm_angle=t) for t in (0.0, 5.0, 55.0, 60.0))]
    write_coco(tmp_path / "four", near, L)
    write_coco(tmp_path / "ends", [near[0], near[3]], L)
    write_coco(tmp_path / "inner", near[1:3], L)
    per = {}
    for name, bank, extra in (("own", tmp_path / "four", ["--bank-leave-out", "0"]), ("inner", tmp_path / "inner", [])):
        r = run_cli("render-quality", "--pairs", tmp_path / "ends", "--out", tmp_path / name, "--renderer", "warp",
                    "--num", "0", "--background", tmp_path / "clip", "--limb-bank", bank, *extra)
        assert r.returncode == 0, r.stderr
        res = json.loads((tmp_path / name / "pairs.json").read_text())
        per[name] = [(p["source"], p["target"], p["warp_psnr"]) for p in res["per_pair"]]
    assert len(per["own"]) == 2 and per["own"] == per["inner"], per
    assert res["renderers"]["warp"]["describe"]["bank"]["used"] > 0     # the bank's arms were used
    # the whole clip leaves out every frame of each pair within 2 frames (the default): no bank is left
    r = run_cli("render-quality", "--pairs", tmp_path / "clip", "--out", tmp_path / "own2", "--renderer", "warp",
                "--num", "0", "--background", tmp_path / "clip", "--limb-bank", tmp_path / "clip")
    assert r.returncode == 0 and "holds frames of" in r.stderr and "--bank-leave-out" in r.stderr, r.stderr
    res = json.loads((tmp_path / "own2" / "pairs.json").read_text())
    assert res["bank_leave_out"] == {"frames": 2, "clip_frames_in_bank": 4, "pairs_without_bank": res["pairs"]}
    assert res["renderers"]["warp"]["psnr"] == psnr["plain"]
    from posesynth import Augmenter

    aug = Augmenter("driver9", limb_bank=tmp_path / "take2", seed=0)   # the Python API reads the same folder
    assert aug.renderer.bank is not None and len(aug.renderer.bank.images) == 4
    with pytest.raises(ConfigError, match="limb_bank is for the warp and refine"):
        Augmenter("driver9", renderer="gan", gan=str(tmp_path / "nothing"), limb_bank=tmp_path / "take2")
    out = generate_dataset(GenerateConfig(data=str(tmp_path / "clip"), out=str(tmp_path / "g"), per_image=1,
                                          limb_bank=str(tmp_path / "take2"), device="cpu"), progress=False)
    assert json.loads(Path(out).read_text())["info"]["limb_bank"] == str((tmp_path / "take2").resolve())
    with pytest.raises(ConfigError, match="warp and refine"):
        generate_dataset(GenerateConfig(data=str(tmp_path / "clip"), out=str(tmp_path / "g2"), renderer="gan",
                                        gan=str(tmp_path / "nothing"), limb_bank=str(tmp_path / "clip")),
                         progress=False)


def test_refine_round_trips_move_the_bank_s_arms_but_never_the_image_s_own_frame(tmp_path):
    """``train-gan --mode refine --limb-bank``: each round trip's warp is given the bank cropped,
    resized and mirrored with the sample (a frame's cropped keypoints lie on its drawn arm), less
    the image's own frame and the 2 frames either side of it; the bank's arms are moved in some
    round trips; a run trains with it and keeps it on resume."""
    from dataclasses import replace

    from posesynth.augment.refine import RefineCropDataset, refine_trainer
    from posesynth.augment.renderers import LimbBank
    from posesynth.datasets.coco import write_coco
    from posesynth.datasets.posemaps import PoseMapSpec
    from posesynth.datasets.torch_dataset import tensor_to_image
    from posesynth.spade.config import GANConfig

    n = 12
    bg, frames = _clip(n)
    green = np.array([60, 200, 60])
    for im, k in frames:   # the left arm green, so a mirrored crop's left and right can be told apart
        p = {j: tuple(int(round(v)) for v in k[0, L.index(f"left_{j}"), :2]) for j in ("shoulder", "elbow", "wrist")}
        cv2.line(im, p["shoulder"], p["elbow"], green.tolist(), 9)
        cv2.line(im, p["elbow"], p["wrist"], green.tolist(), 9)

    Clip = _source(frames)

    with pytest.raises(ValueError, match="bank_leave_out"):
        RefineCropDataset(Clip(), crop_size=64, bank_leave_out=-1)
    bank = LimbBank([im for im, _ in frames], np.stack([k for _, k in frames]), L)
    ds = RefineCropDataset(Clip(), crop_size=64, fill_share=0.0, spec=PoseMapSpec(size=(64, 64)), seed=5,
                           background=build_plate(frames, L), bank=bank)
    skin = np.array([225, 175, 140])
    flips = set()
    for i in range(n):
        item = ds[(i, 0)]
        assert item["source_index"] == i
        truth = tensor_to_image(item["image"][None])[0]
        seen = ds.warp.bank
        assert seen.size == (64, 64)
        others = [j for j in range(n) if abs(j - i) > 2]
        assert len(seen.images) == len(others)
        flip = bool(item["flipped"])
        flips.add(flip)
        for k, j in enumerate(others):
            im = seen.images[k]
            assert not np.array_equal(im, truth)   # never the image's own frame
            want = crop(frames[j][0], tuple(int(v) for v in item["crop_box"]), 64)
            assert np.array_equal(im, want[:, ::-1] if flip else want)   # cropped like the sample
            # the frame's keypoints, cropped (and mirrored: a mirrored person's left arm is its right,
            # as the sample's own keypoints are), lie on the drawn arm in the cropped pixels
            for name in ("left_elbow", "right_elbow"):
                x, y = np.round(seen.keypoints[k, 0, L.index(name), :2]).astype(int)
                colour = green if (name == "left_elbow") != flip else skin
                if 0 <= x < 64 and 0 <= y < 64:
                    assert np.abs(im[y, x].astype(int) - colour).max() <= 40, (i, j, name, flip, im[y, x])
    assert flips == {False, True}
    assert ds.warp.stats.get("bank", 0) > 0   # the bank's arms were moved in some round trips

    # a run trains with it; a resume with another bank, or a bank without a plate, is refused
    write_coco(tmp_path / "clip", [Clip()[i] for i in range(n)], L)
    cfg = GANConfig(mode="refine", data=str(tmp_path / "clip"), background=str(tmp_path / "clip"),
                    limb_bank=str(tmp_path / "clip"), crop_size=64, ngf=8, ndf=8, spade_hidden=16, batch_size=2,
                    steps=1, vgg="off", device="cpu")
    refine_trainer(cfg, tmp_path / "r", progress=False).fit()
    with pytest.raises(ConfigError, match="trained with --limb-bank"):
        refine_trainer(replace(cfg, limb_bank="", steps=2), tmp_path / "r", resume=True, progress=False)
    with pytest.raises(ConfigError, match="trained with --bank-body true"):
        refine_trainer(replace(cfg, bank_body=False, steps=2), tmp_path / "r", resume=True, progress=False)
    assert not refine_trainer(replace(cfg, bank_body=False), tmp_path / "r_arms", progress=False).dataset.bank.body
    with pytest.raises(ConfigError, match="with --background"):
        replace(cfg, background="").validate()


def test_an_old_hand_s_fingers_past_its_capsule_are_erased_with_the_arm():
    """A hand whose fingers reach past the hand's capsule (0.35 forearms beyond the wrist, plus a
    radius): when the arm moves up, the fingers' pixels become the scene (the plate's), not a
    floating piece of hand, through the renderer's call (its region M grows to cover them); with
    ``hand_rest=0`` (the cut-out alone) they stay.  A blue thing held past the fingers is not
    the hand's colour and stays, as does a skin-coloured speck beside them that does not join
    the hand; nothing of the body is taken for a hand."""
    from posesynth.datasets.torch_dataset import image_to_tensor, tensor_to_image

    bg, frames = _clip()
    plate = build_plate(frames, L)
    kp = _person(dx=8.0, arm_angle=60.0)
    img = _draw(bg, kp)
    e, w = kp[0, L.index("left_elbow"), :2], kp[0, L.index("left_wrist"), :2]
    fingers = np.zeros(img.shape[:2], np.uint8)
    cv2.line(fingers, tuple(int(v) for v in w + (w - e) * 0.3), tuple(int(v) for v in w + (w - e) * 1.05), 1, 5)
    img[fingers > 0] = (225, 175, 140)
    held = np.zeros(img.shape[:2], np.uint8)                     # a blue thing just past the fingers
    cv2.circle(held, tuple(int(v) for v in w + (w - e) * 1.2), 4, 1, -1)
    held &= fingers == 0
    img[held > 0] = (20, 40, 230)
    u = (w - e) / np.linalg.norm(w - e)
    speck = np.zeros(img.shape[:2], np.uint8)                   # skin-coloured, apart from the hand
    cv2.circle(speck, tuple(int(v) for v in w + u * 23 + np.array([-u[1], u[0]]) * 8), 2, 1, -1)
    img[speck > 0] = (225, 175, 140)
    new = kp.copy()
    new[0, L.index("left_elbow"), :2] = kp[0, L.index("left_shoulder"), :2] + (20, -20)
    new[0, L.index("left_wrist"), :2] = kp[0, L.index("left_shoulder"), :2] + (38, -40)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    t = ((xs - w[0]) * (w - e)[0] + (ys - w[1]) * (w - e)[1]) / float(np.sum((w - e) ** 2))
    past = (fingers > 0) & (t > 0.8) & plate.known                # past the hand's capsule
    x = image_to_tensor(img)[None]
    m = torch.zeros(1, L.num_masks, SIZE, SIZE)
    renders = {}
    for rest in (0.9, 0.0):
        r = WarpRenderer(L, background=plate, hand_rest=rest)
        rd = r(x, m, kp[None], new[None])
        renders[rest] = (tensor_to_image(rd.images)[0], rd.region[0, 0].numpy(), r.last_limb[0])
    (out, region, alpha), (left, region0, _) = renders[0.9], renders[0.0]
    free = past & (alpha == 0)
    assert free.sum() > 10
    assert np.array_equal(out[free], bg[free])                    # the scene where the fingers were
    assert bool((region[free] > 0).all()) and not (region0[free] > 0).all()
    assert (left[free] == img[free]).all(-1).mean() > 0.8         # the cut-out alone leaves them
    inner = held.astype(bool) & ~_grow(fingers.astype(bool), 2)
    assert inner.sum() > 10 and np.array_equal(out[inner], img[inner])   # not the hand's colour
    assert speck.sum() >= 9 and np.array_equal(out[speck > 0], img[speck > 0])   # not joined to the hand
    torso = person_mask(np.where(np.isin(np.arange(9), [L.index("left_elbow"), L.index("left_wrist")])[None, :, None],
                                 0, kp), L, img.shape[:2])
    assert np.array_equal(out[torso & (region0 == 0)], img[torso & (region0 == 0)])   # the body is not


def _grow(mask, px):
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0
