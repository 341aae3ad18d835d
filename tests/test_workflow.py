"""A user's own workflow (issue 23): several datasets read as one, merge, the YOLO-pose export,
image lookup by file name, COCO results from predict, evaluate's outputs, the Python API,
render's page, frame rates of clips, and the help texts.

Expected values come from the formats' rules and the files themselves (COCO JSON, YOLO label
lines, the video container), not from the code under test.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest

from posesynth.cli import build_parser, main
from posesynth.datasets.formats import open_dataset
from posesynth.datasets.layouts import COCO17, DRIVER9
from posesynth.datasets.multi import MultiSource, split_sources
from posesynth.errors import ConfigError, DatasetError

W, H = 64, 48


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Two small synthetic driver9 datasets (6 and 4 images, 64 px)."""
    from posesynth.datasets.make_data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root / "a", 6, seed=3, size=64, passenger_prob=0.5, workers=1, progress=False)
    make_synthetic_dataset(root / "b", 4, seed=4, size=64, passenger_prob=0.0, workers=1, progress=False)
    return root


# ---- several datasets as one ------------------------------------------------------------------
def test_split_sources_rules(tmp_path):
    assert split_sources(tmp_path) is None
    assert split_sources("a,b:2,c:0.5") == [("a", 1.0), ("b", 2.0), ("c", 0.5)]
    assert split_sources("only:3") == [("only", 3.0)]
    odd = tmp_path / "x,y:2"          # a path that exists is one dataset, commas and colons included
    odd.mkdir()
    assert split_sources(odd) is None
    with pytest.raises(ConfigError, match="positive"):
        split_sources("a:0,b")
    with pytest.raises(ConfigError, match="empty dataset name"):
        split_sources("a,,b")


def test_coco_fixture_and_synthetic_data_read_as_one(fixtures, synth):
    coco = fixtures / "coco" / "test_coco.json"
    raw = json.loads(coco.read_text())
    ds = open_dataset(f"{coco}:2,{synth / 'a'}:0.5", layout="driver9")
    assert isinstance(ds, MultiSource) and ds.layout == DRIVER9
    # weight w: the part contributes round(w * n) items: 4 photos x 2, 6 scenes x 0.5
    assert len(ds) == 8 + 3
    seen = Counter()
    anns = ds.annotations()
    assert len(anns) == len(ds)
    for i in range(len(ds)):
        s = ds[i]
        seen[s.meta["source_index"]] += 1
        assert s.meta["source_dataset"] == (str(coco) if s.meta["source_index"] == 0 else str(synth / "a"))
        assert anns[i].dtype == np.float32 and anns[i].shape == s.keypoints.shape == (s.num_people, 9, 3)
        np.testing.assert_allclose(anns[i], s.keypoints)
    assert seen == {0: 8, 1: 3}
    # the COCO part's annotations are the file's, converted by name: driver9's right wrist is COCO's
    # right_wrist (index 10), its neck the midpoint of the shoulders (5, 6)
    by_image = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(np.asarray(a["keypoints"], np.float32).reshape(17, 3))
    part = ds.parts[0]
    for j in range(0, 8, 2):   # each photo twice, in order
        src = np.stack(by_image[part.entries[j // 2].image["id"]])
        got = anns[j]
        np.testing.assert_array_equal(anns[j], anns[j + 1])
        lab = src[:, 10, 2] > 0
        np.testing.assert_allclose(got[lab, 0, :2], src[lab, 10, :2])
        both = (src[:, 5, 2] > 0) & (src[:, 6, 2] > 0)
        np.testing.assert_allclose(got[both, 3, :2], (src[both, 5, :2] + src[both, 6, :2]) / 2, atol=1e-4)
    # entries: what consumers read without decoding (people per image)
    assert [len(e.keypoints) for e in ds.entries] == [len(a) for a in anns]


def test_several_datasets_need_one_layout(fixtures, synth):
    coco = fixtures / "coco" / "test_coco.json"
    with pytest.raises(DatasetError, match=rf"{re.escape(str(synth / 'a'))}: layout 'driver9'.*--layout driver9"):
        open_dataset(f"{coco},{synth / 'a'}")


def test_cli_reads_a_list_of_datasets(synth, tmp_path, capsys):
    rc, out, _ = run_cli(capsys, "check", f"{synth / 'a'},{synth / 'b'}:2")
    assert rc == 0 and "14 usable images" in out
    rc, out, _ = run_cli(capsys, "convert", f"{synth / 'a'},{synth / 'b'}", "--out", tmp_path / "c")
    assert rc == 0 and len(open_dataset(tmp_path / "c")) == 10
    rc, _, err = run_cli(capsys, "check", f"{synth / 'a'},{tmp_path / 'nowhere'}")
    assert rc == 2 and "nowhere: no such file or folder" in err and len(err.strip().splitlines()) == 1


# ---- images in subfolders, found by file name --------------------------------------------------------
def _nested(root, names, folders):
    """A COCO file naming each image by its bare file name while the images sit in subfolders."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (name, folder) in enumerate(zip(names, folders)):
        path = root / "images" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "keypoints": [10.0, 10.0, 2] * 17, "num_keypoints": 17})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann = root / "annotations" / "h36m.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "person", "keypoints": list(COCO17.keypoints), "skeleton": []}]}))
    return ann


def test_images_in_subfolders_are_found_by_unique_name(tmp_path, monkeypatch):
    import posesynth.datasets.reading as reading

    names = ["S1_Directions_1.000001.jpg", "S1_Directions_1.000002.jpg", "S5_Walking.000001.jpg"]
    folders = ["S1/S1_Directions_1.54138969", "S1/S1_Directions_1.54138969", "S5/S5_Walking.60457274"]
    ann = _nested(tmp_path / "h36m", names, folders)
    walks = []
    real_walk = os.walk
    monkeypatch.setattr(reading.os, "walk", lambda top, *a, **k: (walks.append(top), real_walk(top, *a, **k))[1])
    ds = open_dataset(ann)
    assert len(ds) == 3
    for i, (name, folder) in enumerate(zip(names, folders)):
        assert ds.image_path(i) == tmp_path / "h36m" / "images" / folder / name
        assert ds[i].image.shape == (H, W, 3)
    assert len(walks) == len(set(walks)) <= 2          # the tree is indexed once, not per image
    # --image-dir: looked up below it
    ds = open_dataset(ann, image_dir=tmp_path / "h36m" / "images" / "S1", on_error="skip")
    assert len(ds) == 2 and ds.image_path(0).parent.name == "S1_Directions_1.54138969"
    assert "nor by name below it" in ds.errors[0] and "S5_Walking.000001.jpg" in ds.errors[0]


def test_ambiguous_file_names_are_named(tmp_path):
    ann = _nested(tmp_path / "d", ["a.jpg", "frame.jpg", "frame.jpg"], ["S1", "S1", "S2"])
    with pytest.raises(DatasetError, match=r"2 files named 'frame.jpg'.*ambiguous.*S1/frame.jpg.*S2/frame.jpg"):
        open_dataset(ann)
    ds = open_dataset(ann, on_error="skip", allow_empty=True)
    assert len(ds) == 1 and ds.problem_counts() == {"missing image": 2}


# ---- merge ------------------------------------------------------------------------------------------
def test_merge_round_trips_with_unique_ids(fixtures, synth, tmp_path, capsys):
    coco = fixtures / "coco" / "test_coco.json"
    # the COCO photos' ids (785, ...) and the scenes' (1..6, 1..4) overlap between b and a
    rc, out, _ = run_cli(capsys, "merge", synth / "a", synth / "b", coco, "--layout", "driver9", "--out", tmp_path / "m")
    assert rc == 0 and "14 images" in out
    data = json.loads((tmp_path / "m" / "annotations.json").read_text())
    ids = [im["id"] for im in data["images"]]
    assert len(set(ids)) == len(ids) == 14
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    srcs = [open_dataset(synth / "a"), open_dataset(synth / "b"), open_dataset(coco, layout="driver9")]
    expected = [(str(p), s) for p, src in zip((synth / "a", synth / "b", coco), srcs) for s in src]
    merged = open_dataset(tmp_path / "m")
    assert merged.layout == DRIVER9 and len(merged) == len(expected)
    by_id = {im["id"]: im for im in data["images"]}
    for m, (name, s) in zip(merged, expected):
        prov = by_id[m.image_id]["source"]
        assert prov == {"dataset": name, "file_name": s.file_name, "image_id": s.image_id}
        np.testing.assert_allclose(m.keypoints, s.keypoints, atol=1e-3)
        np.testing.assert_array_equal(m.masks, s.masks)                     # seatbelt masks carried over
        if name != str(coco):
            assert np.abs(m.image.astype(int) - s.image).max() == 0          # copied byte for byte
    # another layout without --layout: one line naming the file
    rc, _, err = run_cli(capsys, "merge", synth / "a", coco, "--out", tmp_path / "m2")
    assert rc == 2 and f"{coco}: layout 'coco17'" in err and not (tmp_path / "m2").exists()


# ---- YOLO-pose export -------------------------------------------------------------------------------
def _read_yolo(root):
    """The YOLO-pose folder read by its documented rules: data.yaml, and for each image in
    images/ the labels/ file of the same stem, one person per line."""
    import yaml

    cfg = yaml.safe_load((root / "data.yaml").read_text())
    k, dim = cfg["kpt_shape"]
    out = {}
    for img in sorted((root / cfg["train"]).iterdir()):
        h, w = cv2.imread(str(img)).shape[:2]
        rows = np.loadtxt(root / "labels" / (img.stem + ".txt"), ndmin=2)
        assert rows.shape[1] == 5 + k * dim and (rows[:, 0] == 0).all()
        kp = rows[:, 5:].reshape(-1, k, dim)
        coords = np.concatenate([rows[:, 1:5].ravel(), kp[..., :2].ravel()])
        assert (coords >= 0).all() and (coords <= 1).all()                     # normalised, in the image
        assert np.isin(kp[..., 2], (0, 1, 2)).all()
        box = rows[:, 1:5] * [w, h, w, h]
        kp = kp * [w, h, 1]
        out[img.name] = (box, kp)
    return cfg, out


def test_yolo_export_of_the_coco_fixture_reads_back_within_a_pixel(fixtures, tmp_path, capsys):
    coco = fixtures / "coco" / "test_coco.json"
    rc, out, _ = run_cli(capsys, "convert", coco, "--format", "yolo", "--out", tmp_path / "y")
    assert rc == 0 and "14 people" in out
    cfg, labels = _read_yolo(tmp_path / "y")
    assert cfg["kpt_shape"] == [17, 3] and cfg["names"] == {0: "person"} and cfg["val"] == "images"
    assert cfg["path"] == str((tmp_path / "y").resolve())
    # flip_idx: each keypoint's mirror by name
    names = list(COCO17.keypoints)
    mirror = [names.index(n.replace("left", "R").replace("right", "left").replace("R", "right")) for n in names]
    assert cfg["flip_idx"] == mirror
    raw = json.loads(coco.read_text())
    files = {im["id"]: im for im in raw["images"]}
    anns = {}
    for a in raw["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    assert len(labels) == 4
    for (box, kp), iid in zip(labels.values(), sorted(anns, key=lambda i: i)):
        src = anns[iid]
        assert len(kp) == len(src)
        w, h = files[iid]["width"], files[iid]["height"]
        for b, k, a in zip(box, kp, src):
            ref = np.asarray(a["keypoints"], float).reshape(17, 3)
            lab = ref[:, 2] > 0
            np.testing.assert_array_equal(k[:, 2], ref[:, 2] * lab)
            assert np.abs(k[lab, :2] - ref[lab, :2]).max(initial=0) <= 1.0
            assert (k[~lab] == 0).all()
            x, y, bw, bh = a["bbox"]                                   # the COCO box, as centre and size
            x1, y1 = min(x + bw, w), min(y + bh, h)
            np.testing.assert_allclose(b, [(x + x1) / 2, (y + y1) / 2, x1 - x, y1 - y], atol=0.01)


def test_yolo_label_lines_follow_the_format():
    from posesynth.datasets.export import yolo_label_lines

    kp = np.array([[[10, 20, 2], [0, 0, 0], [-0.5, 49.8, 1]],      # a point just outside is clipped into [0, 1]
                   [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], np.float32)  # no box, no label: left out
    lines = yolo_label_lines(kp, np.array([[5, 10, 20, 40], [0, 0, 0, 0]]), 100, 50)
    assert lines == ["0 0.150000 0.600000 0.200000 0.800000 0.100000 0.400000 2 0.000000 0.000000 0 "
                     "0.000000 0.996000 1"]


def test_ultralytics_reads_the_export(fixtures, tmp_path):
    """Where ultralytics is importable (it does not install beside the pinned packages: it brings
    opencv-python, a second cv2), its own reader checks the export."""
    pytest.importorskip("ultralytics")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    from posesynth.datasets.export import export_yolo

    export_yolo(fixtures / "coco" / "test_coco.json", tmp_path / "y", progress=False)
    data = check_det_dataset(str(tmp_path / "y" / "data.yaml"), autodownload=False)
    labels = YOLODataset(img_path=data["train"], data=data, task="pose", imgsz=640, augment=False).labels
    ref = open_dataset(fixtures / "coco" / "test_coco.json")
    for lb, s in zip(labels, ref):
        h, w = lb["shape"]
        lab = s.keypoints[..., 2] > 0
        assert np.abs(lb["keypoints"][..., :2] * [w, h] - s.keypoints[..., :2])[lab].max(initial=0) <= 1.0


# ---- frame rates of clips --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nearest_run(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("nn")
    assert main(["train-gan", "--data", str(synth / "a"), "--arch", "nearest", "--size", "64,96",
                 "--out", str(root / "nn")]) == 0
    return root / "nn"


def test_convert_records_the_clip_frame_rate_and_transfer_uses_it(fixtures, nearest_run, tmp_path, capsys):
    src = fixtures / "squats" / "pose_squats.full.json"
    clip_fps = cv2.VideoCapture(str(fixtures / "squats" / "pose_squats.mp4")).get(cv2.CAP_PROP_FPS)
    assert clip_fps == pytest.approx(5)          # the fixture's README: 5 fps
    rc, out, _ = run_cli(capsys, "convert", src, "--out", tmp_path / "c", "--frames", "0:6", "--layout", "driver9")
    assert rc == 0 and "5 fps" in out
    videos = json.loads((tmp_path / "c" / "annotations.json").read_text())["videos"]
    assert videos == [{"id": "pose_squats", "file_name": "pose_squats.mp4", "width": 720, "height": 1280,
                       "fps": pytest.approx(clip_fps), "every": 1, "source": str(src)}]
    rc, out, _ = run_cli(capsys, "transfer", "--gan", nearest_run, "--source", tmp_path / "c", "--out",
                         tmp_path / "t.mp4", "--no-side-by-side")
    assert rc == 0 and "records no frame rate" not in out
    assert cv2.VideoCapture(str(tmp_path / "t.mp4")).get(cv2.CAP_PROP_FPS) == pytest.approx(clip_fps)
    # every 2nd frame kept: the frames play at half the clip's rate
    assert main(["convert", str(src), "--out", str(tmp_path / "c2"), "--frames", "0:12", "--every", "2",
                 "--layout", "driver9"]) == 0
    assert main(["transfer", "--gan", str(nearest_run), "--source", str(tmp_path / "c2"), "--out",
                 str(tmp_path / "t2.mp4"), "--no-side-by-side"]) == 0
    assert cv2.VideoCapture(str(tmp_path / "t2.mp4")).get(cv2.CAP_PROP_FPS) == pytest.approx(clip_fps / 2)


def test_transfer_says_the_frame_rate_it_chose(synth, nearest_run, tmp_path, capsys):
    rc, out, _ = run_cli(capsys, "transfer", "--gan", nearest_run, "--source", synth / "b", "--out",
                         tmp_path / "t.mp4", "--no-side-by-side")
    assert rc == 0 and out.count("records no frame rate: writing 25 fps") == 1
    assert cv2.VideoCapture(str(tmp_path / "t.mp4")).get(cv2.CAP_PROP_FPS) == pytest.approx(25)


def test_video_writer_h264_where_an_encoder_is_available(tmp_path, monkeypatch, caplog):
    import logging

    import posesynth.datasets.video as video

    frames = [np.full((48, 80, 3), v, np.uint8) for v in (30, 120, 210)]
    backend, fourcc = video.choose_encoder(".mp4")
    with video.VideoWriter(tmp_path / "a.mp4", fps=5) as w:
        w.write_batch(frames)
    tag = int(cv2.VideoCapture(str(tmp_path / "a.mp4")).get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    if backend == "ffmpeg" or fourcc in video.H264_FOURCCS:
        assert w.result.is_h264 and tag.lower() in ("avc1", "h264")
    else:
        assert fourcc == "mp4v" and tag in ("mp4v", "FMP4")
    # no H.264 encoder at all: the fallback, said once for all files
    video.choose_encoder.cache_clear()
    monkeypatch.setattr(video, "writable_codec", lambda ext=".mp4": "mp4v")
    monkeypatch.setattr(video, "ffmpeg_h264", lambda ext=".mp4": False)
    monkeypatch.setattr(video, "_SAID", set())
    with caplog.at_level(logging.WARNING, logger="posesynth.datasets.video"):
        for name in ("b.mp4", "c.mp4"):
            with video.VideoWriter(tmp_path / name, fps=5) as w:
                w.write_batch(frames)
            assert w.result.codec == "mp4v"
    video.choose_encoder.cache_clear()
    assert caplog.text.count("no H.264 encoder here") == 1 and "imageio-ffmpeg" in caplog.text


def test_imageio_ffmpeg_writes_h264(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import posesynth.datasets.video as video

    assert video.ffmpeg_h264(".mp4")
    w = video.VideoWriter(tmp_path / "h.mp4", fps=7.5)
    w.backend, w.codec = "ffmpeg", "avc1"
    for v in (30, 120, 210):
        w.write(np.full((48, 80, 3), v, np.uint8))
    res = w.close()
    cap = cv2.VideoCapture(str(tmp_path / "h.mp4"))
    assert res.encoder == "ffmpeg" and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.5)
    assert int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower() in ("avc1", "h264")
    means = [f.mean() for _, f in video.read_frames(tmp_path / "h.mp4")]
    assert np.allclose(means, (30, 120, 210), atol=4)


def test_recorded_frame_rate_rules():
    from types import SimpleNamespace

    from posesynth.datasets.formats import recorded_frame_rate

    assert recorded_frame_rate(SimpleNamespace(videos=[{"id": "a", "fps": 30.0, "every": 3}]))[0] == 10.0
    assert recorded_frame_rate(SimpleNamespace(videos=[{"id": "a", "fps": 30}, {"id": "b", "fps": 25}])) == (None, "")
    assert recorded_frame_rate(SimpleNamespace(fps=5.0, video="clip.mp4")) == (5.0, "clip.mp4")
    assert recorded_frame_rate(SimpleNamespace()) == (None, "")


# ---- a pose network trained on two datasets; evaluate and predict ----------------------------------
TINY = ["--size", "64", "--backbone", "pvt_v2_b0", "--pretrained", "none", "--heads", "small", "--batch-size", "2"]


@pytest.fixture(scope="module")
def coco_run(fixtures_dir, tmp_path_factory):
    """A tiny coco17 pose network trained one epoch on the COCO photos and, twice over, the MPII
    photos (read as coco17): ``--data A,B:2``."""
    root = tmp_path_factory.mktemp("pose")
    coco, mpii = fixtures_dir / "coco" / "test_coco.json", fixtures_dir / "mpii" / "test_mpii.json"
    from conftest import run_cli

    r = run_cli("train-posenet", "--data", f"{coco},{mpii}:2", "--val", coco, "--out", root / "run", *TINY, "--epochs", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "run"


@pytest.fixture(scope="module")
def fixtures_dir():
    from conftest import FIXTURES

    if not (FIXTURES / "README.md").exists():
        pytest.skip(f"real fixtures not found at {FIXTURES} (the project's ../shared/fixtures)")
    return FIXTURES


def test_training_on_two_datasets_and_evaluate_outputs(coco_run, fixtures_dir, tmp_path, capsys):
    config = (coco_run / "config.yaml").read_text()
    assert "test_coco.json," in config and "test_mpii.json:2" in config
    coco, mpii = fixtures_dir / "coco" / "test_coco.json", fixtures_dir / "mpii" / "test_mpii.json"
    rc, out, _ = run_cli(capsys, "evaluate", "--posenet", coco_run, "--data", coco)
    assert rc == 0 and (coco_run / "metrics_test_coco.json").exists()
    rc, out, _ = run_cli(capsys, "evaluate", "--posenet", coco_run, "--data", mpii, "--checkpoint", "latest")
    assert rc == 0 and (coco_run / "metrics_test_mpii.json").exists() and (coco_run / "metrics_test_coco.json").exists()
    # MPII has no face keypoints: their errors are nan, and the table says why
    line = next(x for x in out.splitlines() if x.startswith("px_error/nose"))
    assert "nan" in line and "no labelled nose in the data" in line
    m = json.loads((coco_run / "metrics_test_mpii.json").read_text().replace("NaN", "null"))
    assert m["checkpoint"].endswith("latest") and m["nan_reasons"]["px_error/left_eye"] == "no labelled left_eye in the data"
    assert m["PCK@0.2/nose"] is None and m["nan_reasons"]["PCK@0.2/nose"] == "no labelled nose in the data"
    assert 0 <= m["PCK@0.2/arms"] <= 1 and 0 <= m["PCK@0.2/left_wrist"] <= 1   # MPII labels arms
    # a checkpoint file, and one that is not there
    ck = coco_run / "checkpoints" / "latest.safetensors"
    assert main(["evaluate", "--posenet", str(coco_run), "--data", str(coco), "--checkpoint", str(ck),
                 "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text().replace("NaN", "null"))["checkpoint"] == str(ck.with_suffix(""))
    rc, _, err = run_cli(capsys, "evaluate", "--posenet", coco_run, "--data", coco, "--checkpoint", tmp_path / "x.safetensors")
    assert rc == 2 and "x.safetensors: no checkpoint there" in err


def test_predict_writes_coco_results_that_pycocotools_loads(coco_run, fixtures_dir, tmp_path, capsys):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_file = fixtures_dir / "coco" / "test_coco.json"
    for extra in ([], ["--multi-person"]):
        out = tmp_path / f"pred{len(extra)}"
        rc, text, _ = run_cli(capsys, "predict", "--posenet", coco_run, "--images", fixtures_dir / "coco",
                              "--out", out, *extra)
        assert rc == 0 and len(list(out.glob("*.png"))) == 4
        res = json.loads((out / "coco_results.json").read_text())
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(gt_file))
            dt = gt.loadRes(str(out / "coco_results.json")) if res else None
        sizes = {im["id"]: (im["width"], im["height"]) for im in gt.dataset["images"]}
        assert {r["image_id"] for r in res} <= set(sizes)          # the photos' COCO ids, from their file names
        for r in res:
            assert set(r) == {"image_id", "category_id", "keypoints", "score"} and r["category_id"] == 1
            kp = np.asarray(r["keypoints"], float).reshape(17, 3)
            assert np.isin(kp[:, 2], (0, 2)).all()
            w, h = sizes[r["image_id"]]
            on = kp[:, 2] > 0                                       # points marked visible lie in the image
            assert (kp[on, 0] >= -0.5).all() and (kp[on, 0] <= w - 0.5).all()
            assert (kp[on, 1] >= -0.5).all() and (kp[on, 1] <= h - 0.5).all()
        if dt is not None:
            ev = COCOeval(gt, dt, "keypoints")
            with contextlib.redirect_stdout(io.StringIO()):
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            assert np.isfinite(ev.stats[0])
        pred = json.loads((out / "predictions.json").read_text())
        assert sorted(p["image_id"] for p in pred["images"]) == sorted(sizes)


def test_predict_marks_points_outside_the_image_not_visible(coco_run, fixtures_dir, tmp_path, monkeypatch):
    import posesynth.posenet.evaluate as ev

    def fake(model, x, layout, multi_person, threshold=0.1):
        h, w = x.shape[-2:]
        kp = np.zeros((1, 17, 3), np.float32)
        kp[0, :, 0], kp[0, :, 1], kp[0, :, 2] = w / 2, h / 2, 2      # all in the middle of the input ...
        kp[0, 0, 1] = -10.0                                             # ... but the nose above it
        return [kp], [np.ones(1, np.float32)], None, None

    monkeypatch.setattr(ev, "predict_batch", fake)
    ev.predict_images(coco_run, fixtures_dir / "coco", tmp_path / "p", progress=False)
    res = json.loads((tmp_path / "p" / "coco_results.json").read_text())
    assert len(res) == 4
    for r in res:
        v = np.asarray(r["keypoints"]).reshape(17, 3)[:, 2]
        assert v[0] == 0 and (v[1:] == 2).all()


# ---- the Python API ----------------------------------------------------------------------------
def _scene(seed=3, index=1, size=128):
    from posesynth.datasets.synthetic import render_scene, scene_rng

    return render_scene(scene_rng(seed, index), size, passenger_prob=0)


def _patch(img, xy, r=1):
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    return img[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3).astype(float).mean(0)


def test_augmenter_keeps_labels_consistent():
    import posesynth
    from posesynth.augment.perturb import arm_chains

    moved_idx = sorted({j for _, e, w in arm_chains(DRIVER9) for j in (e, w)})      # elbows and wrists
    still = [j for j in range(DRIVER9.num_keypoints) if j not in moved_idx]
    aug = posesynth.Augmenter("driver9", renderer="warp", perturb="arms-angle", fraction=1.0, seed=0)
    n_moved = 0
    for index in range(4):
        s = _scene(index=index)
        image, kp, masks = aug(s.image, s.keypoints, s.masks)
        assert image.shape == s.image.shape and image.dtype == np.uint8
        assert kp.shape == s.keypoints.shape and masks.shape == s.masks.shape
        np.testing.assert_array_equal(kp[:, still], s.keypoints[:, still])     # unmoved joints unchanged
        np.testing.assert_array_equal(kp[..., 2], s.keypoints[..., 2])          # visibilities kept
        for p in range(len(kp)):
            for sh, el, wr in arm_chains(DRIVER9):
                if np.allclose(kp[p, [el, wr], :2], s.keypoints[p, [el, wr], :2]):
                    continue
                n_moved += 1
                # the forearm moved rigidly with its joints: a point of the new forearm (70% of the way
                # to the wrist, clear of the blended elbow seam) shows what that point of the old one
                # showed, and the new joints lie in the image
                old_mid = s.keypoints[p, el, :2] * 0.3 + s.keypoints[p, wr, :2] * 0.7
                new_mid = kp[p, el, :2] * 0.3 + kp[p, wr, :2] * 0.7
                assert np.abs(_patch(image, new_mid) - _patch(s.image, old_mid)).max() < 40
                assert (kp[p, [el, wr], 0] >= 0).all() and (kp[p, [el, wr], 0] <= s.width - 1).all()
                assert (kp[p, [el, wr], 1] >= 0).all() and (kp[p, [el, wr], 1] <= s.height - 1).all()
    assert n_moved >= 4
    # the moved joints are the perturbation's: the same draws give the same keypoints
    from posesynth.augment.perturb import PerturbConfig, Perturber

    want = Perturber(PerturbConfig("arms-angle"), DRIVER9)(s.keypoints, s.image.shape[:2], np.random.default_rng(9))
    got = aug(s.image, s.keypoints, s.masks, rng=np.random.default_rng(9)).keypoints
    for p in range(len(got)):   # each arm is the perturbation's, or kept where the warp would not move it
        for sh, el, wr in arm_chains(DRIVER9):
            j = [el, wr]
            assert np.array_equal(got[p, j], want[p, j]) or np.array_equal(got[p, j], s.keypoints[p, j])
    np.testing.assert_array_equal(np.delete(got, moved_idx, 1), np.delete(want, moved_idx, 1))
    # the same seed gives the same result; fraction 0 returns the input
    a = posesynth.Augmenter("driver9", seed=5)(s.image, s.keypoints)
    b = posesynth.Augmenter("driver9", seed=5)(s.image, s.keypoints)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    same = posesynth.Augmenter("driver9", fraction=0.0)(s.image, s.keypoints, s.masks)
    np.testing.assert_array_equal(same.image, s.image)
    np.testing.assert_array_equal(same.keypoints, s.keypoints)
    with pytest.raises(ConfigError, match=r"keypoints must be \(P, 9, 3\)"):
        posesynth.Augmenter("driver9")(s.image, np.zeros((1, 17, 3)))


def test_albumentations_transform_composes_with_a_flip():
    import albumentations as A

    import posesynth

    s = _scene(index=2)
    h, w = s.image.shape[:2]
    P, K = s.keypoints.shape[:2]
    xy = np.where(s.keypoints[..., 2:] > 0, s.keypoints[..., :2], -1.0).reshape(-1, 2)
    outs = []
    for extra in ([], [A.HorizontalFlip(p=1.0)]):
        pipe = A.Compose([posesynth.PerturbPose("driver9"), *extra],
                         keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), seed=11)
        outs.append(pipe(image=s.image, keypoints=xy, masks=s.masks))
    plain, flipped = outs
    kp, fk = np.asarray(plain["keypoints"]), np.asarray(flipped["keypoints"])
    assert kp.shape == fk.shape == (P * K, 2)
    lab = s.keypoints[..., 2].reshape(-1) > 0
    assert not np.allclose(kp[lab], xy[lab])                                # the arms moved
    # on the image, and the flip mirrors the moved points with the image (x -> W - 1 - x)
    assert (fk[lab, 0] >= 0).all() and (fk[lab, 0] <= w - 1).all()
    assert (fk[lab, 1] >= 0).all() and (fk[lab, 1] <= h - 1).all()
    np.testing.assert_allclose(fk[lab, 0], w - 1 - kp[lab, 0], atol=1e-4)
    np.testing.assert_allclose(fk[lab, 1], kp[lab, 1], atol=1e-4)
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["masks"], np.asarray(plain["masks"])[:, :, ::-1])
    # the moved joints are drawn where the keypoints say: the forearm's colour travelled with it
    from posesynth.augment.perturb import arm_chains

    k2 = kp.reshape(P, K, 2)
    for sh, el, wr in arm_chains(DRIVER9):
        if not np.allclose(k2[0, [el, wr]], s.keypoints[0, [el, wr], :2]):
            assert np.abs(_patch(plain["image"], k2[0, [el, wr]].mean(0))
                          - _patch(s.image, s.keypoints[0, [el, wr], :2].mean(0))).max() < 40


def test_readme_api_example_runs(tmp_path, monkeypatch):
    """The README's Python example, run as it is written there."""
    from conftest import ROOT

    from posesynth.datasets.make_data import make_synthetic_dataset

    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README has no Python API example"
    make_synthetic_dataset(tmp_path / "data" / "train", 3, seed=0, size=128, workers=1, progress=False)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), ns)
    assert ns["image"].shape == ns["s"].image.shape and ns["keypoints"].shape == ns["s"].keypoints.shape
    assert ns["flipped_keypoints"].shape == ns["s"].keypoints.shape[:2] + (2,)


def test_import_posesynth_stays_light():
    code = ("import sys, posesynth; heavy = [m for m in ('torch', 'cv2', 'posesynth.augment', 'albumentations') "
            "if m in sys.modules]; print(heavy); assert not heavy; assert callable(posesynth.Augmenter)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_python_api_reaches_no_network():
    """albumentations asks PyPI for updates when it is imported unless NO_ALBUMENTATIONS_UPDATE
    is set: through posesynth (the Python API, the photometric transforms) no connection is
    opened.  Every way urllib opens a URL is replaced by one that records the call."""
    code = ("import os, urllib.request as u\n"
            "os.environ.pop('NO_ALBUMENTATIONS_UPDATE', None)\n"
            "calls = []\n"
            "class Opener:\n"
            "    def open(self, url, *a, **k): calls.append(url); raise OSError('no network in this test')\n"
            "u.build_opener = lambda *a, **k: Opener()\n"
            "u.urlopen = lambda url, *a, **k: Opener().open(url)\n"
            "import posesynth\n"
            "posesynth.PerturbPose\n"
            "from posesynth.datasets.transforms import Photometric\n"
            "Photometric()\n"
            "print(calls); assert not calls, calls\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "update" not in r.stderr.lower(), r.stderr


# ---- render's page -------------------------------------------------------------------------------
def test_render_page_scales_captions_and_toggles_keypoints(synth, tmp_path, capsys):
    from html.parser import HTMLParser

    rc, _, _ = run_cli(capsys, "render", "--data", synth / "a", "--out", tmp_path / "r", "--num", "3")
    assert rc == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "max-width: 100%" in page and "type='checkbox'" in page and "#kp:checked" in page

    class Parse(HTMLParser):
        imgs, caps, cap = [], [], False

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.imgs.append(dict(attrs))
            self.cap = tag == "figcaption"

        def handle_data(self, data):
            if self.cap:
                self.caps.append(data)
                self.cap = False

    p = Parse()
    p.feed(page)
    assert [i["class"] for i in p.imgs] == ["plain", "kp"] * 3
    src = open_dataset(synth / "a")
    for k, cap in enumerate(p.caps):
        assert src[k].file_name in cap and "arms-angle" in cap
    # the keypoint picture is the plain one plus the skeletons: it differs only along the source's
    # skeleton on the source and along the perturbed one (seeded by (seed, i)) on the render
    from posesynth.augment.perturb import PerturbConfig, Perturber

    def dist_to_skeleton(xs, ys, kp):
        d = np.full(len(xs), np.inf)
        for person in kp:
            for a, b in DRIVER9.limbs + tuple((j, j) for j in range(DRIVER9.num_keypoints)):
                if person[a, 2] > 0 and person[b, 2] > 0:
                    pa, pb = person[a, :2], person[b, :2]
                    ab = pb - pa
                    t = np.clip(((xs - pa[0]) * ab[0] + (ys - pa[1]) * ab[1]) / max(ab @ ab, 1e-9), 0, 1)
                    d = np.minimum(d, np.hypot(xs - pa[0] - t * ab[0], ys - pa[1] - t * ab[1]))
        return d

    perturber = Perturber(PerturbConfig("arms-angle"), DRIVER9)
    for k in range(3):
        plain = cv2.imread(str(tmp_path / "r" / p.imgs[2 * k]["src"]))
        kp = cv2.imread(str(tmp_path / "r" / p.imgs[2 * k + 1]["src"]))
        assert plain.shape == kp.shape
        s = src[k]
        w = s.width
        new = perturber(s.keypoints, s.image.shape[:2], np.random.default_rng([0, k]))
        diff = np.abs(plain.astype(int) - kp).max(-1) > 0
        assert not diff[:, w:2 * w].any()                                     # the pose maps are untouched
        # on the render, the pose drawn: the perturbed arms, or the source's where the warp kept an arm
        for panel, poses in ((diff[:, :w], [s.keypoints]), (diff[:, 2 * w:], [new, s.keypoints])):
            ys, xs = np.nonzero(panel)
            d = np.min([dist_to_skeleton(xs, ys, pose) for pose in poses], 0) if len(xs) else np.zeros(0)
            assert len(xs) and d.max() <= 6                                   # dots of radius 3, antialiased


# ---- generate --with-source ----------------------------------------------------------------------------
def test_generate_with_source_writes_real_beside_rendered(synth, tmp_path, capsys):
    rc, _, _ = run_cli(capsys, "generate", "--data", synth / "b", "--out", tmp_path / "g", "--per-image", "2",
                       "--with-source", "true")
    assert rc == 0
    data = json.loads((tmp_path / "g" / "annotations.json").read_text())
    ids = [im["id"] for im in data["images"]]
    assert sorted(ids) == list(range(1, 4 * 2 + 4 + 1))                  # 8 renders, then the 4 sources
    src = open_dataset(synth / "b")
    out = open_dataset(tmp_path / "g")
    assert len(out) == 12 and out.layout == src.layout
    by_id = {s.image_id: s for s in out}
    for i in range(4):
        s, o = src[i], by_id[8 + i + 1]
        prov = next(im for im in data["images"] if im["id"] == 8 + i + 1)["posesynth"]["provenance"]
        assert prov["renderer"] == "source" and prov["source_file"] == s.file_name
        np.testing.assert_array_equal(o.image, s.image)                   # the JPEG copied as it is
        np.testing.assert_allclose(o.keypoints, s.keypoints, atol=1e-3)
        np.testing.assert_array_equal(o.masks, s.masks)
    # the same settings continue; the output trains as one dataset
    assert main(["generate", "--data", str(synth / "b"), "--out", str(tmp_path / "g"), "--per-image", "2",
                 "--with-source", "true"]) == 0
    assert len(json.loads((tmp_path / "g" / "annotations.json").read_text())["images"]) == 12


# ---- help texts ------------------------------------------------------------------------------------
def _subparsers():
    import argparse

    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, sub.choices


def test_every_option_has_a_sentence_and_a_readable_default():
    p, cmds = _subparsers()
    problems = []
    for name, sp in [("posesynth", p), *cmds.items()]:
        text = sp.format_help()
        for bad in ("(default: none)", "(default: )", "(default: None)", "==SUPPRESS=="):
            if bad in text:
                problems.append(f"{name}: {bad!r}")
        if re.search(r"\(\d+(\.\d+)?, ", text) or re.search(r"\(default: \(", text):
            problems.append(f"{name}: a Python tuple in {text!r}")
        for a in sp._actions:
            if a.option_strings and a.help != "==SUPPRESS==" and (not a.help or len(a.help.strip()) < 8):
                problems.append(f"{name} {a.option_strings[0]}: no help")
            if a.help and a.help.count("default") > 1:
                problems.append(f"{name} {a.option_strings[0] if a.option_strings else a.dest}: default said twice")
            if a.option_strings and a.default not in (None, False, "", (), "==SUPPRESS==") and a.help and \
                    "default" not in a.help:
                problems.append(f"{name} {a.option_strings[0]}: its default {a.default!r} is not shown")
    assert not problems, "\n".join(problems)


def test_required_options_show_as_required():
    _, cmds = _subparsers()
    for name, need in {"train-gan": ["--data", "--out"], "train-posenet": ["--data", "--out"],
                       "render-quality": ["--data", "--out"], "generate": ["--data", "--out"],
                       "experiment": ["--data", "--val", "--test"], "train-motion": ["--data", "--out"],
                       "render": ["--data", "--out"], "evaluate": ["--posenet", "--data"],
                       "predict": ["--posenet", "--images", "--out"], "merge": ["--out"], "convert": ["--out"]}.items():
        usage = cmds[name].format_usage()
        for opt in need:
            m = re.search(rf"(\[?){opt}\b", usage)
            assert m and not m.group(1), f"{name}: {opt} is not shown as required in {usage!r}"


def test_named_help_texts():
    _, cmds = _subparsers()
    helps = {n: {a.option_strings[0]: a.help for a in sp._actions if a.option_strings} for n, sp in cmds.items()}
    assert "perturbation" in helps["render"]["--seed"] and "first N" in helps["render"]["--num"]
    assert "cuda" in helps["render"]["--device"]
    assert "torso" in helps["generate"]["--min-torso"] and "thread" in helps["generate"]["--threads"]
    assert "whether rendered poses (warp or GAN) reduce overfitting" in cmds["experiment"].description
    assert "384,384" in cmds["train-posenet"].format_help() or "(default: 384)" in cmds["train-posenet"].format_help()


def test_missing_backbone_weights_message_names_the_cache_and_the_file(tmp_path, monkeypatch, caplog):
    import logging

    from posesynth.posenet.backbone import PVTBackbone

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING):
        PVTBackbone("pvt_v2_b0", "auto")
    text = caplog.text
    assert "timm cache" in text and str(tmp_path / "empty" / "models--timm--pvt_v2_b0.in1k") in text
    assert "--pretrained PATH: model.safetensors" in text and "timm/pvt_v2_b0.in1k" in text


def test_convert_carries_a_coco_clip_frame_rate(synth, tmp_path):
    """An ``extract`` output (a 'videos' list, frames of one clip) converted with --every 2: the
    step between the frames kept doubles, so the recorded rate halves."""
    from posesynth.datasets.export import convert_dataset
    from posesynth.datasets.formats import recorded_frame_rate

    shutil.copytree(synth / "a", tmp_path / "clip")
    ann = tmp_path / "clip" / "annotations.json"
    d = json.loads(ann.read_text())
    for k, im in enumerate(d["images"]):
        im["video_id"], im["frame_id"] = "clip", 3 * k
    d["videos"] = [{"id": "clip", "file_name": "clip.mp4", "width": 64, "height": 64, "fps": 30.0, "every": 3}]
    ann.write_text(json.dumps(d))
    assert recorded_frame_rate(open_dataset(tmp_path / "clip"))[0] == pytest.approx(10.0)
    r = convert_dataset(tmp_path / "clip", tmp_path / "half", every=2, progress=False)
    assert r["videos"] == [{"id": "clip", "file_name": "clip.mp4", "width": 64, "height": 64, "fps": 30.0,
                            "every": 6}]
    assert recorded_frame_rate(open_dataset(tmp_path / "half"))[0] == pytest.approx(5.0)
