"""Real datasets and bad input as they come (issue 12): layouts from categories, skeleton and id
checks, image folders, out-of-frame labels, name-based conversion, export to COCO, no tracebacks.

Each case is a small hand-made file; the expected values come from geometry or from the file
itself, not from the code under test.
"""
import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from posesynth.cli import main
from posesynth.datasets.convert import conversion_matrix
from posesynth.datasets.export import convert_dataset
from posesynth.datasets.formats import open_dataset
from posesynth.datasets.layouts import COCO17, DRIVER9, KeypointLayout, get_layout, infer_flip_pairs
from posesynth.datasets.reading import ImageResolver, read_image
from posesynth.datasets.sample import Sample
from posesynth.datasets.transforms import HorizontalFlip, RandomAffine
from posesynth.errors import DatasetError, LayoutError

W, H = 64, 48
CROWD14 = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
           "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


def person(k, rng, w=W, h=H):
    """k keypoints inside a w x h image, all visible: a flat [x, y, v] * k list."""
    xy = np.stack([rng.uniform(2, w - 3, k), rng.uniform(2, h - 3, k)], 1).round(1)
    return [float(v) for p in np.concatenate([xy, np.full((k, 1), 2.0)], 1) for v in p]


def write_dataset(root, names, people_per_image=(1, 2), skeleton=(), cat_name="person", rng=None,
                  file_names=None, image_folder="images", **cat_extra):
    """A COCO dataset folder with tiny PNG images; returns the annotation file's path."""
    rng = rng or np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, n in enumerate(people_per_image):
        fname = file_names[i] if file_names else f"{i + 1:06d}.png"
        path = root / image_folder / fname if image_folder else root / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": fname, "width": W, "height": H})
        for _ in range(n):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "keypoints": person(len(names), rng), "num_keypoints": len(names)})
    cat = {"id": 1, "name": cat_name, "keypoints": list(names), "skeleton": [list(p) for p in skeleton], **cat_extra}
    ann = root / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [cat]}))
    return ann


def edit(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---- layouts from categories ----------------------------------------------------------------------
def test_17_point_skeleton_on_a_14_point_file_is_ignored_with_a_clear_note(tmp_path, caplog):
    ann = write_dataset(tmp_path / "crowd", CROWD14, skeleton=COCO_SKELETON)
    with caplog.at_level(logging.INFO):
        ds = open_dataset(ann)
    assert len(ds) == 2 and ds.layout.num_keypoints == 14
    assert ds.layout.limbs == ()                      # the skeleton that does not fit is ignored
    note = [n for n in ds.notes if "does not fit" in n]
    assert len(note) == 1 and str(ann) in note[0] and "COCO's 17-keypoint skeleton" in note[0]
    assert "outside 1..14" in note[0] and "[16, 14]" in note[0] and "--layout" in note[0]
    assert "(12, -1)" not in note[0]                  # the file's own numbers, not shifted ones
    assert sum("does not fit" in r.getMessage() for r in caplog.records) == 1   # said once


def test_layout_option_overrides_the_category(tmp_path):
    ann = write_dataset(tmp_path / "crowd", CROWD14, skeleton=COCO_SKELETON)
    yml = tmp_path / "crowd14.yaml"
    yml.write_text("name: crowd14\nkeypoints: [" + ", ".join(CROWD14) + "]\n"
                   "limbs: [[head, neck], [neck, left_shoulder], [left_shoulder, left_elbow]]\n")
    ds = open_dataset(ann, layout=yml)
    assert ds.layout.name == "crowd14" and len(ds.layout.limbs) == 3 and not ds.notes
    raw = json.loads(ann.read_text())["annotations"][0]["keypoints"]
    np.testing.assert_allclose(ds[0].keypoints[0].reshape(-1), raw, atol=1e-4)   # same order, no conversion
    # a layout with other names but as many keypoints takes them in order, and says so
    other = KeypointLayout("p14", tuple(f"p{i}" for i in range(14)), ((0, 1),))
    ds = open_dataset(ann, layout=other)
    np.testing.assert_allclose(ds[0].keypoints[0].reshape(-1), raw, atol=1e-4)
    assert any("taken in order" in n for n in ds.notes)


def test_zero_based_skeleton_gets_a_hint(tmp_path):
    names = ["head", "neck", "pelvis"]
    ann = write_dataset(tmp_path / "z", names, skeleton=[[0, 1], [1, 2]])
    ds = open_dataset(ann)
    assert ds.layout.limbs == ()
    assert any("looks 0-based" in n and str(ann) in n for n in ds.notes)
    ok = write_dataset(tmp_path / "o", names, skeleton=[[1, 2], [2, 3]])
    good = open_dataset(ok)
    assert good.layout.limbs == ((0, 1), (1, 2)) and not any("does not fit" in n for n in good.notes)


def test_flip_pairs_and_sigmas_inferred_from_names_match_coco17():
    # COCO's joints spelt in the ways other datasets spell them, shuffled, plus a joint COCO lacks
    spelt = {"nose": "Nose", "left_eye": "LEye", "right_eye": "REye", "left_ear": "ear_left", "right_ear": "ear_right",
             "left_shoulder": "Left Shoulder", "right_shoulder": "Right Shoulder", "left_elbow": "l_elbow",
             "right_elbow": "r_elbow", "left_wrist": "LEFT-WRIST", "right_wrist": "RIGHT-WRIST", "left_hip": "leftHip",
             "right_hip": "rightHip", "left_knee": "knee_l", "right_knee": "knee_r", "left_ankle": "left ankle",
             "right_ankle": "right ankle"}
    order = list(np.random.default_rng(3).permutation(list(spelt)))
    names = [spelt[n] for n in order] + ["head_top"]
    cat = {"id": 1, "name": "person", "keypoints": names, "skeleton": []}
    from posesynth.datasets.coco import derive_layout

    lay, notes = derive_layout(cat, "x.json")
    assert lay is not COCO17 and lay.can_flip
    got = {frozenset((order[a], order[b])) for a, b in lay.flip_pairs}
    want = {frozenset((COCO17.keypoints[a], COCO17.keypoints[b])) for a, b in COCO17.flip_pairs}
    assert got == want
    for i, n in enumerate(order):
        assert lay.sigmas[i] == COCO17.sigmas[COCO17.index(n)]
    assert lay.sigmas[-1] == 0.079 and any("'head_top'" in n and "sigma" in n for n in notes)
    assert not any("flip" in n for n in notes)


def test_sided_names_without_pairs_turn_flip_off(tmp_path, rng):
    lay = KeypointLayout("arm", ("left_hand", "right_foot", "head"), ((0, 2),))
    assert infer_flip_pairs(lay.keypoints) == ([], ["left_hand", "right_foot"])
    assert not lay.can_flip and KeypointLayout("sym", ("a", "b"), ()).can_flip and DRIVER9.can_flip
    kp = np.array([[[10, 20, 2], [50, 30, 2], [30, 5, 2]]], np.float32)
    s = Sample(np.zeros((H, W, 3), np.uint8), kp, None)
    out = RandomAffine(None, scale=(1, 1), aspect=(1, 1), rotate=0, translate=0, flip_prob=1.0, layout=lay)(s, rng)
    np.testing.assert_allclose(out.keypoints, kp)     # not mirrored: the left hand stays where it is
    np.testing.assert_allclose(HorizontalFlip(lay)(s, rng).keypoints, kp)
    # and a dataset whose category has such names says so once
    ann = write_dataset(tmp_path / "d", ["left_hand", "right_foot", "head"])
    ds = open_dataset(ann)
    assert not ds.layout.can_flip and any("horizontal flip is off" in n for n in ds.notes)


# ---- conversion by keypoint name -------------------------------------------------------------
def test_person_category_with_coco_names_converts_to_driver9(tmp_path):
    # PoseTrack-like: COCO's names with head_bottom/head_top for the eyes, in another order
    names = ["nose", "head_bottom", "head_top", "left_ear", "right_ear"] + list(COCO17.keypoints[5:])
    names = names[::-1]
    ann = write_dataset(tmp_path / "pt", names)
    ds = open_dataset(ann, layout="driver9")
    raw = np.array(json.loads(ann.read_text())["annotations"][0]["keypoints"]).reshape(-1, 3)
    s = ds[0]
    assert s.keypoints.shape == (1, 9, 3)
    for j, n in enumerate(DRIVER9.keypoints):
        if n == "neck":   # the midpoint of the shoulders
            want = (raw[names.index("left_shoulder"), :2] + raw[names.index("right_shoulder"), :2]) / 2
        else:
            want = raw[names.index(n), :2]
        np.testing.assert_allclose(s.keypoints[0, j, :2], want, atol=1e-4)
    # and to coco17: the eyes it lacks stay unlabelled, and that is said
    ds = open_dataset(ann, layout="coco17")
    assert (ds[0].keypoints[0, [1, 2], 2] == 0).all() and (ds[0].keypoints[0, 5:, 2] == 2).all()
    assert any("'left_eye', 'right_eye'" in n for n in ds.notes)
    with pytest.raises(LayoutError, match=r"pt/annotations.json: no conversion from layout 'person' to 'arm3'"):
        open_dataset(ann, layout=KeypointLayout("arm3", ("shoulder", "elbow", "wrist"), ()))


def test_conversion_matrix_by_name_is_spelling_blind():
    a = KeypointLayout("a", ("Left Shoulder", "RShoulder", "l_wrist", "right-wrist", "nose"), ())
    w = conversion_matrix(a, DRIVER9)
    assert w[DRIVER9.index("neck")].tolist() == [0.5, 0.5, 0, 0, 0]      # the shoulders' midpoint
    assert w[DRIVER9.index("left_wrist"), 2] == 1 and w[DRIVER9.index("right_shoulder"), 1] == 1


# ---- image folders --------------------------------------------------------------------------------
def test_images_prefix_is_never_doubled_and_roots_are_found(tmp_path):
    # file_name already starts with images/, the JSON is in the dataset folder
    ann = write_dataset(tmp_path / "a", CROWD14, file_names=["images/1.png", "images/sub/2.png"], image_folder="")
    assert (tmp_path / "a" / "images" / "sub" / "2.png").exists()
    ds = open_dataset(ann)
    assert len(ds) == 2 and ds.image_path(1) == tmp_path / "a" / "images" / "sub" / "2.png"
    # the JSON in annotations/, file names relative to the dataset root
    root = tmp_path / "b"
    write_dataset(root, CROWD14, file_names=["images/val/1.png", "images/val/2.png"], image_folder="")
    (root / "annotations").mkdir()
    shutil.move(root / "annotations.json", root / "annotations" / "val.json")
    assert len(open_dataset(root / "annotations" / "val.json")) == 2
    # --image-dir: given the folder the names start with, or its parent
    d = open_dataset(root / "annotations" / "val.json", image_dir=root / "images")
    assert d.image_path(0) == root / "images" / "val" / "1.png"
    assert len(open_dataset(root / "annotations" / "val.json", image_dir=root)) == 2
    with pytest.raises(DatasetError, match=r"elsewhere.*1.png: image file not found \(in --image-dir"):
        open_dataset(root / "annotations" / "val.json", image_dir=tmp_path / "elsewhere")


def test_image_resolver_order(tmp_path):
    (tmp_path / "images").mkdir()
    r = ImageResolver(tmp_path, None)
    c = r.candidates("images/x.jpg")
    assert c[0] == tmp_path / "images" / "x.jpg" and tmp_path / "images" / "images" / "x.jpg" in c
    assert ImageResolver(tmp_path, tmp_path / "imgs").candidates("a/b.jpg") == [tmp_path / "imgs" / "a" / "b.jpg"]


# ---- out-of-frame labels ------------------------------------------------------------------------
@pytest.fixture
def head_tops(tmp_path):
    """Image 1: two people, the first with its head top 3 px above the frame; image 2: one person."""
    ann = write_dataset(tmp_path / "pt", CROWD14, people_per_image=(2, 1))

    def fn(d):
        d["annotations"][0]["keypoints"][12 * 3:12 * 3 + 3] = [20.0, -3.0, 2]
    edit(ann, fn)
    return ann


@pytest.mark.parametrize("policy", ["unlabel", "clip", "skip-person", "skip-image"])
def test_out_of_frame_policies(head_tops, policy, caplog):
    anns = json.loads(head_tops.read_text())["annotations"]
    raw = [np.array(a["keypoints"], np.float32).reshape(14, 3) for a in anns]
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(head_tops, out_of_frame=policy)
    msgs = [r.getMessage() for r in caplog.records if "outside the image" in r.getMessage()]
    assert len(msgs) == 1 and "1 labelled keypoint of 1 person in 1 image" in msgs[0] and policy in msgs[0]
    assert ds.skipped == 0                            # handled by the policy, not an error
    if policy == "skip-image":
        assert len(ds) == 1 and ds[0].image_id == 2
        return
    s = ds[0]
    if policy == "skip-person":                       # the other person stays
        assert s.num_people == 1 and s.meta["ann_ids"] == [2]
        np.testing.assert_allclose(s.keypoints[0], raw[1])
        return
    assert s.num_people == 2
    np.testing.assert_allclose(s.keypoints[1], raw[1])
    np.testing.assert_allclose(np.delete(s.keypoints[0], 12, 0), np.delete(raw[0], 12, 0))
    want = [0, 0, 0] if policy == "unlabel" else [20, 0, 2]
    assert s.keypoints[0, 12].tolist() == want


# ---- ids -----------------------------------------------------------------------------------------
def test_duplicate_image_ids_and_unknown_image_ids(tmp_path, capsys, caplog):
    ann = write_dataset(tmp_path / "d", CROWD14, people_per_image=(1, 1, 2))

    def fn(d):
        d["images"][1]["id"] = d["annotations"][1]["image_id"] = 1   # images 1 and 2 share id 1
        d["annotations"].append(dict(d["annotations"][-1], id=99, image_id=42))   # no image 42
    edit(ann, fn)
    with pytest.raises(DatasetError, match=r"image id 1 is used by 2 image entries") as e:
        open_dataset(ann, on_error="raise")
    assert e.value.kind == "duplicate image id"
    ds = open_dataset(ann, on_error="skip")
    assert len(ds) == 1 and ds[0].image_id == 3 and ds[0].num_people == 2
    assert ds.problem_counts() == {"duplicate image id": 1, "unknown image id": 1}
    assert any("annotation 99 refers to image id 42" in m for m in ds.errors)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc, out, err = run_cli(capsys, "check", ann)
    assert rc == 1 and "1 usable images" in out and "2 skipped" in out
    assert "problems by kind: 1 duplicate image id, 1 unknown image id" in out
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for line in ("image id 1 is used by 2", "annotation 99 refers to image id 42"):
        assert (out + err + logged).count(line) == 1                 # each problem printed once


# ---- truncated images ----------------------------------------------------------------------------
def test_truncated_jpeg_is_detected_and_named(tmp_path, rng):
    ann = write_dataset(tmp_path / "d", CROWD14, people_per_image=(1, 1))
    img = (rng.integers(0, 255, (H, W, 3))).astype(np.uint8)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    edit(ann, lambda d: [im.update(file_name=f"{im['id']}.jpg") for im in d["images"]])
    (tmp_path / "d" / "images" / "1.jpg").write_bytes(jpg)
    (tmp_path / "d" / "images" / "2.jpg").write_bytes(jpg[: len(jpg) // 2])
    with pytest.raises(DatasetError, match=r"2.jpg: image file is truncated") as e:
        read_image(tmp_path / "d" / "images" / "2.jpg")
    assert e.value.kind == "truncated image"
    ds = open_dataset(ann, on_error="skip")                          # found at open, from the header check
    assert len(ds) == 1 and ds.problem_counts() == {"truncated image": 1}
    # data after the end marker (some cameras append it) is not a truncation
    (tmp_path / "d" / "images" / "2.jpg").write_bytes(jpg + b"\x00extra" * 300)
    assert len(open_dataset(ann)) == 2 and read_image(tmp_path / "d" / "images" / "2.jpg").shape == (H, W, 3)


# ---- empty or all-bad data, unwritable outputs ------------------------------------------------------
def test_empty_and_all_bad_data(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [],
                                 "categories": [{"id": 1, "name": "person", "keypoints": ["a", "b"]}]}))
    with pytest.raises(DatasetError, match=r"empty.json: no usable images \(0 listed; the file lists no images\)"):
        open_dataset(empty)
    assert len(open_dataset(empty, allow_empty=True)) == 0
    ann = write_dataset(tmp_path / "bad", CROWD14, people_per_image=(1, 1))
    for f in (tmp_path / "bad" / "images").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"no usable images \(2 listed; 2 problems \(2 missing image\) skipped\)"):
        open_dataset(ann, on_error="skip")
    rc, out, err = run_cli(capsys, "check", ann)
    assert rc == 2 and "no usable images" in err and "Traceback" not in err
    rc, out, err = run_cli(capsys, "show", ann, "--out", tmp_path / "g" / "grid.png")
    assert rc == 2 and "2 missing image" in err and not (tmp_path / "g").exists()
    rc, out, err = run_cli(capsys, "train-gan", "--data", empty, "--out", tmp_path / "run", "--size", "64")
    assert rc == 2 and "no usable images" in err and not (tmp_path / "run").exists()


def test_unwritable_outputs_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    ann = write_dataset(tmp_path / "d", CROWD14)
    rc, out, err = run_cli(capsys, "show", ann, "--out", blocker / "grid.png")
    assert rc == 2 and str(blocker) in err and len(err.strip().splitlines()) == 1
    rc, out, err = run_cli(capsys, "make-data", "--out", blocker / "data", "--num", "2", "--size", "64")
    assert rc == 2 and str(blocker) in err and "Traceback" not in err
    rc, out, err = run_cli(capsys, "convert", ann, "--out", blocker / "c")
    assert rc == 2 and str(blocker) in err
    rc, out, err = run_cli(capsys, "train-gan", "--data", ann, "--out", blocker / "run", "--size", "64",
                           "--ngf", "8", "--ndf", "8", "--vgg", "off", "--steps", "1")
    assert rc == 2 and str(blocker) in err.splitlines()[-1] and "Traceback" not in err


def test_error_policy_flag(tmp_path, capsys):
    ann = write_dataset(tmp_path / "d", CROWD14, people_per_image=(1, 1))
    (tmp_path / "d" / "images" / "000002.png").unlink()
    rc, out, err = run_cli(capsys, "show", ann, "--out", tmp_path / "g.png", "--on-error", "raise")
    assert rc == 2 and "000002.png: image file not found" in err and not (tmp_path / "g.png").exists()
    rc, out, err = run_cli(capsys, "show", ann, "--out", tmp_path / "g.png")      # default: skip
    assert rc == 0 and "1 samples of 1" in out and (tmp_path / "g.png").exists()


# ---- convert ----------------------------------------------------------------------------------------
def test_convert_fixtures(fixtures, tmp_path):
    coco = fixtures / "coco" / "test_coco.json"
    r = convert_dataset(coco, tmp_path / "coco", layout="driver9", progress=False)
    assert r["images"] == 4 and r["people"] == 14
    src, out = open_dataset(coco, layout="driver9"), open_dataset(tmp_path / "coco")
    assert out.layout == DRIVER9 and len(out) == 4
    raw = json.loads(coco.read_text())
    for a, b in zip(src, out):
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)
        np.testing.assert_array_equal(a.image, b.image)              # copied byte for byte
    bbox = {a["id"]: a["bbox"] for a in raw["annotations"]}
    for a in json.loads((tmp_path / "coco" / "annotations.json").read_text())["annotations"]:
        assert any(np.allclose(a["bbox"], b) for b in bbox.values())  # the source's boxes are kept

    mpii = fixtures / "mpii" / "test_mpii.json"
    convert_dataset(mpii, tmp_path / "mpii", progress=False)
    for a, b in zip(open_dataset(mpii), open_dataset(tmp_path / "mpii")):
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)


def test_convert_video_reads_frames_in_order(fixtures, tmp_path):
    src = fixtures / "squats" / "pose_squats.full.json"
    rc = main(["convert", str(src), "--out", str(tmp_path / "v"), "--every", "16", "--layout", "driver9"])
    assert rc == 0
    data = json.loads((tmp_path / "v" / "annotations.json").read_text())
    assert [im["frame_id"] for im in data["images"]] == [0, 16, 32, 48, 64]
    assert {im["video_id"] for im in data["images"]} == {"pose_squats"}
    assert all(a["track_id"] == 0 for a in data["annotations"])
    # the frames are the video's own: decode it in order and compare
    cap = cv2.VideoCapture(str(fixtures / "squats" / "pose_squats.mp4"))
    frames = []
    for _ in range(65):
        ok, f = cap.read()
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB) if ok else None)
    ds = open_dataset(tmp_path / "v")
    frames_json = json.loads(src.read_text())
    for s, im in zip(ds, data["images"]):
        ref = frames[im["frame_id"]]
        assert np.abs(s.image.astype(int) - ref).mean() < 3          # JPEG at quality 95
        ls = frames_json[im["frame_id"]][11][:2]                     # BlazePose 11: left shoulder
        np.testing.assert_allclose(s.keypoints[0, DRIVER9.index("left_shoulder"), :2], ls, atol=1e-2)


def test_convert_frame_range_splits_a_clip(fixtures, tmp_path, capsys):
    """--frames START:STOP keeps the frames with START <= frame < STOP (then every N-th of them):
    a training and a held-out part of one clip that share no frame."""
    src = fixtures / "squats" / "pose_squats.full.json"
    assert main(["convert", str(src), "--out", str(tmp_path / "train"), "--frames", "0:48", "--every", "16"]) == 0
    assert main(["convert", str(src), "--out", str(tmp_path / "held"), "--frames", "48:", "--every", "8"]) == 0
    ids = {k: [im["frame_id"] for im in json.loads((tmp_path / k / "annotations.json").read_text())["images"]]
           for k in ("train", "held")}
    assert ids == {"train": [0, 16, 32], "held": [48, 56, 64]}
    for bad in ("5:5", "70:"):
        rc, out, err = run_cli(capsys, "convert", src, "--out", tmp_path / f"bad{bad[0]}", "--frames", bad)
        assert rc == 2 and "--frames" in err and not (tmp_path / f"bad{bad[0]}").exists(), (bad, err)
    with pytest.raises(SystemExit) as e:                 # argparse: usage line and exit 2
        main(["convert", str(src), "--out", str(tmp_path / "badx"), "--frames", "x"])
    assert e.value.code == 2 and "is not START:STOP" in capsys.readouterr().err


def test_convert_refuses_a_used_output_and_leaves_nothing_on_empty_data(tmp_path, capsys):
    ann = write_dataset(tmp_path / "d", CROWD14)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    rc, out, err = run_cli(capsys, "convert", ann, "--out", tmp_path / "used")
    assert rc == 2 and "not empty" in err
    for f in (tmp_path / "d" / "images").iterdir():
        f.unlink()
    rc, out, err = run_cli(capsys, "convert", ann, "--out", tmp_path / "new")
    assert rc == 2 and "no usable images" in err and not (tmp_path / "new").exists()


def test_builtin_layouts_for_other_formats():
    assert get_layout("mpii16").num_keypoints == 16 and get_layout("blazepose33").can_flip
    assert len(get_layout("mpii16").flip_pairs) == 6 and len(get_layout("blazepose33").flip_pairs) == 16


def test_posetrack_and_ochuman_quirks(tmp_path):
    """Frames marked is_labeled: false are left out (said once); a person with null keypoints
    is a person with every keypoint unlabelled, not an error."""
    ann = write_dataset(tmp_path / "d", CROWD14, people_per_image=(1, 2, 1))

    def fn(d):
        d["images"][0]["is_labeled"] = False
        d["images"][0]["vid_id"] = "000342"
        d["annotations"][1]["keypoints"] = None
    edit(ann, fn)
    ds = open_dataset(ann)
    assert [s.image_id for s in ds] == [2, 3] and ds.skipped == 0
    assert any("1 image marked 'is_labeled': false" in n for n in ds.notes)
    s = ds[0]
    assert s.num_people == 2 and (s.keypoints[0, :, 2] == 0).all() and (s.keypoints[1, :, 2] == 2).all()
