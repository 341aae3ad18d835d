import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli
from posesynth.datasets.coco import CocoKeypointDataset
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.synthetic import render_scene, scene_rng


def test_deterministic_for_a_seed():
    a = render_scene(scene_rng(3, 7), 128)
    b = render_scene(scene_rng(3, 7), 128)
    c = render_scene(scene_rng(3, 8), 128)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("index", range(12))
def test_visible_keypoints_lie_on_the_drawn_body(index):
    rng_a, rng_b = scene_rng(0, index), scene_rng(0, index)
    with_people = render_scene(rng_a, 256, "wide" if index % 2 else "narrow", passenger_prob=0.5)
    empty = render_scene(rng_b, 256, "wide" if index % 2 else "narrow", passenger_prob=0.5, draw_people=False)
    np.testing.assert_array_equal(with_people.keypoints, empty.keypoints)
    diff = np.abs(with_people.image.astype(int) - empty.image.astype(int)).sum(-1)
    driver = with_people.keypoints[-1]
    assert (driver[:, 2] > 0).sum() >= 7
    for p in with_people.keypoints:
        for x, y, v in p:
            if v == 2:
                patch = diff[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2]
                assert patch.min() > 0, f"keypoint at ({x:.0f}, {y:.0f}) is not on the body"


def test_seatbelt_runs_from_left_shoulder_to_right_hip():
    for i in range(6):
        s = render_scene(scene_rng(1, i), 256, passenger_prob=0.0)
        belt = s.masks[0]
        assert belt.sum() > 200
        ys, xs = np.nonzero(belt)
        d = s.keypoints[0]
        ls, rh = d[DRIVER9.index("left_shoulder"), :2], d[DRIVER9.index("right_hip"), :2]
        # belt pixels lie close to the line between the two joints
        u = (rh - ls) / np.linalg.norm(rh - ls)
        dist = np.abs((xs - ls[0]) * u[1] - (ys - ls[1]) * u[0])
        assert np.median(dist) < 15
        assert ls[0] > rh[0]  # camera faces the driver: left shoulder on the image's right


def test_pose_ranges_differ():
    def wrist_heights(pr):
        hs = []
        for i in range(40):
            kp = render_scene(scene_rng(2, i), 128, pr, passenger_prob=0).keypoints[0]
            sh = kp[DRIVER9.index("right_shoulder"), 1]
            hs.append(kp[DRIVER9.index("right_wrist"), 1] - sh)
        return np.array(hs)
    narrow, wide = wrist_heights("narrow"), wrist_heights("wide")
    assert (narrow > 0).all()            # driving: hands below the shoulders
    assert (wide < 0).mean() > 0.2       # wide: raised hands are common
    assert wide.std() > narrow.std()


def test_make_data_cli_writes_a_readable_dataset(tmp_path):
    out = tmp_path / "train"
    r = subprocess.run([sys.executable, "-m", "posesynth", "make-data", "--out", str(out), "--num", "20",
                        "--seed", "4", "--size", "128", "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ds = CocoKeypointDataset(out)
    assert len(ds) == 20 and ds.layout == DRIVER9
    s = ds[5]
    ref = render_scene(scene_rng(4, 5), 128, "narrow", 0.3)
    np.testing.assert_allclose(s.keypoints, ref.keypoints, atol=1e-3)
    np.testing.assert_array_equal(s.masks, ref.masks)
    info = json.loads((out / "annotations.json").read_text())["info"]
    assert info["seed"] == 4 and info["pose_range"] == "narrow"
    one = tmp_path / "one"
    assert run_cli("make-data", "--out", one, "--num", "20", "--seed", "4", "--size", "128", "--workers", "1").returncode == 0
    assert (one / "images" / "000006.jpg").read_bytes() == (out / "images" / "000006.jpg").read_bytes()
