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
    assert (tmp_path / "demo" / "train_grid.png").exists() and (tmp_path / "demo" / "data" / "val" / "annotations.json").exists()
    assert "demo done" in r.stdout
