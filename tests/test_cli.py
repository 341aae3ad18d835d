import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "posesynth", *args], capture_output=True, text=True)


def test_user_error_is_one_clear_line(tmp_path):
    bad = tmp_path / "ann.json"
    bad.write_text("{not json")
    r = run("show", str(bad), "--out", str(tmp_path / "g.png"))
    assert r.returncode == 2
    assert "malformed JSON at line 1" in r.stderr and str(bad) in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_dataset(tmp_path):
    r = run("check", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr


def test_show_writes_grid(tmp_path):
    r = run("make-data", "--out", str(tmp_path / "d"), "--num", "4", "--size", "128", "--workers", "1")
    assert r.returncode == 0, r.stderr
    r = run("show", str(tmp_path / "d"), "--out", str(tmp_path / "g.png"), "--num", "4", "--cell", "96")
    assert r.returncode == 0, r.stderr
    import cv2
    g = cv2.imread(str(tmp_path / "g.png"))
    assert g.shape == (96, 4 * 96, 3)


def test_check_reports_problems(tmp_path):
    run("make-data", "--out", str(tmp_path / "d"), "--num", "3", "--size", "64", "--workers", "1")
    (tmp_path / "d" / "images" / "000002.jpg").unlink()
    r = run("check", str(tmp_path / "d"))
    assert r.returncode == 1
    assert "000002.jpg: image file not found" in r.stdout and "2 usable images" in r.stdout and "1 skipped" in r.stdout


def test_demo_quick(tmp_path):
    r = run("demo", "--out", str(tmp_path / "demo"), "--quick")
    assert r.returncode == 0, r.stderr
    demo = tmp_path / "demo"
    assert (demo / "train_grid.png").exists() and (demo / "data" / "test" / "annotations.json").exists()
    page = (demo / "report.html").read_text()
    assert "test PCK@0.2" in page and (demo / "comparison.png").exists() and (demo / "renders.png").exists()
    last = r.stdout.strip().splitlines()[-1]
    import re

    assert re.fullmatch(r"demo done in [\d.]+ min: test PCK@0\.2 baseline \S+, (warp|gan-inpaint) \S+, oracle \S+; "
                        r"\S+ closes \S+% of the oracle gap( \(the oracle is not above the baseline\))?; ahead on \d of 2 seeds\. Report: \S+report\.html", last), last


def test_train_gan_resume_and_render(tmp_path):
    data = tmp_path / "d"
    assert run("make-data", "--out", str(data), "--num", "4", "--size", "64", "--workers", "1").returncode == 0
    common = ["--data", str(data), "--out", str(tmp_path / "gan"), "--size", "64", "--ngf", "8", "--ndf", "8",
              "--vgg", "off", "--gallery-every", "2"]
    r = run("train-gan", *common, "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "gan" / "web" / "index.html").exists()
    assert "step_000002.png" in (tmp_path / "gan" / "web" / "index.html").read_text()
    r = run("train-gan", *common, "--steps", "2")
    assert r.returncode == 2 and "pass --resume" in r.stderr
    assert "g_l1" in (tmp_path / "gan" / "losses.csv").read_text().splitlines()[0]   # full mode has L1 now
    # a run saved before that (no spade_hidden in its config) resumes with the loss it had: no L1
    cfg_file = tmp_path / "gan" / "config.yaml"
    cfg_file.write_text("".join(line for line in cfg_file.read_text().splitlines(True)
                                if not line.startswith("spade_hidden:")))
    r = run("train-gan", "--out", str(tmp_path / "gan"), "--resume", "--steps", "3")
    assert r.returncode == 0, r.stderr
    assert "goes on without one" in r.stderr and "lambda_l1: 0.0" in cfg_file.read_text()
    import csv
    import json
    rows = list(csv.DictReader((tmp_path / "gan" / "losses.csv").open()))
    assert rows[-1]["step"] == "3" and rows[-1]["g_l1"] == "" and rows[0]["g_l1"] != ""
    assert json.loads((tmp_path / "gan" / "checkpoints" / "latest.json").read_text())["step"] == 3
    r = run("render", "--gan", str(tmp_path / "gan"), "--data", str(data), "--out", str(tmp_path / "r"), "--num", "3")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "r").glob("*.png"))) == 6              # each row plain and with keypoints
    assert len(list((tmp_path / "r").glob("*_keypoints.png"))) == 3


def test_train_gan_bad_options(tmp_path):
    r = run("train-gan", "--out", str(tmp_path / "g"), "--data", str(tmp_path), "--size", "100")
    assert r.returncode == 2 and "multiples of 32" in r.stderr
    r = run("train-gan", "--out", str(tmp_path / "g"), "--data", str(tmp_path), "--spade-hidden", "0")
    assert r.returncode == 2 and "spade_hidden must be at least 1" in r.stderr and not (tmp_path / "g").exists()
    r = run("train-gan", "--out", str(tmp_path / "g"), "--data", str(tmp_path), "--steps", "many")
    assert r.returncode == 2 and "cannot use 'many' as int" in r.stderr
    r = run("train-gan", "--out", str(tmp_path / "g"), "--data", str(tmp_path / "none"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr


def test_render_rejects_other_layout(tmp_path):
    import numpy as np

    from posesynth.datasets.coco import write_coco
    from posesynth.datasets.layouts import KeypointLayout
    from posesynth.datasets.sample import Sample

    data = tmp_path / "d"
    run("make-data", "--out", str(data), "--num", "2", "--size", "64", "--workers", "1")
    run("train-gan", "--data", str(data), "--out", str(tmp_path / "gan"), "--size", "64", "--ngf", "8", "--ndf", "8",
        "--vgg", "off", "--steps", "1")
    arm = KeypointLayout("arm3", ("shoulder", "elbow", "wrist"), ((0, 1), (1, 2)))
    kp = np.array([[[10, 10, 2], [20, 20, 2], [30, 30, 2]]], np.float32)
    write_coco(tmp_path / "arm", [Sample(np.zeros((64, 64, 3), np.uint8), kp, np.zeros((0, 64, 64), np.uint8))], arm)
    r = run("render", "--gan", str(tmp_path / "gan"), "--data", str(tmp_path / "arm"), "--out", str(tmp_path / "r"))
    assert r.returncode == 2, r.stderr
    assert "trained on layout 'driver9'" in r.stderr and "'arm3'" in r.stderr and "Traceback" not in r.stderr
