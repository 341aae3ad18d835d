"""The experiment's controls and measurement (issue 10)."""
import dataclasses
import re

import numpy as np
import pytest
import torch

from posesynth.augment.mixing import BatchMixer
from posesynth.augment.renderers import WarpRenderer
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.posemaps import PoseMapSpec
from posesynth.datasets.sample import Sample
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.errors import ConfigError
from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig


class Scenes:
    layout = DRIVER9

    def __init__(self, seed, n, size=64, pose_range="narrow", passenger=0.0, pad=0):
        self.s = []
        for i in range(n):
            s = render_scene(scene_rng(seed, i), size, pose_range, passenger)
            if pad:  # a wider, non-square image: evaluation must undo the letterbox
                kp = s.keypoints.copy()
                kp[..., 0] += pad * (kp[..., 2] > 0)
                s = Sample(np.pad(s.image, ((0, 0), (pad, pad), (0, 0))), kp,
                           np.pad(s.masks, ((0, 0), (0, 0), (pad, pad))), i + 1)
            self.s.append(s)

    def __len__(self):
        return len(self.s)

    def __getitem__(self, i):
        return self.s[i]


def _record(mixer, log):
    def hook(batch, step):
        out = mixer(batch, step)
        log.append({k: v.clone() for k, v in out.items() if torch.is_tensor(v)})
        return out
    hook.attach = mixer.attach
    return hook


def test_conditions_get_identical_transforms_except_in_replaced_slots(tmp_path):
    src = Scenes(21, 8)
    cfg = PoseTrainConfig(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small", epochs=1,
                          steps_per_epoch=3, batch_size=4, device="cpu", seed=5)
    logs = {}
    for fill in ("none", "real-dup", "render"):
        mixer = BatchMixer(DRIVER9, cfg.posemaps, 0.5, fill, WarpRenderer(DRIVER9) if fill == "render" else None,
                           seed=5)
        logs[fill] = []
        PoseNetTrainer(cfg, tmp_path / fill, source=src, progress=False, batch_transform=_record(mixer, logs[fill])).fit()
    base = logs["none"]
    assert len(base) == 3 and not any(b["replaced"].any() for b in base)
    for fill in ("real-dup", "render"):
        for b, o in zip(base, logs[fill]):
            rep = o["replaced"]
            assert int(rep.sum()) == 2
            for k in ("image", "heatmaps", "pafs", "masks", "keypoints"):
                assert torch.equal(b[k][~rep], o[k][~rep]), (fill, k)      # the same transforms, bit for bit
                assert not torch.equal(b[k][rep], o[k][rep]) or k == "masks", (fill, k)
    # the replaced slots are the same in every condition that replaces
    for a, b in zip(logs["real-dup"], logs["render"]):
        assert torch.equal(a["replaced"], b["replaced"])


class GroundTruthNet(torch.nn.Module):
    """A 'network' that outputs each image's true heatmaps, PAFs and mask, in dataset order."""

    def __init__(self, items):
        super().__init__()
        self.items, self.i = items, 0
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        b = images.shape[0]
        its = self.items[self.i:self.i + b]
        self.i += b
        return (torch.stack([it["heatmaps"] for it in its]), torch.stack([it["pafs"] for it in its]),
                torch.stack([it["masks"] for it in its]))


def _collide(kp: np.ndarray, stride: float) -> bool:
    """Two people's same joint within two heatmap cells: no peak finder can tell them apart."""
    for j in range(kp.shape[1]):
        pts = kp[kp[:, j, 2] > 0, j, :2]
        if len(pts) > 1 and np.linalg.norm(pts[:, None] - pts[None], axis=-1)[np.triu_indices(len(pts), 1)].min() < 2 * stride:
            return True
    return False


def test_ground_truth_scores_pck_one_on_multi_person_scenes():
    from posesynth.datasets.torch_dataset import PoseMapDataset
    from posesynth.datasets.transforms import apply_affine
    from posesynth.posenet.evaluate import evaluate_dataset
    from posesynth.posenet.metrics import PoseMetrics

    src = Scenes(22, 16, size=128, pose_range="wide", passenger=1.0, pad=16)   # every image: driver and passenger
    assert all(s.num_people == 2 for s in src.s)
    # 1. the true keypoints as predictions, through the letterbox and back: exactly 1.0
    ds = PoseMapDataset(src, (96, 96), None, 4, PoseMapSpec(), 2, with_maps=False, fit="letterbox",
                        with_original=True)
    m = PoseMetrics(DRIVER9)
    for i in range(len(ds)):
        it = ds[i]
        from posesynth.datasets.transforms import invert_affine

        pred = apply_affine(it["keypoints"].numpy(), invert_affine(it["to_input"].numpy()))
        m.add(it["orig_keypoints"].numpy(), pred, np.ones(len(pred)), tuple(it["orig_size"].tolist()))
    assert m.result()["PCK@0.2"] == 1.0
    # 2. the true maps through the whole path (decoding, grouping, mapping back): exactly 1.0 on
    #    every image where no two people's same joint shares a heatmap cell
    ds = PoseMapDataset(src, (128, 128), None, 4, PoseMapSpec(), 2, with_maps=False, fit="letterbox",
                        with_original=True)
    clear = [i for i in range(len(ds)) if not _collide(ds[i]["keypoints"].numpy(), 4)]
    assert len(clear) >= 8
    items = [ds[i] for i in clear]
    res = evaluate_dataset(GroundTruthNet(items), ds, DRIVER9, multi_person=True, batch_size=4, indices=clear)
    assert res["PCK@0.2"] == 1.0
    assert res["mean_px_error"] < 1.5          # in the images' own (160 x 128) frame
    single = evaluate_dataset(GroundTruthNet(items), ds, DRIVER9, multi_person=False, batch_size=4, indices=clear)
    assert single["PCK@0.2"] < 0.75           # one decoded person cannot match both


def test_summary_shares_and_paired_comparison():
    from posesynth.augment.experiment import ExperimentConfig, summarise

    c = ExperimentConfig(conditions=("baseline", "warp", "oracle"), train_sizes=(64,), seeds=3)
    rows = []
    for seed, (b, w, o) in enumerate([(0.50, 0.60, 0.70), (0.40, 0.45, 0.60), (0.45, 0.44, 0.65)]):
        for cond, v in (("baseline", b), ("warp", w), ("oracle", o)):
            rows.append({"n": 64, "seed": seed, "cond": cond, "test_PCK_best": v, "test_PCK_final": v,
                         "test_AP_best": v, "test_AP_final": v, "train_PCK_best": 0.9, "gap_PCK": 0.9 - v,
                         "gap_loss": 0.1, "best_epoch": 3})
    s = summarise(rows, c)["rows"][0]["compare"]["warp"]
    diffs = np.array([0.10, 0.05, -0.01])
    assert s["ahead"] == 2 and s["seeds"] == 3
    assert s["diff_mean"] == pytest.approx(diffs.mean()) and s["diff_sd"] == pytest.approx(diffs.std(ddof=1))
    assert s["oracle_share"] == pytest.approx(diffs.mean() / (np.mean([0.7, 0.6, 0.65]) - np.mean([0.5, 0.4, 0.45])))
    assert s["exceeds_spread"] is False     # mean 0.047 < 2 x standard error 2 x 0.032
    # an oracle below the baseline leaves no gap to close: no share, rather than a ratio of two negatives
    low = [dict(r, test_PCK_best=0.3) if r["cond"] == "oracle" else r for r in rows]
    s = summarise(low, c)["rows"][0]["compare"]["warp"]
    assert s["oracle_gap"] < 0 and np.isnan(s["oracle_share"])


def test_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    from posesynth.augment import experiment
    from posesynth.datasets.coco import CocoKeypointDataset
    from posesynth.datasets.make_data import make_synthetic_dataset

    for name, seed, pr in (("train", 0, "narrow"), ("val", 1, "wide"), ("test", 2, "wide"), ("oracle", 3, "wide")):
        make_synthetic_dataset(tmp_path / name, 6, seed=seed, size=64, pose_range=pr, workers=1, progress=False)
    state = {"fitting": False, "test_reads_in_fit": 0, "test_reads": 0, "val_reads": 0}
    load, fit = CocoKeypointDataset.load, PoseNetTrainer.fit

    def spy_load(self, i):
        if str(self.ann_file).startswith(str(tmp_path / "test") + "/"):   # (tmp_path itself contains "test")
            state["test_reads"] += 1
            state["test_reads_in_fit"] += state["fitting"]
        if str(self.ann_file).startswith(str(tmp_path / "val") + "/"):
            state["val_reads"] += 1
        return load(self, i)

    def spy_fit(self):
        state["fitting"] = True
        try:
            return fit(self)
        finally:
            state["fitting"] = False

    monkeypatch.setattr(CocoKeypointDataset, "load", spy_load)
    monkeypatch.setattr(PoseNetTrainer, "fit", spy_fit)
    c = experiment.ExperimentConfig(data=str(tmp_path / "train"), val=str(tmp_path / "val"),
                                    test=str(tmp_path / "test"), oracle=str(tmp_path / "oracle"),
                                    conditions=("baseline", "real-dup", "warp", "oracle"), out=str(tmp_path / "exp"),
                                    train_sizes=(4,), seeds=1, epochs=2, steps_per_epoch=1, batch_size=2,
                                    size=(64, 64), pretrained="none", device="cpu")
    summary = experiment.run_experiment(c, progress=False)
    assert state["val_reads"] > 0 and state["test_reads"] > 0
    assert state["test_reads_in_fit"] == 0
    import json

    res = json.loads((tmp_path / "exp" / "results.json").read_text())
    for r in res["runs"]:   # the selected epoch is the validation metric's best
        vals = [h["val_PCK@0.2"] for h in r["history"]]
        assert r["best_epoch"] == int(np.argmax(vals)) + 1
    assert set(summary["rows"][0]["conditions"]) == {"baseline", "real-dup", "warp", "oracle"}
    page = (tmp_path / "exp" / "report.html").read_text()
    assert "share of the oracle gap" in page and (tmp_path / "exp" / "comparison.png").exists()
    # the first table's cells sit under their headers: the selected epoch, then the arm joints' PCK
    head = re.findall(r"<th>(.*?)</th>", page.split("</tr>", 1)[0])
    first = page.split("</table>", 1)[0]
    base = re.search(r"<tr><td>baseline</td>(.*?)</tr>", first).group(1)
    cells = dict(zip(head[1:], re.findall(r"<td>(.*?)</td>", base)))
    cb = summary["rows"][0]["conditions"]["baseline"]
    assert cells["selected epoch"] == f"{cb['best_epoch']['mean']:.1f}"
    when = "the validation-selected epoch"
    assert cells[f"test PCK@0.2, elbows and wrists ({when})"].startswith(f"{cb['test_PCK_arms_best']['mean']:.3f}")
    for r in res["runs"]:   # both networks of every run are scored on its training images too
        assert r["gap_PCK"] == pytest.approx(r["train_PCK_best"] - r["test_PCK_best"])
        assert r["gap_PCK_final"] == pytest.approx(r["train_PCK_final"] - r["test_PCK_final"])

    # the same folder reported at the last epoch: nothing trains again, and the comparisons, the
    # gap and the report are on the final networks' figures
    monkeypatch.setattr(PoseNetTrainer, "fit", lambda self: pytest.fail("a finished run was trained again"))
    last = experiment.run_experiment(dataclasses.replace(c, report_at="last"), progress=False)
    assert last["metric"] == "test PCK@0.2 at the last epoch"   # (which figures it reads: test_statistics)
    assert "<th>train PCK (the last epoch)</th>" in (tmp_path / "exp" / "report.html").read_text()
    with pytest.raises(ConfigError, match="--report-at must be best or last"):
        experiment.run_experiment(dataclasses.replace(c, report_at="middle"), progress=False)
    with pytest.raises(ConfigError, match="--early-stop ends each run where validation says"):
        experiment.run_experiment(dataclasses.replace(c, report_at="last", early_stop=3), progress=False)

    # a later seed added by itself (--first-seed): only its run trains, the earlier ones are not
    # scored again, and the results are on it alone
    trained = []
    monkeypatch.setattr(PoseNetTrainer, "fit", lambda self: (trained.append(self.cfg.seed), fit(self))[1])
    experiment.run_experiment(dataclasses.replace(c, conditions=("baseline",), first_seed=1), progress=False)
    assert trained == [1] and (tmp_path / "exp" / "n4_seed1_baseline" / "checkpoints" / "latest.json").exists()
    assert [(r["seed"], r["cond"]) for r in json.loads((tmp_path / "exp" / "results.json").read_text())["runs"]] \
        == [(1, "baseline")]


def test_the_experiment_refuses_overlapping_splits(tmp_path):
    from posesynth.augment.experiment import ExperimentConfig, run_experiment
    from posesynth.errors import ConfigError

    with pytest.raises(ConfigError, match="--val and --test are the same data"):
        run_experiment(ExperimentConfig(data="a", val=str(tmp_path), test=str(tmp_path), oracle="o"))
    with pytest.raises(ConfigError, match="oracle condition needs --oracle"):
        run_experiment(ExperimentConfig(data="a", val="b", test="c", conditions=("baseline", "oracle")))
