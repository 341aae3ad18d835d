import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import run_cli
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.posemaps import render_heatmaps, render_pafs
from posesynth.posenet.decode import decode_people, decode_single, find_peaks
from posesynth.posenet.metrics import PoseMetrics, coco_oks
from posesynth.posenet.model import FPN, PoseNet, PoseNetConfig


def person(x0, y0, arm_dx=0.0):
    """A driver9 person with its neck at (x0, y0); coordinates in 384 px input."""
    kp = np.array([[x0 - 60 + arm_dx, y0 + 110], [x0 - 70, y0 + 50], [x0 - 45, y0 + 5], [x0, y0],
                   [x0 + 45, y0 + 5], [x0 + 70, y0 + 50], [x0 + 60 - arm_dx, y0 + 110], [x0 - 30, y0 + 150],
                   [x0 + 30, y0 + 150]], np.float32)
    return np.concatenate([kp, np.full((9, 1), 2, np.float32)], 1)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (128, 128)])
def test_posenet_shapes(size):
    m = PoseNet(PoseNetConfig(9, 8, 1, "pvt_v2_b0", "none", "small"))
    hm, paf, mask = m(torch.rand(2, 3, *size) * 2 - 1)
    assert hm.shape == (2, 9, size[0] // 4, size[1] // 4) and paf.shape == (2, 16, size[0] // 4, size[1] // 4)
    assert mask.shape == (2, 1, *size) and mask.dtype == torch.float32  # logits


def test_fpn_uses_every_level_once():
    fpn = FPN([8, 16, 32, 64], 16).eval()
    feats = [torch.rand(1, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate([8, 16, 32, 64])]
    base = fpn(feats)
    for i in range(4):  # changing any one level changes the output
        changed = [f.clone() for f in feats]
        changed[i] += 1.0
        assert not torch.allclose(fpn(changed), base), f"level {i} is ignored"
    assert base.shape == (1, 16, 32, 32)


def test_decode_single_within_one_pixel(rng):
    kp = person(190.3, 100.7)[None]
    hm = render_heatmaps(kp, (384, 384), (96, 96), sigma=7.0)
    out, scores = decode_single(hm, (384, 384))
    assert np.abs(out[0, :, :2] - kp[0, :, :2]).max() < 1.0
    assert (out[0, :, 2] == 2).all() and scores.min() > 0.9


def test_decode_two_people_with_close_limbs():
    """Two people overlapping (a passenger just behind): every limb of one lies within 40 px
    of the same limb of the other, in the same PAF channel."""
    a = person(150.4, 90.2)
    b = person(186.7, 102.9)
    kp = np.stack([a, b])
    gap = np.linalg.norm(a[:, :2] - b[:, :2], axis=1)
    assert gap.max() < 40
    hm = render_heatmaps(kp, (384, 384), (96, 96), 7.0)
    paf = render_pafs(kp, DRIVER9.limbs, (384, 384), (96, 96), 8.0)
    people, scores = decode_people(hm, paf, DRIVER9, (384, 384))
    assert len(people) == 2
    people = people[np.argsort(people[:, DRIVER9.index("neck"), 0])]
    for got, want in zip(people, kp):
        assert (got[:, 2] == 2).all()
        assert np.abs(got[:, :2] - want[:, :2]).max() < 1.0


def test_find_peaks_threshold():
    hm = np.zeros((2, 20, 20), np.float32)
    hm[0, 5, 5] = 0.5
    hm[0, 10, 12] = 0.05
    peaks = find_peaks(hm, 0.1)
    assert len(peaks[0]) == 1 and len(peaks[1]) == 0 and peaks[0][0, :2].tolist() == [5, 5]


def test_cocoeval_ap():
    gts = [np.stack([person(120, 90), person(260, 95)]), person(200, 100)[None]]
    sizes = [(384, 384), (384, 384)]
    perfect = coco_oks(gts, gts, [np.ones(2), np.ones(1)], DRIVER9, sizes)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = [g.copy() for g in gts]
    for g in noisy:
        g[..., :2] += rng.normal(0, 8, g[..., :2].shape)
    worse = coco_oks(gts, noisy, [np.ones(2), np.ones(1)], DRIVER9, sizes)
    assert worse["AP"] < 0.9
    m = PoseMetrics(DRIVER9)
    for g, p, s in zip(gts, noisy, sizes):
        m.add(g, p, np.ones(len(p)), s)
    r = m.result()
    assert 0 < r["PCK@0.2"] <= 1 and 5 < r["mean_px_error"] < 15


def test_pck_and_mask_metrics():
    g = person(200, 100)[None]
    p = g.copy()
    p[0, 0, :2] += [100, 0]   # one wrist far off
    m = PoseMetrics(DRIVER9, 0.2)
    mask = np.zeros((1, 8, 8))
    mask[0, :4] = 1
    pred = np.zeros((1, 8, 8))
    pred[0, :2] = 0.9
    m.add(g, p, np.ones(1), (384, 384), pred, mask)
    r = m.result()
    assert r["PCK@0.2"] == pytest.approx(8 / 9)
    assert r["mask_IoU"] == pytest.approx(0.5) and r["mask_Dice"] == pytest.approx(2 * 16 / 48)


def test_overfit_one_batch(tmp_path):
    from posesynth.datasets.synthetic import render_scene, scene_rng
    from posesynth.datasets.torch_dataset import sample_to_tensors
    from posesynth.posenet.losses import PoseLossWeights, pose_loss

    torch.manual_seed(0)
    items = [sample_to_tensors(render_scene(scene_rng(5, i), 96, passenger_prob=0), DRIVER9, with_maps=False)
             for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "heatmaps", "pafs", "masks")}
    m = PoseNet(PoseNetConfig(9, 8, 1, "pvt_v2_b0", "none", "small"))
    opt = torch.optim.AdamW(m.parameters(), 2e-3)
    w = PoseLossWeights(100, 100, 1)
    losses = []
    for _ in range(40):
        loss, _ = pose_loss(m(batch["image"]), batch, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) / 4, losses


def make_data(tmp_path, n=8, size=64, name="d", pose="narrow"):
    r = run_cli("make-data", "--out", tmp_path / name, "--num", n, "--size", size, "--workers", "1", "--pose-range", pose)
    assert r.returncode == 0, r.stderr
    return tmp_path / name


TINY = ["--size", "64", "--backbone", "pvt_v2_b0", "--pretrained", "none", "--heads", "small", "--batch-size", "2"]


def test_train_evaluate_predict_resume(tmp_path):
    data = make_data(tmp_path)
    run = tmp_path / "run"
    r = run_cli("train-posenet", "--data", data, "--val", data, "--out", run, *TINY, "--epochs", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("train-posenet", "--out", run, "--resume", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    hist = (run / "history.csv").read_text().splitlines()
    assert len(hist) == 3 and "val_PCK@0.2" in hist[0]
    # resumed with no epoch left: says so, trains nothing
    r = run_cli("train-posenet", "--out", run, "--resume", "--epochs", "2")
    assert r.returncode == 0 and "already trained 2 of 2 epochs; nothing to train" in r.stdout, r.stdout + r.stderr
    assert (run / "history.csv").read_text().splitlines() == hist
    assert (run / "curves.png").exists() and (run / "checkpoints" / "best.safetensors").exists()
    r = run_cli("evaluate", "--posenet", run, "--data", data)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "metrics_d.json").read_text())   # metrics_<data name>.json
    assert {"PCK@0.2", "AP", "AR", "mean_px_error", "mask_IoU", "mask_Dice"} <= set(metrics)
    r = run_cli("predict", "--posenet", run, "--images", data / "images", "--out", tmp_path / "pred")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "pred").glob("*.png"))) == 8


def test_two_process_gloo_run(tmp_path):
    data = make_data(tmp_path)
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "posesynth", "train-posenet", "--data", str(data), "--val", str(data), "--out", str(run),
                        *TINY, "--epochs", "1", "--device", "cpu"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from posesynth.posenet.trainer import load_posenet

    model, layout, meta = load_posenet(run)
    assert layout == DRIVER9 and meta["epoch"] == 1
    hm, paf, mask = model(torch.zeros(1, 3, 64, 64))
    assert hm.shape == (1, 9, 16, 16)
    assert len((run / "history.csv").read_text().splitlines()) == 2  # rank 0 wrote one row per epoch


def test_backbone_weights_from_file_and_missing_cache(tmp_path, monkeypatch, caplog):
    import logging

    import timm
    from safetensors.torch import save_file

    from posesynth.errors import ConfigError
    from posesynth.posenet.backbone import PVTBackbone

    full = timm.create_model("pvt_v2_b0", pretrained=False)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "b0.safetensors"))
    b = PVTBackbone("pvt_v2_b0", str(tmp_path / "b0.safetensors"))
    ours = dict(b.body.named_parameters())
    ref = full.state_dict()
    for key, value in ours.items():  # features_only names stage N "stages_N"
        assert torch.equal(value, ref[key.replace("stages_", "stages.")]), key
    with pytest.raises(ConfigError, match="backbone weights file not found"):
        PVTBackbone("pvt_v2_b0", str(tmp_path / "nope.pth"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING):
        PVTBackbone("pvt_v2_b0", "auto")
    assert "starting from random weights" in caplog.text


def test_no_detections_give_nan_error_not_zero():
    m = PoseMetrics(DRIVER9)
    m.add(person(200, 100)[None], np.zeros((0, 9, 3), np.float32), np.zeros(0), (384, 384))
    r = m.result()
    assert r["PCK@0.2"] == 0 and np.isnan(r["mean_px_error"]) and r["AP"] == 0


def test_mask_head_gets_gradient_under_bf16_where_most_wrong():
    """Issue 20.3: a large positive mask logit (>= 8) on a background pixel is the most wrong
    prediction there is; under bf16 autocast its loss gradient must not be 0 (a sigmoid in
    bf16 rounds it to 1.0 and a clamp then cuts the gradient off).  The true gradient of
    BCE-with-logits w.r.t. the logit is sigmoid(x) - t ~ 1 for t = 0."""
    from posesynth.posenet.losses import PoseLossWeights, pose_loss

    torch.manual_seed(0)
    m = PoseNet(PoseNetConfig(9, 8, 1, "pvt_v2_b0", "none", "small"))
    with torch.no_grad():
        m.seg_out.weight.zero_()
        m.seg_out.bias.fill_(12.0)          # every pixel: logit 12, sigmoid 0.999994
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    target = {"heatmaps": torch.zeros(2, 9, 16, 16), "pafs": torch.zeros(2, 16, 16, 16),
              "masks": torch.zeros(2, 1, 64, 64)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        loss, _ = pose_loss(out, target, PoseLossWeights(heatmap=0.0, paf=0.0, mask=1.0))
    loss.backward()
    g = m.seg_out.bias.grad
    assert g is not None and torch.isfinite(g).all()
    # mean over pixels of d(BCE)/d(logit) = sigmoid(12) - 0, plus Dice's (small) share
    assert float(g) == pytest.approx(1 / (1 + np.exp(-12.0)), rel=0.02)
    assert out[2].dtype == torch.float32  # logits come out in fp32


def test_oks_uses_the_annotation_area(tmp_path):
    """Issue 20.7: OKS AP with COCO's definition, s^2 = the annotation's ``area``: the area goes
    from the COCO file through the reader and the evaluation dataset to the metric.  One
    person, one prediction, every keypoint off by the same d: the OKS is, by COCO's formula,
    mean_k exp(-d^2 / (2 * area * (2 sigma_k)^2)), and COCOeval's AP over thresholds 0.50:0.95
    is the share of the ten thresholds at or below it."""
    import cv2

    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.torch_dataset import PoseMapDataset

    kp = person(100, 40)                         # spans 140 x 150 px: tight box area 21000
    area = 5200.0                                # the annotation's (segmentation) area
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((256, 256, 3), np.uint8))
    ann = {"id": 1, "image_id": 1, "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "area": area,
           "bbox": [30, 30, 150, 170], "iscrowd": 0, "num_keypoints": 9}
    cat = {"id": 1, "name": "person", "keypoints": list(DRIVER9.keypoints),
           "skeleton": [[a + 1, b + 1] for a, b in DRIVER9.limbs]}
    (root / "annotations.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 256,
                                                                   "height": 256}],
                                                       "annotations": [ann], "categories": [cat]}))
    ds = open_dataset(root, layout="driver9")
    assert ds[0].meta["areas"] == [area]
    item = PoseMapDataset(ds, (128, 128), with_original=True, with_maps=False)[0]
    sig = np.asarray(DRIVER9.sigmas, np.float64)
    d = 6.0
    pred = kp.copy()
    pred[:, 0] += d * 0.6
    pred[:, 1] += d * 0.8

    def hand_oks(s2):
        return float(np.mean(np.exp(-d ** 2 / (2 * s2 * (2 * sig) ** 2))))

    def ap(oks):
        return np.mean([oks >= t for t in np.linspace(0.5, 0.95, 10)])

    want = hand_oks(area)
    assert 0.5 < want < 0.95 and ap(want) != ap(hand_oks(140 * 150))   # the tight box would score otherwise
    m = PoseMetrics(DRIVER9)
    m.add(item["orig_keypoints"].numpy(), pred[None], np.array([1.0]), (256, 256),
          areas=item["orig_areas"].numpy())
    assert m.result()["AP"] == pytest.approx(ap(want), abs=1e-6)
    # without an area: the documented fallback, the tight box of the labelled keypoints
    m = PoseMetrics(DRIVER9)
    m.add(kp[None], pred[None], np.array([1.0]), (256, 256))
    assert m.result()["AP"] == pytest.approx(ap(hand_oks(140 * 150)), abs=1e-6)


def test_ema_is_the_moving_average_of_the_trained_weights_and_resumes_exactly(tmp_path, check_saved_average):
    """--ema D: the saved ``model`` is e_{n+1} = d_n e_n + (1 - d_n) w_{n+1} with
    d_n = min(D, (1 + n) / (10 + n)), computed here from snapshots of the trained weights after
    every step; --lr-schedule cosine gives lr x (0.01 + 0.99 (1 + cos(pi e / E)) / 2) in epoch
    e + 1; and a run killed in its second epoch and resumed ends with the same bytes."""
    import math

    from posesynth.checkpoint import load_checkpoint
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig

    data = make_data(tmp_path)
    decay = 0.9
    cfg = dict(data=str(data), val=str(data), size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small",
               batch_size=2, steps_per_epoch=3, device="cpu", seed=3, ema=decay, lr_schedule="cosine", lr=2e-3,
               data_augment=False)
    snaps = []

    def snapshot(batch, step):   # called before step `step`: the weights after the previous step
        snaps.append({k: v.detach().clone() for k, v in t.model.named_parameters()})
        return batch

    t = PoseNetTrainer(PoseTrainConfig(epochs=3, **cfg), tmp_path / "one", progress=False, batch_transform=snapshot)
    t.fit()
    snaps.append({k: v.detach().clone() for k, v in t.model.named_parameters()})
    saved, meta = load_checkpoint(tmp_path / "one" / "checkpoints" / "latest")
    assert meta["ema_updates"] == 9
    ema = check_saved_average(saved, snaps, decay, "model", "train_model")
    assert any(not torch.allclose(ema[k], snaps[-1][k]) for k in ema), "the average is the trained weights"
    lrs = [r["lr"] for r in t.history]
    want = [2e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * e / 3))) for e in range(3)]
    assert np.allclose(lrs, want, rtol=1e-9)

    def crash(batch, step):   # the process dies at the first step of epoch 2
        if step == 3:
            raise KeyboardInterrupt
        return batch

    with pytest.raises(KeyboardInterrupt):
        PoseNetTrainer(PoseTrainConfig(epochs=3, **cfg), tmp_path / "two", progress=False, batch_transform=crash).fit()
    PoseNetTrainer(PoseTrainConfig(epochs=3, **cfg), tmp_path / "two", progress=False, resume=True).fit()
    b, mb = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest")
    assert mb["epoch"] == 3 and saved.keys() == b.keys()
    assert all(torch.equal(saved[k], b[k]) for k in saved), "resumed run differs"
    from posesynth.errors import ConfigError

    with pytest.raises(ConfigError, match="trained with --lr-schedule cosine"):
        PoseNetTrainer(PoseTrainConfig(epochs=4, **{**cfg, "lr_schedule": "plateau"}), tmp_path / "two",
                       progress=False, resume=True)
