"""Silent wrong results found by review (issue 20): each test fails on the code before its fix."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.make_data import make_synthetic_dataset
from posesynth.datasets.sample import Sample
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.errors import ConfigError


def _seg_points(a, b, n=12, lo=0.2, hi=0.8):
    t = np.linspace(lo, hi, n)[:, None]
    return a[None] * (1 - t) + b[None] * t


# ---- 1. --rare reads the training arms in the run's layout ---------------------------------------
def _arm_angles_independently(samples, layout):
    """(abduction, flexion) of every fully labelled arm, from decoded samples."""
    from posesynth.datasets.geometry import arm_angles, arm_chains, body_frame

    out = []
    for s in samples:
        for person in s.keypoints.astype(np.float64):
            fr = body_frame(person, layout)
            if fr is None:
                continue
            _, down, across = fr
            for sh, el, wr in arm_chains(layout):
                if (person[[sh, el, wr], 2] > 0).all():
                    side = -across if layout.keypoints[sh].startswith("right") else across
                    out.append(arm_angles(person[sh, :2], person[el, :2], person[wr, :2], down, side))
    return np.array(out, float).reshape(-1, 2)


@pytest.mark.parametrize("name,path", [("coco", "coco/test_coco.json"), ("mpii", "mpii/test_mpii.json")])
def test_rare_counts_the_arms_in_the_runs_layout(fixtures, name, path):
    """coco17 (and MPII) data read as driver9: the arm-angle histogram counts the converted
    arms, the same as reading every decoded sample (before: a reshape traceback for COCO, and a
    silent uniform draw for MPII)."""
    from posesynth.augment.renderers import WarpRenderer
    from posesynth.augment.training import build_mixer
    from posesynth.datasets.formats import open_dataset, source_annotations
    from posesynth.datasets.posemaps import PoseMapSpec

    ds = open_dataset(fixtures / path, layout="driver9", on_error="skip")
    ann = source_annotations(ds)
    decoded = [ds[i] for i in range(len(ds))]
    assert len(ann) == len(decoded)
    for a, s in zip(ann, decoded):
        np.testing.assert_allclose(a, s.keypoints, atol=1e-4)   # the annotations are what load gives
    mixer = build_mixer(DRIVER9, PoseMapSpec(), "render", renderer=WarpRenderer(DRIVER9), rare=True, source=ds)
    hist = mixer.perturber.cfg.histogram
    angles = _arm_angles_independently(decoded, DRIVER9)
    lo, hi = hist.abd_edges[0], hist.abd_edges[-1]
    inside = angles[(angles[:, 0] >= lo) & (angles[:, 0] <= hi) & (angles[:, 1] >= 0)
                    & (angles[:, 1] <= hist.flex_edges[-1])]
    assert len(inside) > 0 and hist.counts.sum() == len(inside)


def test_rare_through_train_posenet_with_a_layout_conversion(fixtures, tmp_path):
    from posesynth.augment.training import AugmentedPoseConfig, build_pose_trainer

    cfg = AugmentedPoseConfig(data=str(fixtures / "coco" / "test_coco.json"), layout="driver9", renderer="warp",
                              rare=True, size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small",
                              epochs=1, device="cpu")
    t = build_pose_trainer(cfg, tmp_path / "run", progress=False)
    assert t.batch_transform.perturber.cfg.histogram.counts.sum() > 0


# ---- 2. the experiment does not reuse runs made with other settings --------------------------------
class _Stop(Exception):
    pass


def _datasets(tmp_path, test_passenger=0.0):
    for name, seed, pr, pp in (("train", 0, "narrow", 0.0), ("val", 1, "wide", 0.0), ("test", 2, "wide", test_passenger),
                               ("oracle", 3, "wide", 0.0)):
        make_synthetic_dataset(tmp_path / name, 6, seed=seed, size=64, pose_range=pr, passenger_prob=pp, workers=1,
                               progress=False)


def _exp(tmp_path, **kw):
    from posesynth.augment.experiment import ExperimentConfig

    base = dict(data=str(tmp_path / "train"), val=str(tmp_path / "val"), test=str(tmp_path / "test"),
                conditions=("baseline",), out=str(tmp_path / "exp"), train_sizes=(4,), seeds=1, epochs=1,
                steps_per_epoch=1, batch_size=2, size=(64, 64), pretrained="none", device="cpu")
    base.update(kw)
    return ExperimentConfig(**base)


def _stub_trainer(monkeypatch, seen):
    from posesynth.augment import experiment

    def stub(cfg, run, **kw):
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(experiment, "PoseNetTrainer", stub)


def test_an_experiment_with_other_settings_is_refused(tmp_path, monkeypatch):
    from posesynth.augment.experiment import run_experiment

    _datasets(tmp_path)
    seen = []
    _stub_trainer(monkeypatch, seen)
    with pytest.raises(_Stop):
        run_experiment(_exp(tmp_path, lr=1e-3), progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(lr: 0.001 there, 0.002 now\)"):
        run_experiment(_exp(tmp_path, lr=2e-3), progress=False)
    with pytest.raises(_Stop):   # the same settings (and more seeds) continue
        run_experiment(_exp(tmp_path, lr=1e-3, seeds=2), progress=False)
    # made before --ema existed: a missing setting is its default, so the default continues it
    rec = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    rec.pop("ema")
    (tmp_path / "exp" / "experiment.json").write_text(json.dumps(rec))
    with pytest.raises(_Stop):
        run_experiment(_exp(tmp_path, lr=1e-3), progress=False)
    with pytest.raises(ConfigError, match=r"ema: 0.0 there, 0.98 now"):
        run_experiment(_exp(tmp_path, lr=1e-3, ema=0.98), progress=False)
    # the pose runs' own transforms: a setting of the experiment, handed to every run
    assert seen[-1].data_augment is True
    with pytest.raises(ConfigError, match=r"data_augment: True there, False now"):
        run_experiment(_exp(tmp_path, lr=1e-3, data_augment=False), progress=False)
    with pytest.raises(_Stop):
        run_experiment(_exp(tmp_path, lr=1e-3, data_augment=False, out=str(tmp_path / "plain")), progress=False)
    assert seen[-1].data_augment is False


def test_a_gan_may_join_an_experiment_made_without_one_but_not_replace_one(tmp_path, monkeypatch):
    """A refine condition added to finished baseline/warp runs: the folder recorded no --gan (no
    run read one), so giving one now with a condition that loads it is recorded, not refused; a
    second, different one is; a --gan that no condition loads (so nothing checked it) is not
    recorded."""
    from posesynth.augment import experiment
    from posesynth.augment.experiment import run_experiment
    from posesynth.augment.renderers import WarpRenderer

    def load_renderer(name, layout, spec, gan, *a):   # a GAN run that must exist, as the real loader asks
        if gan and not Path(gan).is_dir():
            raise ConfigError(f"{gan}: no such GAN run folder")
        return WarpRenderer(layout)

    monkeypatch.setattr(experiment, "load_renderer", load_renderer)
    _datasets(tmp_path)
    _stub_trainer(monkeypatch, [])
    (tmp_path / "g1").mkdir()
    (tmp_path / "g2").mkdir()
    with pytest.raises(_Stop):
        run_experiment(_exp(tmp_path), progress=False)
    rec = tmp_path / "exp" / "experiment.json"
    assert json.loads(rec.read_text())["gan"] == ""
    with pytest.raises(ConfigError, match=r"gan: '' there"):   # no condition reads it: not recorded
        run_experiment(_exp(tmp_path, gan=str(tmp_path / "g1")), progress=False)
    with pytest.raises(ConfigError, match="no such GAN run"):   # a mistyped run: refused before anything is recorded
        run_experiment(_exp(tmp_path, conditions=("baseline", "refine"), gan=str(tmp_path / "g9")), progress=False)
    assert json.loads(rec.read_text())["gan"] == ""
    with pytest.raises(_Stop):
        run_experiment(_exp(tmp_path, conditions=("baseline", "refine"), gan=str(tmp_path / "g1")), progress=False)
    assert json.loads(rec.read_text())["gan"] == str((tmp_path / "g1").resolve())
    with pytest.raises(ConfigError, match=r"gan: '.*g1' there, '.*g2' now"):
        run_experiment(_exp(tmp_path, conditions=("baseline", "refine"), gan=str(tmp_path / "g2")), progress=False)
    with pytest.raises(ConfigError, match=r"lr: 0.001 there, 0.002 now"):   # only the gan may be filled in
        run_experiment(_exp(tmp_path, conditions=("baseline", "refine"), gan=str(tmp_path / "g1"), lr=2e-3),
                       progress=False)
    assert json.loads(rec.read_text())["lr"] == 0.001


def test_a_pose_run_with_other_settings_is_not_resumed(tmp_path):
    from posesynth.augment.experiment import _posecfg, _resumable
    from posesynth.config import to_dict

    c = _exp(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.json").write_text("{}")
    saved = to_dict(_posecfg(c, 0, False))
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "lr": 0.5}))
    with pytest.raises(ConfigError, match=r"other settings \(lr: 0.5 there, 0.001 now\)"):
        _resumable(run, _posecfg(c, 0, False))
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert _resumable(run, _posecfg(c, 0, False))
    # the same kind of device under another name continues (--device cpu, then auto on a machine
    # without CUDA); another kind (a GPU run on the CPU: its precision would change) does not
    now_cpu = _posecfg(_exp(tmp_path, device="auto"), 0, False)
    (run / "config.yaml").write_text(yaml.safe_dump({**to_dict(now_cpu), "device": "cpu"}))
    if not torch.cuda.is_available():
        assert _resumable(run, now_cpu)
    (run / "config.yaml").write_text(yaml.safe_dump({**to_dict(now_cpu), "device": "cuda:0"}))
    with pytest.raises(ConfigError, match=r"device: 'cuda:0' there, 'cpu' now"):
        _resumable(run, _posecfg(_exp(tmp_path, device="cpu"), 0, False))
    old = {k: v for k, v in saved.items() if k not in ("ema", "lr_schedule")}   # made before those options
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    assert _resumable(run, _posecfg(c, 0, False))
    with pytest.raises(ConfigError, match=r"lr_schedule: 'plateau' there, 'cosine' now"):
        _resumable(run, _posecfg(_exp(tmp_path, lr_schedule="cosine"), 0, False))


# ---- 5. the test split does not influence selection -------------------------------------------------
def test_the_test_split_does_not_choose_the_decoding(tmp_path, monkeypatch):
    """Two people in the test images only: the runs still decode (and select on validation)
    as single-person, which the training and validation data call for."""
    from posesynth.augment.experiment import run_experiment

    _datasets(tmp_path, test_passenger=1.0)
    seen = []
    _stub_trainer(monkeypatch, seen)
    with pytest.raises(_Stop):
        run_experiment(_exp(tmp_path), progress=False)
    assert seen and seen[0].multi_person is False


def test_an_oracle_smaller_than_the_training_size_is_refused(tmp_path):
    from posesynth.augment.experiment import run_experiment

    _datasets(tmp_path)
    with pytest.raises(ConfigError, match="--oracle .* has 6 usable images, fewer than the largest training size 8"):
        run_experiment(_exp(tmp_path, oracle=str(tmp_path / "oracle"), conditions=("baseline", "oracle"),
                            train_sizes=(4, 8)), progress=False)


# ---- 4. both renderers hide the seatbelt under a newly drawn arm ---------------------------------------
class _Flat(torch.nn.Module):
    """A 'generator' that draws mid-grey: only the labels matter here."""

    def forward(self, x):
        return torch.zeros(x.shape[0], 3, *x.shape[-2:], dtype=x.dtype)


def _belt_case():
    """A driver scene and new keypoints whose right forearm lies across the seatbelt."""
    for i in range(40):
        s = render_scene(scene_rng(5, i), 128, "narrow", 0.0)
        belt = s.masks[0] > 0
        k = s.keypoints[0]
        rs, re, rw = (DRIVER9.index(n) for n in ("right_shoulder", "right_elbow", "right_wrist"))
        if not belt.any() or (k[[rs, re, rw], 2] <= 0).any():
            continue
        ys, xs = np.nonzero(belt)
        far = np.hypot(xs - k[re, 0], ys - k[re, 1]) > 30     # a belt pixel away from the old elbow and wrist
        far &= np.hypot(xs - k[rw, 0], ys - k[rw, 1]) > 30
        if not far.any():
            continue
        j = np.flatnonzero(far)[len(np.flatnonzero(far)) // 2]
        new = s.keypoints.copy()
        new[0, rw, :2] = (xs[j], ys[j])
        new[0, re, :2] = (k[rs, :2] + new[0, rw, :2]) / 2 + np.array([4.0, 0.0])
        return s, new
    pytest.skip("no scene with a seatbelt away from the right arm")


def test_gan_and_warp_renders_label_the_belt_under_a_new_arm_alike():
    from posesynth.augment.renderers import GANRenderer, WarpRenderer
    from posesynth.datasets.posemaps import PoseMapSpec
    from posesynth.datasets.torch_dataset import image_to_tensor

    s, new = _belt_case()
    re, rw = DRIVER9.index("right_elbow"), DRIVER9.index("right_wrist")
    img = image_to_tensor(s.image)[None]
    masks = torch.from_numpy(s.masks[None]).float()
    old = s.keypoints[None]
    on_arm = np.round(_seg_points(new[0, re, :2], new[0, rw, :2], 12, 0.4, 0.9)).astype(int)
    src_belt = s.masks[0][on_arm[:, 1], on_arm[:, 0]] > 0
    assert src_belt.any()   # the new forearm crosses the belt
    gan = GANRenderer(_Flat(), "full", DRIVER9, PoseMapSpec(), (128, 128))
    warp = WarpRenderer(DRIVER9)
    for r in (gan, warp):
        out = r(img, masks, old, new[None]).masks[0, 0].numpy()
        under = out[on_arm[:, 1], on_arm[:, 0]]
        assert (under[src_belt] == 0).all(), r.name    # hidden under the new arm
        ys, xs = np.nonzero(s.masks[0])
        d = np.minimum(np.hypot(xs - new[0, rw, 0], ys - new[0, rw, 1]), np.hypot(xs - old[0, 0, rw, 0],
                                                                                  ys - old[0, 0, rw, 1]))
        keep = d > 45
        assert (out[ys[keep], xs[keep]] == 1).all(), r.name   # far from both arms: the source's belt


# ---- 8. the GAN's maps keep every person ---------------------------------------------------------------
def test_gan_maps_keep_people_beyond_four(tmp_path):
    from posesynth.spade.trainer import GANConfig, GANTrainer

    base = render_scene(scene_rng(3, 0), 128, "narrow", 0.0)
    kp = base.keypoints[0].copy()
    people = []
    for j in range(5):   # five small copies of the driver's skeleton, side by side
        k = kp.copy()
        k[:, :2] = k[:, :2] * 0.2 + np.array([8 + 24 * j, 40])
        people.append(k)

    class Five:
        layout = DRIVER9

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Sample(base.image, np.stack(people), base.masks, i + 1)

    t = GANTrainer(GANConfig(size=(128, 128), ngf=8, ndf=8, steps=1, vgg="off", augment=False, device="cpu"),
                   tmp_path / "run", source=Five(), progress=False)
    assert t.dataset.max_people == 5
    maps = t.dataset[0]["maps"]
    neck = DRIVER9.index("neck")
    x, y = np.round(people[4][neck, :2]).astype(int)
    assert maps[neck, y, x] > 0.5   # the fifth person's neck is drawn in the conditioning


# ---- 10. options that would silently do nothing are refused ----------------------------------------------
def test_warp_with_a_gan_run_is_refused_before_any_folder(tmp_path):
    from posesynth.augment.renderers import make_renderer
    from posesynth.cli import main

    make_synthetic_dataset(tmp_path / "d", 4, seed=0, size=64, workers=1, progress=False)
    out = tmp_path / "run"
    assert main(["train-posenet", "--data", str(tmp_path / "d"), "--out", str(out), "--renderer", "warp", "--gan",
                 str(tmp_path / "g"), "--device", "cpu"]) == 2
    assert not out.exists()
    with pytest.raises(ConfigError, match="needs no GAN run"):
        make_renderer("warp", DRIVER9, gan="somewhere")


# ---- every architecture renders where it makes sense (issue 23) ---------------------------------------------
@pytest.mark.parametrize("arch", ["pix2pix", "nearest"])
def test_other_architectures_render_new_poses(tmp_path, arch):
    from posesynth.augment.renderers import load_gan_renderer
    from posesynth.cli import main
    from posesynth.spade.trainer import GANConfig, GANTrainer

    make_synthetic_dataset(tmp_path / "d", 4, seed=0, size=64, workers=1, progress=False)
    from posesynth.datasets.formats import open_dataset

    src = open_dataset(tmp_path / "d")
    GANTrainer(GANConfig(arch=arch, size=(64, 64), ngf=8, ndf=8, steps=1, vgg="off", device="cpu",
                         data=str(tmp_path / "d")), tmp_path / "g", source=src, progress=False).fit()
    r = load_gan_renderer(str(tmp_path / "g"), DRIVER9)
    s = src[0]
    from posesynth.datasets.torch_dataset import image_to_tensor

    new = s.keypoints.copy()
    new[0, DRIVER9.index("right_wrist"), 0] += 5
    out = r(image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float(), s.keypoints[None], new[None])
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()
    assert main(["render", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--gan", str(tmp_path / "g"),
                 "--num", "2", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "r").glob("00000?.png"))) == 2
    bad = tmp_path / "gen"
    assert main(["generate", "--data", str(tmp_path / "d"), "--out", str(bad), "--gan", str(tmp_path / "g"),
                 "--precision", "int8", "--device", "cpu"]) == 2
    assert main(["generate", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "gen2"), "--gan",
                 str(tmp_path / "g"), "--device", "cpu"]) == 0
    assert len(json.loads((tmp_path / "gen2" / "annotations.json").read_text())["images"]) == 4


# ---- masks a dataset does not label (real frames without a seatbelt mask) ---------------------
def test_an_unlabelled_mask_adds_no_loss_and_no_gradient():
    """dice_bce_logits with ``valid``: the loss is the mean over the labelled (sample, channel)
    pairs of BCE + 1 - Dice, each computed here by hand; the unlabelled ones get no gradient."""
    from posesynth.losses import dice_bce_logits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 8, generator=g).requires_grad_(True)
    t = (torch.rand(3, 2, 8, 8, generator=g) > 0.7).float()
    valid = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    loss = dice_bce_logits(x, t, valid=valid)
    want = []
    for b, m in [(0, 0), (2, 0), (2, 1)]:
        p = torch.sigmoid(x[b, m])
        bce = -(t[b, m] * torch.log(p) + (1 - t[b, m]) * torch.log(1 - p)).mean()
        dice = (2 * (p * t[b, m]).sum() + 1) / (p.sum() + t[b, m].sum() + 1)
        want.append(bce + 1 - dice)
    assert torch.allclose(loss, torch.stack(want).mean(), atol=1e-6)
    loss.backward()
    assert x.grad[0, 1].abs().max() == 0 and x.grad[1].abs().max() == 0 and x.grad[2].abs().max() > 0
    none = dice_bce_logits(x, t, valid=torch.zeros(3, 2))
    assert float(none.detach()) == 0.0 and none.requires_grad
    assert torch.allclose(dice_bce_logits(x, t, valid=torch.ones(3, 2)), dice_bce_logits(x, t))


def test_a_dataset_without_mask_files_trains_no_seatbelt_and_generate_keeps_it_unlabelled(tmp_path):
    """A driver9 COCO dataset whose images name no seatbelt file (as ../shared/fixtures/buffy):
    the items say the mask is unlabelled (mask_valid 0), a drawn scene's says labelled, and a
    dataset generated from it writes no mask file, so it stays unlabelled when read back."""
    from posesynth.augment.generate import GenerateConfig, generate_dataset
    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.torch_dataset import PoseMapDataset

    src = tmp_path / "scenes"
    make_synthetic_dataset(src, num=4, size=96, seed=2, workers=1)
    ann = json.loads((src / "annotations.json").read_text())
    import shutil

    shutil.copytree(src, tmp_path / "empty0")   # a labelled copy, for the IoU check below
    labelled = PoseMapDataset(open_dataset(src), (96, 96), None)[0]
    assert labelled["mask_valid"].tolist() == [1.0] and labelled["masks"].sum() > 0
    for im in ann["images"]:
        im.pop("masks")
    ann["categories"][0].pop("masks", None)
    (src / "annotations.json").write_text(json.dumps(ann))
    ds = open_dataset(src)
    assert list(ds.layout.masks) == ["seatbelt"]
    item = PoseMapDataset(ds, (96, 96), None)[0]
    assert item["mask_valid"].tolist() == [0.0] and item["masks"].sum() == 0
    out = tmp_path / "gen"
    generate_dataset(GenerateConfig(renderer="warp", data=str(src), out=str(out), per_image=1, seed=1, device="cpu"),
                     progress=False)
    gen = json.loads((out / "annotations.json").read_text())
    assert all(im["masks"] == {"seatbelt": None} for im in gen["images"]) and not list(out.glob("masks/*.png"))
    assert PoseMapDataset(open_dataset(out), (96, 96), None)[0]["mask_valid"].tolist() == [0.0]
    # mask IoU is scored only where the mask is labelled
    from posesynth.datasets.layouts import DRIVER9
    from posesynth.posenet.evaluate import evaluate_dataset
    from posesynth.posenet.model import PoseNet, PoseNetConfig

    net = PoseNet(PoseNetConfig(9, 8, 1, "pvt_v2_b0", "none", "small"))
    ev = dict(layout=DRIVER9, multi_person=False, threshold=0.1, pck_alpha=0.2, weights=None, batch_size=4, device="cpu")
    assert "mask_IoU" not in evaluate_dataset(net, PoseMapDataset(ds, (96, 96), None, with_original=True), **ev)
    assert "mask_IoU" in evaluate_dataset(net, PoseMapDataset(open_dataset(tmp_path / "empty0"), (96, 96), None,
                                                              with_original=True), **ev)
    # convert keeps both kinds: unlabelled stays unlabelled, and a labelled empty mask stays labelled
    from posesynth.datasets.export import convert_dataset

    convert_dataset(src, tmp_path / "conv")
    assert PoseMapDataset(open_dataset(tmp_path / "conv"), (96, 96), None)[0]["mask_valid"].tolist() == [0.0]
    empty = tmp_path / "empty"
    make_synthetic_dataset(empty, num=1, size=96, seed=2, workers=1)
    belt = next((empty / "masks").glob("*.png"))
    import cv2

    cv2.imwrite(str(belt), np.zeros((96, 96), np.uint8))
    convert_dataset(empty, tmp_path / "conv2")
    assert not list((tmp_path / "conv2").glob("masks/*.png"))   # an empty mask has no file there ...
    item = PoseMapDataset(open_dataset(tmp_path / "conv2"), (96, 96), None)[0]
    assert item["mask_valid"].tolist() == [1.0] and item["masks"].sum() == 0   # ... and reads as empty, labelled
