import json

import cv2
import numpy as np
import pytest

from posesynth.datasets.coco import CocoKeypointDataset, write_coco
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.sample import Sample
from posesynth.errors import DatasetError


def make_samples(rng, n=3, size=(96, 128)):
    out = []
    for i in range(n):
        img = rng.integers(0, 255, size + (3,), dtype=np.uint8)
        people = i % 3 + 1
        kp = np.zeros((people, 9, 3), np.float32)
        kp[..., 0] = rng.uniform(0, size[1] - 1, (people, 9)).round(2)
        kp[..., 1] = rng.uniform(0, size[0] - 1, (people, 9)).round(2)
        kp[..., 2] = rng.integers(0, 3, (people, 9))
        kp[kp[..., 2] == 0, :2] = 0
        mask = np.zeros((1,) + size, np.uint8)
        mask[0, 10 + i:40, 20:50 + i] = 1
        out.append(Sample(img, kp, mask))
    return out


@pytest.fixture
def dataset_dir(tmp_path, rng):
    samples = make_samples(rng)
    write_coco(tmp_path / "ds", samples, DRIVER9, image_ext=".png")
    return tmp_path / "ds", samples


def test_round_trip(dataset_dir):
    root, samples = dataset_dir
    ds = CocoKeypointDataset(root)
    assert ds.layout == DRIVER9 and len(ds) == len(samples)
    for s, r in zip(samples, ds):
        np.testing.assert_array_equal(r.image, s.image)          # PNG is lossless
        np.testing.assert_allclose(r.keypoints, s.keypoints, atol=1e-3)
        np.testing.assert_array_equal(r.masks, s.masks)
        assert r.keypoints.shape[0] == s.keypoints.shape[0]      # several people per image
    data = json.loads((root / "annotations.json").read_text())
    a = data["annotations"][0]
    assert a["num_keypoints"] == int((samples[0].keypoints[0, :, 2] > 0).sum()) and len(a["bbox"]) == 4
    assert data["images"][0]["masks"]["seatbelt"].startswith("masks/")


def _edit(root, fn):
    p = root / "annotations.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("edit,pattern", [
    (lambda d: d["annotations"][0].update(keypoints=d["annotations"][0]["keypoints"][:-3]),
     r"annotation 1: has 24 keypoint values, layout 'driver9' expects 27"),
    (lambda d: d["annotations"][0]["keypoints"].__setitem__(3, float("nan")),
     r"annotation 1: keypoint 1 \('right_elbow'\) is NaN"),
    (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 7),
     r"keypoint 0 \('right_wrist'\) has visibility 7"),
    (lambda d: d["images"][1].update(file_name="nope.png"), r"nope.png: image file not found"),
])
def test_bad_annotation_messages(dataset_dir, edit, pattern):
    root, _ = dataset_dir
    _edit(root, edit)
    with pytest.raises(DatasetError, match=pattern) as e:
        CocoKeypointDataset(root)
    assert "annotations.json" in str(e.value) or "nope.png" in str(e.value)
    # skip policy: the bad image is dropped and counted, the others load
    ds = CocoKeypointDataset(root, on_error="skip")
    assert ds.skipped == 1 and len(ds) == 2
    assert all(s.image.shape == (96, 128, 3) for s in ds)


def test_malformed_json(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"a.json: malformed JSON at line 1, column 13"):
        CocoKeypointDataset(p)
    p.write_text('{"images": []}')
    with pytest.raises(DatasetError, match="'annotations' must be a list"):
        CocoKeypointDataset(p)


def test_unreadable_image_and_wrong_mask(dataset_dir):
    root, _ = dataset_dir
    (root / "images" / "000002.png").write_bytes(b"not an image")
    cv2.imwrite(str(root / "masks" / "000003_seatbelt.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"000002.png: image is unreadable"):
        CocoKeypointDataset(root)
    ds = CocoKeypointDataset(root, on_error="skip")
    assert ds.skipped == 2 and len(ds) == 1
    assert any("000003_seatbelt.png: 'seatbelt' mask is 10x10, its image is 128x96" in e for e in ds.errors)


def test_runtime_failure_is_skipped_and_counted(dataset_dir):
    root, samples = dataset_dir
    ds = CocoKeypointDataset(root, on_error="skip")
    # the file breaks after the dataset was opened (e.g. a network disk)
    (root / "images" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    got = [ds[i] for i in range(len(ds))]
    assert len(got) == 3 and ds.skipped == 1 and got[1].image_id == 3
    strict = CocoKeypointDataset(root, check_files=False)
    with pytest.raises(DatasetError, match="000002.png: cannot read image"):
        strict[1]


def test_convert_on_load(fixtures):
    ds = CocoKeypointDataset(fixtures / "coco" / "test_coco.json", layout="driver9")
    raw = CocoKeypointDataset(fixtures / "coco" / "test_coco.json")
    s, r = ds[0], raw[0]
    assert s.keypoints.shape[1:] == (9, 3) and r.keypoints.shape[1:] == (17, 3)
    both = (r.keypoints[:, 5, 2] > 0) & (r.keypoints[:, 6, 2] > 0)
    np.testing.assert_allclose(s.keypoints[both, 3, :2], (r.keypoints[both, 5, :2] + r.keypoints[both, 6, :2]) / 2)
    assert s.masks.shape == (1,) + s.image.shape[:2] and s.masks.sum() == 0  # no seatbelt masks in COCO


def _set(*keys_value):
    def fn(d):
        *keys, value = keys_value
        obj = d
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return fn


@pytest.mark.parametrize("edit,kind,left,pattern", [
    # a labelled person whose iscrowd is not 0/1 would vanish as a "crowd": a bad annotation
    (_set("annotations", 0, "iscrowd", "no"), "bad annotation", 2, r"annotation 1: iscrowd must be 0 or 1, not 'no'"),
    (_set("annotations", 1, "iscrowd", 2), "bad annotation", 2, r"iscrowd must be 0 or 1, not 2"),
    (_set("images", 1, "width", "sixty-four"), "malformed image entry", 2,
     r"image 2 \('000002.png'\): 'width' must be a positive whole number of pixels, not 'sixty-four'"),
    (_set("images", 1, "width", -64), "malformed image entry", 2, r"'width' must be .* not -64"),
    (_set("images", 2, "height", 95.5), "malformed image entry", 2, r"'height' must be .* not 95.5"),
    (_set("annotations", 0, "keypoints", 4, "12.5"), "bad annotation", 2,
     r"annotation 1: keypoints must be numbers, found '12.5' \(str\)"),
    # annotation 4 (image 3) takes id 2 (image 2): both images go, one problem
    (_set("annotations", 3, "id", 2), "duplicate annotation id", 1,
     r"annotation id 2 is used by 2 annotations \(of images 2, 3\)"),
])
def test_malformed_values_are_counted_not_accepted(dataset_dir, edit, kind, left, pattern):
    """Issue 20.14: values of the wrong type or range are problems under the error policy."""
    from posesynth.datasets.formats import open_dataset

    root, _ = dataset_dir
    _edit(root, edit)
    ds = open_dataset(root, on_error="skip")
    assert ds.problem_counts() == {kind: 1} and len(ds) == left, ds.errors
    assert str(root / "annotations.json") in ds.errors[0]
    with pytest.raises(DatasetError, match=pattern):
        open_dataset(root, on_error="raise")
    if kind == "bad annotation":   # the people that remain are the file's own: nobody became background
        assert all(s.num_people == s.image_id % 3 or s.num_people == 3 for s in ds)


def test_malformed_yaml_config_names_its_file(tmp_path, capsys):
    from posesynth.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 3\n  lr: [1, 2\n")
    rc = main(["train-posenet", "--config", str(cfg), "--out", str(tmp_path / "run"), "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"posesynth train-posenet: error: {cfg}: malformed YAML at line 2, column 5")
    assert "\n" not in err and "<unicode string>" not in err and not (tmp_path / "run").exists()
