import subprocess
import sys

from conftest import run_cli as run


def run_process(*args):
    """``python -m posesynth ARGS`` as a new process (most tests call the CLI in this one: run)."""
    return subprocess.run([sys.executable, "-m", "posesynth", *args], capture_output=True, text=True)


def test_user_error_is_one_clear_line(tmp_path):
    bad = tmp_path / "ann.json"
    bad.write_text("{not json")
    r = run_process("show", str(bad), "--out", str(tmp_path / "g.png"))
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
    r = run_process("demo", "--out", str(tmp_path / "demo"), "--quick")
    assert r.returncode == 0, r.stderr
    demo = tmp_path / "demo"
    assert (demo / "train_grid.png").exists() and (demo / "data" / "test" / "annotations.json").exists()
    page = (demo / "report.html").read_text()
    assert "test PCK@0.2" in page and (demo / "comparison.png").exists() and (demo / "renders.png").exists()
    last = r.stdout.strip().splitlines()[-1]
    import re

    assert re.fullmatch(r"demo done in [\d.]+ min: test PCK@0\.2 baseline \S+, (warp|refine) \S+, oracle \S+; "
                        r"\S+ closes \S+% of the oracle gap( \(the oracle is not above the baseline\))?; "
                        r"(warp|refine) - baseline [+-]\S+, 95% CI \[\S+, \S+\] over 2 seeds, ahead on \d of 2: "
                        r"(exceeds the spread|not established)\. Report: \S+report\.html", last), last


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
    # an option the run's mode would ignore is refused, not silently dropped
    r = run("train-gan", "--out", str(tmp_path / "g"), "--data", str(tmp_path), "--crop-size", "64", "--fill-share", "0")
    assert r.returncode == 2 and "--crop-size and --fill-share apply to --mode refine only; this run's mode is full" \
        in r.stderr and not (tmp_path / "g").exists()
    r = run("train-gan", "--out", str(tmp_path / "g"), "--data", str(tmp_path), "--mode", "refine", "--size", "256,256")
    assert r.returncode == 2 and "--size is not used in refine mode" in r.stderr and not (tmp_path / "g").exists()
    (tmp_path / "cfg.yaml").write_text("mode: inpaint\ncrop_margin: 0.5\n")   # in a new run's YAML as well
    r = run("train-gan", "--out", str(tmp_path / "g"), "--data", str(tmp_path), "--config", str(tmp_path / "cfg.yaml"))
    assert r.returncode == 2 and "--crop-margin applies to --mode refine only; this run's mode is inpaint" in r.stderr


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


BAD_NUMBERS = [  # (command and options before --out, OUT name, the option the message must name)
    (["train-posenet", "--epochs", "-3"], "run", "--epochs"),
    (["train-posenet", "--steps-per-epoch", "-4"], "run", "--steps-per-epoch"),
    (["train-posenet", "--batch-size", "0"], "run", "--batch-size"),
    (["train-posenet", "--lr", "nan"], "run", "--lr"),
    (["train-posenet", "--workers", "-1"], "run", "--workers"),
    (["train-posenet", "--max-people", "-2"], "run", "--max-people"),
    (["train-posenet", "--sigma", "0"], "run", "--sigma"),
    (["train-posenet", "--post-scale", "1.2,0.9"], "run", "--post-scale"),
    (["train-posenet", "--plateau-factor", "1.5"], "run", "--plateau-factor"),
    (["train-posenet", "--seed", "-1"], "run", "--seed"),
    (["train-posenet", "--time-limit-min", "-1"], "run", "--time-limit-min"),
    (["train-posenet", "--judge-pck", "2"], "run", "--judge-pck"),
    (["train-gan", "--lr-g", "-1"], "run", "--lr-g"),
    (["train-gan", "--beta1", "1"], "run", "--beta1"),
    (["train-gan", "--decay-from", "-5"], "run", "--decay-from"),
    (["train-gan", "--gallery-every", "0"], "run", "--gallery-every"),
    (["train-gan", "--log-every", "0"], "run", "--log-every"),
    (["train-gan", "--max-bad-steps", "0"], "run", "--max-bad-steps"),
    (["train-gan", "--lambda-l1", "-1"], "run", "--lambda-l1"),
    (["train-gan", "--region-radius", "inf"], "run", "--region-radius"),
    (["train-motion", "--picture-every", "0"], "run", "--picture-every"),
    (["train-motion", "--hidden", "0"], "run", "--hidden"),
    (["train-motion", "--lr-d", "-1"], "run", "--lr-d"),
    (["experiment", "overfitting", "--val", "V", "--test", "T", "--seeds", "0"], "exp", "--seeds"),
    (["experiment", "overfitting", "--val", "V", "--test", "T", "--train-sizes", "0,32"], "exp", "--train-sizes"),
    (["experiment", "overfitting", "--val", "V", "--test", "T", "--epochs", "-1"], "exp", "--epochs"),
    (["generate", "--per-image", "0"], "gen", "--per-image"),
    (["generate", "--batch-size", "0"], "gen", "--batch-size"),
    (["generate", "--flush-every", "0"], "gen", "--flush-every"),
    (["generate", "--threads", "0"], "gen", "--threads"),
    (["generate", "--limit", "-1"], "gen", "--limit"),
    (["render-quality", "--num", "-1"], "rq", "--num"),
    (["render-quality", "--size", "-64"], "rq", "--size"),
    (["render", "--num", "-1"], "rend", "--num"),
    (["render", "--size", "-1"], "rend", "--size"),
]


def test_bad_numbers_are_refused_before_any_folder(tmp_path, capsys):
    """Issue 20.12: every numeric option is checked first: one line naming it, exit 2, no --out."""
    from posesynth.cli import main

    data = tmp_path / "data"
    assert main(["make-data", "--out", str(data), "--num", "2", "--size", "64", "--workers", "1"]) == 0
    capsys.readouterr()
    for i, (args, name, option) in enumerate(BAD_NUMBERS):
        out = tmp_path / f"{name}{i}"
        argv = [*args, "--data", str(data), "--out", str(out)]
        argv = [str(data) if a in ("V", "T") else a for a in argv]
        if args[0] == "experiment":
            argv[argv.index("--test") + 1] = str(tmp_path / "test_split")   # another path than --val
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (argv, err)
        assert option in err and "\n" not in err and "Traceback" not in err, (argv, err)
        assert not out.exists(), argv


PLAIN_BAD_NUMBERS = [  # commands whose numbers are plain argparse options
    (["make-data", "--num", "0"], "--num"), (["make-data", "--size", "0"], "--size"),
    (["make-data", "--passenger-prob", "2"], "--passenger-prob"), (["make-data", "--workers", "0"], "--workers"),
    (["make-data", "--seed", "-1"], "--seed"),
    (["convert", "SRC", "--every", "0"], "--every"),
    (["extract", "clip.mp4", "--every", "0"], "--every"), (["extract", "clip.mp4", "--max-people", "-1"], "--max-people"),
    (["transfer", "--gan", "G", "--source", "S", "--batch-size", "0"], "--batch-size"),
    (["transfer", "--gan", "G", "--source", "S", "--fps", "0"], "--fps"),
    (["transfer", "--gan", "G", "--source", "S", "--every", "0"], "--every"),
    (["evaluate-generator", "--gan", "G", "--data", "D", "--batch-size", "0"], "--batch-size"),
    (["motion-metrics", "--motion", "M", "--data", "D", "--num", "0"], "--num"),
    (["motion-metrics", "--motion", "M", "--data", "D", "--horizon", "0"], "--horizon"),
]


def test_bad_plain_numbers_are_refused_first(tmp_path, capsys):
    from posesynth.cli import main

    for i, (args, option) in enumerate(PLAIN_BAD_NUMBERS):
        out = tmp_path / (f"o{i}.mp4" if args[0] == "transfer" else f"o{i}.json" if args[0] in (
            "evaluate-generator", "motion-metrics") else f"o{i}")
        argv = [str(tmp_path / "in") if a in ("SRC", "G", "S", "D", "M") else a for a in args] + ["--out", str(out)]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and option in err and "must be" in err and "\n" not in err, (argv, err)
        assert not out.exists(), argv


def test_resume_with_the_wrong_command_names_the_right_one(tmp_path, capsys):
    """Issue 20.15: resuming a train-gan run with train-posenet (and the other way round) says
    which command made the run, not ~30 unknown options."""
    import json

    from posesynth.cli import main

    data = tmp_path / "data"
    assert main(["make-data", "--out", str(data), "--num", "2", "--size", "64", "--workers", "1"]) == 0
    gan, pose = tmp_path / "gan", tmp_path / "pose"
    assert main(["train-gan", "--data", str(data), "--out", str(gan), "--size", "64", "--ngf", "8", "--ndf", "8",
                 "--steps", "1", "--batch-size", "1", "--vgg", "off", "--device", "cpu"]) == 0
    assert main(["train-posenet", "--data", str(data), "--out", str(pose), "--size", "64", "--backbone", "pvt_v2_b0",
                 "--pretrained", "none", "--heads", "small", "--batch-size", "2", "--epochs", "1",
                 "--device", "cpu"]) == 0
    motion = tmp_path / "motion"
    (motion / "checkpoints").mkdir(parents=True)
    (motion / "checkpoints" / "latest.json").write_text(json.dumps({"kind": "posesynth-motion", "step": 1}))
    (motion / "config.yaml").write_text("past: 10\n")
    capsys.readouterr()
    for cmd, run, made_by in (("train-posenet", gan, "train-gan"), ("train-gan", pose, "train-posenet"),
                              ("train-posenet", motion, "train-motion"), ("train-motion", pose, "train-posenet")):
        before = sorted(p.name for p in run.rglob("*"))
        rc = main([cmd, "--out", str(run), "--resume", "--epochs" if cmd == "train-posenet" else "--steps", "3"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err == (f"posesynth {cmd}: error: {run} is a {made_by} run; resume it with posesynth "
                                   f"{made_by} --out {run} --resume"), err
        assert sorted(p.name for p in run.rglob("*")) == before        # nothing written
