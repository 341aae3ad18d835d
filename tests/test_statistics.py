"""Statistics that hold with few seeds, --init, and the experiment on real frames (issue 19)."""
import math

import numpy as np
import pytest
from scipy import stats

from posesynth.augment.experiment import ExperimentConfig, paired_stats, summarise, verdict
from posesynth.errors import ConfigError


def test_t_interval_matches_a_hand_computed_one():
    d = [0.02, 0.05, 0.01, 0.04]
    e = paired_stats(d)
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    t = 3.182446305284263                       # Student t, 0.975 quantile, 3 degrees of freedom (tables)
    assert e["seeds"] == 4 and e["ahead"] == 4
    assert e["diff_mean"] == pytest.approx(mean) and e["diff_sd"] == pytest.approx(sd)
    assert e["ci_low"] == pytest.approx(mean - t * sd / 2) and e["ci_high"] == pytest.approx(mean + t * sd / 2)
    assert e["established"]                     # [0.0026, 0.0574] excludes zero


def test_two_seeds_need_a_wide_interval():
    """With one degree of freedom the 95% interval is +-12.71 standard errors."""
    e = paired_stats([0.01, 0.03])
    se = np.std([0.01, 0.03], ddof=1) / np.sqrt(2)
    assert (e["ci_high"] - e["diff_mean"]) / se == pytest.approx(12.7062, rel=1e-4)
    assert not e["established"]                 # mean 0.02 > 2 se, but the interval contains zero


def test_one_seed_gives_no_interval():
    e = paired_stats([0.05])
    assert math.isnan(e["ci_low"]) and math.isnan(e["ci_high"]) and not e["established"]
    assert "not established" in verdict("warp", "baseline", e)


def test_the_verdict_says_not_established_when_the_interval_contains_zero():
    e = paired_stats([0.03, -0.01, 0.02])
    assert e["ci_low"] < 0 < e["ci_high"]
    text = verdict("warp", "baseline", e)
    assert "not established" in text and "95% CI [" in text and "ahead on 2 of 3" in text
    assert "exceeds the spread" in verdict("warp", "baseline", paired_stats([0.03, 0.031, 0.029]))


def _run(n, seed, cond, test, train=0.9, best=3, epochs=5):
    return {"n": n, "seed": seed, "cond": cond, "test_PCK_best": test, "test_PCK_final": test, "test_AP_best": 0,
            "test_AP_final": 0, "train_PCK_best": train, "gap_PCK": train - test, "gap_loss": 0, "best_epoch": best,
            "history": [{}] * epochs}


def test_summary_compares_with_baseline_and_real_dup_and_says_when_it_means_nothing():
    c = ExperimentConfig(conditions=("baseline", "real-dup", "warp"), train_sizes=(8,), seeds=3)
    runs = [_run(8, s, k, v) for s in range(3) for k, v in (("baseline", 0.40 + 0.01 * s), ("real-dup", 0.41),
                                                               ("warp", 0.45 + 0.01 * s))]
    row = summarise(runs, c)["rows"][0]
    assert set(row["compare"]) == {"real-dup", "warp"} and set(row["compare_real_dup"]) == {"warp"}
    assert row["compare"]["warp"]["diff_mean"] == pytest.approx(0.05)
    assert row["meaningful"] and row["note"] == ""
    # the selected epoch is the last one in most runs: not converged, no verdict
    late = [dict(r, best_epoch=5) for r in runs]
    row = summarise(late, c)["rows"][0]
    assert not row["converged"] and "had not converged" in row["note"]
    # no overfitting: training PCK barely above test PCK
    fit = [dict(r, train_PCK_best=r["test_PCK_best"] + 0.02, gap_PCK=0.02) for r in runs]
    row = summarise(fit, c)["rows"][0]
    assert not row["baseline_overfits"] and "does not overfit" in row["note"]


def test_report_at_last_compares_the_final_networks(tmp_path):
    """--report-at last: the paired differences, their interval, the arm joints' comparison, the
    overfitting test and the report's cells read the last epoch's figures; at the selected epoch
    these runs differ by nothing."""
    import re

    from posesynth.augment.experiment import _report

    base_final, warp_final = [0.60, 0.62, 0.61, 0.63], [0.66, 0.65, 0.68, 0.66]
    arms_final = {"baseline": [0.40, 0.41, 0.42, 0.40], "warp": [0.50, 0.48, 0.52, 0.49]}
    runs = []
    for s in range(4):
        for k, fin in (("baseline", base_final[s]), ("warp", warp_final[s])):
            r = _run(8, s, k, 0.64, train=0.70)   # selected epoch: gap 0.06, no difference
            r.update(test_PCK_final=fin, train_PCK_final=0.95, gap_PCK_final=0.95 - fin, gap_loss_final=0.5,
                     test_PCK_arms_best=0.45, test_PCK_arms_final=arms_final[k][s])
            runs.append(r)
    best = summarise(runs, ExperimentConfig(conditions=("baseline", "warp"), train_sizes=(8,), seeds=4))["rows"][0]
    assert best["compare"]["warp"]["diff_mean"] == pytest.approx(0.0) and not best["baseline_overfits"]
    assert best["compare_arms"]["baseline"]["warp"]["diff_mean"] == pytest.approx(0.0)
    c = ExperimentConfig(conditions=("baseline", "warp"), train_sizes=(8,), seeds=4, report_at="last")
    s = summarise(runs, c)
    row = s["rows"][0]
    d = np.array(warp_final) - base_final
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    e = row["compare"]["warp"]
    assert e["diff_mean"] == pytest.approx(d.mean()) and e["ci_low"] == pytest.approx(d.mean() - half)
    assert e["established"] and e["ahead"] == 4 and "at the last epoch" in e["verdict"]
    a = np.array(arms_final["warp"]) - arms_final["baseline"]
    assert row["compare_arms"]["baseline"]["warp"]["diff_mean"] == pytest.approx(a.mean())
    assert row["baseline_overfits"] and s["metric"] == "test PCK@0.2 at the last epoch"
    # the report's cells under their headers are the last epoch's
    _report(s, c, tmp_path, [])
    page = (tmp_path / "report.html").read_text()
    head = re.findall(r"<th>(.*?)</th>", page.split("</tr>", 1)[0])
    base = re.search(r"<tr><td>baseline</td>(.*?)</tr>", page.split("</table>", 1)[0]).group(1)
    cells = dict(zip(head[1:], re.findall(r"<td>(.*?)</td>", base)))
    assert cells["train PCK (the last epoch)"].startswith("0.950")
    assert cells["gap: train - test PCK (the last epoch)"].startswith(f"{0.95 - np.mean(base_final):.3f}")
    assert cells["test PCK@0.2, elbows and wrists (the last epoch)"].startswith(f"{np.mean(arms_final['baseline']):.3f}")
    # old rows without the last epoch's training figures: no verdict, and the note says why
    old = [{k: v for k, v in r.items() if k != "gap_PCK_final"} for r in runs]
    assert "was not measured at the last epoch" in summarise(old, c)["rows"][0]["note"]


def test_the_arm_joints_are_compared_as_a_second_measure():
    """The elbows-and-wrists PCK of each run is compared seed by seed like the main figure,
    from its own values (here the arms favour warp over real-dup while all joints do not)."""
    c = ExperimentConfig(conditions=("baseline", "real-dup", "warp"), train_sizes=(8,), seeds=3)
    arms = {"baseline": [0.30, 0.32, 0.31], "real-dup": [0.31, 0.30, 0.33], "warp": [0.40, 0.43, 0.41]}
    runs = [dict(_run(8, s, k, 0.5), test_PCK_arms_best=arms[k][s]) for s in range(3) for k in arms]
    row = summarise(runs, c)["rows"][0]
    assert row["compare"]["warp"]["diff_mean"] == pytest.approx(0.0)
    e = row["compare_arms"]["real-dup"]["warp"]
    d = np.array(arms["warp"]) - arms["real-dup"]
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert e["diff_mean"] == pytest.approx(d.mean()) and e["ci_low"] == pytest.approx(d.mean() - half)
    assert e["established"] and "elbows and wrists" in e["verdict"]
    assert row["conditions"]["warp"]["test_PCK_arms_best"]["mean"] == pytest.approx(np.mean(arms["warp"]))


def test_pck_per_joint_and_over_the_arm_joints():
    """PoseMetrics: PCK of each joint and of the elbows and wrists, against a count by hand."""
    from posesynth.datasets.layouts import DRIVER9
    from posesynth.posenet.metrics import PoseMetrics

    names = DRIVER9.keypoints
    gt = np.zeros((1, 9, 3), np.float32)
    xy = {"right_wrist": (20, 80), "right_elbow": (25, 60), "right_shoulder": (35, 40), "neck": (50, 38),
          "left_shoulder": (65, 40), "left_elbow": (75, 60), "left_wrist": (80, 80), "right_hip": (40, 90),
          "left_hip": (60, 90)}
    for j, n in enumerate(names):
        gt[0, j] = (*xy[n], 2)
    pred = gt.copy()
    pred[0, names.index("left_wrist"), :2] += 60     # far off: wrong at any alpha here
    pred[0, names.index("right_shoulder"), :2] += 60
    m = PoseMetrics(DRIVER9, 0.2)
    m.add(gt, pred, np.ones(1), (128, 128))
    out = m.result()
    assert out["PCK@0.2"] == pytest.approx(7 / 9)
    assert out["PCK@0.2/arms"] == pytest.approx(3 / 4)          # elbows and wrists: the left wrist is wrong
    assert out["PCK@0.2/left_wrist"] == 0 and out["PCK@0.2/right_shoulder"] == 0 and out["PCK@0.2/neck"] == 1


# ---- --init --------------------------------------------------------------------------------------
def _pose_run(tmp_path, name, **kw):
    from posesynth.datasets.layouts import DRIVER9
    from posesynth.datasets.synthetic import render_scene, scene_rng
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig

    class Src:
        layout = DRIVER9
        s = [render_scene(scene_rng(4, i), 64, "narrow", 0.0) for i in range(4)]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.s[i]

    base = dict(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small", epochs=1, batch_size=2,
                device="cpu", data_augment=False)
    base.update(kw)
    return PoseNetTrainer(PoseTrainConfig(**base), tmp_path / name, source=Src(), progress=False)


def test_init_loads_another_runs_weights(tmp_path):
    import torch

    first = _pose_run(tmp_path, "first", seed=1)
    first.fit()
    second = _pose_run(tmp_path, "second", seed=2, init=str(tmp_path / "first"))
    fresh = _pose_run(tmp_path, "fresh", seed=2)
    a, b, c = (dict(t.model.state_dict()) for t in (first, second, fresh))
    assert all(torch.equal(a[k], b[k]) for k in a)          # the first run's weights, exactly
    assert not all(torch.equal(a[k], c[k]) for k in a)      # (not what seed 2 would draw)


def test_init_refuses_other_maps_or_networks(tmp_path):
    first = _pose_run(tmp_path, "first")
    first.fit()
    with pytest.raises(ConfigError, match="pose maps with sigma 7, .*this run draws sigma 5"):
        _pose_run(tmp_path, "b", sigma=5.0, init=str(tmp_path / "first"))
    with pytest.raises(ConfigError, match="another network .*heads"):
        _pose_run(tmp_path, "c", heads="medium", init=str(tmp_path / "first"))
    with pytest.raises(ConfigError, match="no pose-network checkpoint"):
        _pose_run(tmp_path, "d", init=str(tmp_path / "nothing"))


def test_init_refuses_another_layout(tmp_path, fixtures):
    from posesynth.datasets.formats import open_dataset
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig

    first = _pose_run(tmp_path, "first")
    first.fit()
    coco = open_dataset(fixtures / "coco" / "test_coco.json")
    with pytest.raises(ConfigError, match="predicts layout 'driver9'.*this run 'coco17'"):
        PoseNetTrainer(PoseTrainConfig(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small",
                                       device="cpu", init=str(tmp_path / "first")), tmp_path / "x", source=coco,
                       progress=False)


# ---- the experiment on real frames ------------------------------------------------------------------
def test_the_experiment_runs_on_the_buffy_frames(tmp_path, fixtures):
    """Real TV frames (driver9 upper bodies, no seatbelt mask, varied scale): one tiny run per
    condition reads, trains and scores without error."""
    from posesynth.augment.experiment import run_experiment

    b = fixtures / "buffy"
    if not (b / "train").exists():
        pytest.skip(f"the buffy frames are not in {b}")
    c = ExperimentConfig(data=str(b / "train"), val=str(b / "val"), test=str(b / "test"),
                         conditions=("baseline", "real-dup", "warp"), out=str(tmp_path / "exp"), train_sizes=(4,),
                         seeds=1, epochs=1, steps_per_epoch=1, batch_size=2, size=(64, 64), pretrained="none",
                         device="cpu")
    s = run_experiment(c, progress=False)
    row = s["rows"][0]
    assert set(row["conditions"]) == {"baseline", "real-dup", "warp"}
    assert np.isfinite(row["conditions"]["warp"]["test_PCK_best"]["mean"])
    assert "not established" in row["compare"]["warp"]["verdict"]   # one seed
    assert (tmp_path / "exp" / "rendered_warp.png").exists()
