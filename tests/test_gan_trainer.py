import csv
import logging

import numpy as np
import pytest
import torch
from torch import nn

from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.datasets.layouts import DRIVER9
from posesynth.errors import ConfigError
from posesynth.spade.trainer import GANConfig, GANTrainer, TrainingError, load_generator


class ListSource:
    """A few synthetic scenes in memory."""

    layout = DRIVER9

    def __init__(self, n=4, size=64):
        self.samples = [render_scene(scene_rng(9, i), size, passenger_prob=0.0) for i in range(n)]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def small_cfg(**kw):
    # on the CPU wherever the test runs: the tests feed the trainer's parts CPU tensors and compare
    # bits (the GPU paths are checked by benchmarks/gpu_check.sh)
    base = dict(size=(64, 64), ngf=8, ndf=16, batch_size=2, steps=4, vgg="off", log_every=1, gallery_every=1000,
                checkpoint_every=1000, augment=False, seed=3, device="cpu")
    base.update(kw)
    return GANConfig(**base)


def read_losses(run):
    with open(run / "losses.csv") as f:
        return list(csv.DictReader(f))


def test_overfitting_one_batch_lowers_feature_matching(tmp_path):
    """G memorises one batch through the discriminator's features: with D frozen (lr 0) the
    feature-matching loss and the image error both fall by a large factor."""
    from posesynth.datasets.torch_dataset import sample_to_tensors

    torch.manual_seed(0)
    src = ListSource(2, 64)
    items = [sample_to_tensors(s, DRIVER9) for s in src.samples]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("maps", "image")}
    t = GANTrainer(small_cfg(lr_g=3e-3, lr_d=0.0, steps=200, lambda_l1=0.0), tmp_path / "run", source=src,
                   progress=False)

    def image_error():
        with torch.no_grad():
            return float((t.G(batch["maps"]) - batch["image"]).abs().mean())

    err0 = image_error()
    fm = []
    for _ in range(200):
        fm.append(t.train_step(batch)["g_feat"])
        t.step += 1
    first, last = np.mean(fm[:10]), np.mean(fm[-10:])
    assert last < first / 3, (first, last)
    assert image_error() < err0 / 4
    assert "g_l1" not in t.train_step(batch)    # feature matching alone did it


def test_spade_full_mode_l1_is_the_whole_image_error(tmp_path):
    """Full mode's L1 term is lambda times the mean absolute error over the whole image."""
    from posesynth.datasets.torch_dataset import sample_to_tensors

    src = ListSource(2, 64)
    items = [sample_to_tensors(s, DRIVER9) for s in src.samples]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("maps", "image")}
    t = GANTrainer(small_cfg(lr_g=0.0, lr_d=0.0, lambda_l1=7.0), tmp_path / "run", source=src, progress=False)
    drawn = []
    t.G.register_forward_hook(lambda m, i, out: drawn.append(out.detach()))
    logged = t.train_step(batch)["g_l1"]
    expected = 7.0 * float((drawn[0] - batch["image"]).abs().mean())
    assert logged == pytest.approx(expected, rel=1e-5)


def test_reloaded_checkpoint_reproduces_generator(tmp_path):
    t = GANTrainer(small_cfg(steps=2), tmp_path / "run", source=ListSource(), progress=False)
    t.fit()
    g, layout, meta = load_generator(tmp_path / "run")
    assert layout == DRIVER9 and meta["step"] == 2
    x = torch.rand(2, 26, 64, 64)
    t.G.eval()
    with torch.no_grad():
        assert torch.equal(g(x), t.G(x))


def test_resume_continues_exactly(tmp_path):
    src = ListSource()
    GANTrainer(small_cfg(steps=6), tmp_path / "full", source=src, progress=False).fit()
    GANTrainer(small_cfg(steps=3), tmp_path / "part", source=src, progress=False).fit()
    stale = tmp_path / "part" / "web" / ".index.html.a1b2c3d4.tmp"   # the gallery's write, cut by a crash
    stale.write_text("<html")
    resumed = GANTrainer(small_cfg(steps=6), tmp_path / "part", source=src, resume=True, progress=False)
    assert resumed.step == 3 and not stale.exists()
    resumed.fit()
    full, part = read_losses(tmp_path / "full"), read_losses(tmp_path / "part")
    assert [r["step"] for r in part] == [str(i) for i in range(1, 7)]
    assert full == part  # same losses, to the printed digit, at every step
    a, _, _ = load_generator(tmp_path / "full")
    b, _, _ = load_generator(tmp_path / "part")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_generator_average_is_what_renders_and_resumes_exactly(tmp_path, check_saved_average):
    """--ema D for the GAN: the checkpoint's G (what load_generator and every renderer use) is
    e_{n+1} = d_n e_n + (1 - d_n) w_{n+1}, d_n = min(D, (1 + n) / (10 + n)), computed here from
    snapshots of the trained weights after every step; the trained weights are saved beside it
    as G_train; a run stopped after 3 steps and resumed ends with the same bytes; a run saved
    without the average is not resumed with one."""
    from posesynth.checkpoint import load_checkpoint

    src, decay = ListSource(), 0.8
    t = GANTrainer(small_cfg(steps=5, ema=decay), tmp_path / "one", source=src, progress=False)
    snaps = [{k: v.detach().clone() for k, v in t.G.named_parameters()}]
    step = t.train_step

    def recorded(batch):
        out = step(batch)
        snaps.append({k: v.detach().clone() for k, v in t.G.named_parameters()})
        return out

    t.train_step = recorded
    t.fit()
    assert len(snaps) == 6
    saved, meta = load_checkpoint(tmp_path / "one" / "checkpoints" / "latest")
    assert meta["ema_updates"] == 5
    avg = check_saved_average(saved, snaps, decay, "G", "G_train")
    assert any(not torch.allclose(avg[k], snaps[-1][k], atol=1e-6) for k in avg), "the average is the trained weights"
    g, _, _ = load_generator(tmp_path / "one")
    for k, v in g.named_parameters():
        assert torch.equal(v.detach(), saved[f"G.{k}"]), k
    GANTrainer(small_cfg(steps=3, ema=decay), tmp_path / "two", source=src, progress=False).fit()
    GANTrainer(small_cfg(steps=5, ema=decay), tmp_path / "two", source=src, resume=True, progress=False).fit()
    b, _ = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest")
    assert saved.keys() == b.keys() and all(torch.equal(saved[k], b[k]) for k in saved), "resumed run differs"
    GANTrainer(small_cfg(steps=3), tmp_path / "plain", source=src, progress=False).fit()
    with pytest.raises(ConfigError, match="saved without --ema"):
        GANTrainer(small_cfg(steps=5, ema=decay), tmp_path / "plain", source=src, resume=True, progress=False)
    with pytest.raises(ConfigError, match="nearest is not trained"):   # nothing to average
        GANConfig(arch="nearest", ema=decay).validate()


def test_existing_run_needs_resume(tmp_path):
    GANTrainer(small_cfg(steps=1), tmp_path / "run", source=ListSource(), progress=False).fit()
    with pytest.raises(ConfigError, match="pass --resume"):
        GANTrainer(small_cfg(steps=1), tmp_path / "run", source=ListSource(), progress=False)


def test_nan_guard_skips_and_stops(tmp_path):
    t = GANTrainer(small_cfg(max_bad_steps=3), tmp_path / "run", source=ListSource(), progress=False)
    before = {k: v.clone() for k, v in t.G.state_dict().items()}
    batch = {"maps": torch.full((2, 26, 64, 64), float("nan")), "image": torch.zeros(2, 3, 64, 64)}
    assert t.train_step(batch) is None
    assert t.skipped_steps == 1
    for k, v in t.G.state_dict().items():
        assert torch.equal(v, before[k]) or k.endswith(("_u", "_v")), k  # no weight update
    t.train_step(batch)
    with pytest.raises(TrainingError, match="3 steps in a row had a non-finite generator loss"):
        t.train_step(batch)


class Judge(nn.Module):
    """A stand-in pose network: image -> (heatmaps 1/4, PAFs 1/4, mask logits full size)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.hm = nn.Conv2d(8, 9, 1)
        self.paf = nn.Conv2d(8, 16, 1)
        self.mask = nn.Conv2d(8, 1, 1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        f = torch.relu(self.bn(self.body(x)))
        small = nn.functional.avg_pool2d(f, 4)
        return self.hm(small), self.paf(small), self.mask(f)


def test_pose_judge_is_frozen_and_receives_no_gradient(tmp_path):
    judge = Judge()
    judge.train()
    before = {k: v.clone() for k, v in judge.state_dict().items()}
    t = GANTrainer(small_cfg(steps=2), tmp_path / "run", source=ListSource(), pose_judge=judge, progress=False)
    g_before = t.G.conv_img.weight.detach().clone()
    t.fit()
    assert not judge.training and all(not m.training for m in judge.modules())
    assert all(p.grad is None and not p.requires_grad for p in judge.parameters())
    for k, v in judge.state_dict().items():  # BN running stats untouched too (eval mode)
        assert torch.equal(v, before[k]), k
    assert not torch.equal(t.G.conv_img.weight, g_before)
    rows = read_losses(tmp_path / "run")
    assert "g_pose" in rows[0] and float(rows[0]["pose_hm"]) > 0


def test_vgg_missing_weights(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING):
        t = GANTrainer(small_cfg(vgg="auto"), tmp_path / "a", source=ListSource(), progress=False)
    assert t.vgg is None and "perceptual loss off" in caplog.text
    with pytest.raises(ConfigError, match="no VGG19 weights were found"):
        GANTrainer(small_cfg(vgg="on"), tmp_path / "b", source=ListSource(), progress=False)
    with pytest.raises(ConfigError, match="VGG19 weights file not found"):
        GANTrainer(small_cfg(vgg="on", vgg_weights=str(tmp_path / "x.pth")), tmp_path / "c", source=ListSource(),
                   progress=False)


def test_vgg_weights_from_file(tmp_path):
    """A file of torchvision's VGG19 tensors (here its features alone, as a user may keep them)
    loads layer for layer: the loss network computes what torchvision's VGG19 computes up to
    relu5_1 with those weights."""
    import torchvision
    from safetensors.torch import save_file

    tv = torchvision.models.vgg19(weights=None).features[:30].eval()
    save_file({f"features.{k}": v.contiguous() for k, v in tv.state_dict().items()}, str(tmp_path / "vgg19.safetensors"))
    t = GANTrainer(small_cfg(vgg="on", vgg_weights=str(tmp_path / "vgg19.safetensors"), steps=1), tmp_path / "r",
                   source=ListSource(), progress=False)
    assert t.vgg is not None
    assert all(not p.requires_grad for p in t.vgg.parameters())
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(torch.nn.Sequential(*t.vgg.slices)(x), tv(x.clone()))
    t.fit()
    assert "g_vgg" in read_losses(tmp_path / "r")[0]


def test_vgg_weights_file_checked(tmp_path):
    """torchvision's whole state dict (.pth, classifier included) loads with the classifier left
    out; a file that is not VGG19 is refused with a message naming it, never a traceback."""
    from safetensors.torch import save_file

    from posesynth.spade.losses import load_vgg19, vgg19_features

    sd = {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
    torch.save(dict(sd, **{"classifier.0.bias": torch.zeros(3)}), tmp_path / "whole.pth")
    feats = load_vgg19(tmp_path / "whole.pth")
    assert torch.equal(feats[28].weight, sd["features.28.weight"])
    save_file({k: v for k, v in sd.items() if k != "features.28.weight"}, str(tmp_path / "short.safetensors"))
    with pytest.raises(ConfigError, match=r"short\.safetensors: not VGG19 weights .*features\.28\.weight"):
        load_vgg19(tmp_path / "short.safetensors")
    save_file(dict(sd, **{"features.0.weight": torch.zeros(64, 1, 3, 3)}), str(tmp_path / "gray.safetensors"))
    with pytest.raises(ConfigError, match=r"gray\.safetensors: not VGG19 weights \(features\.0\.weight is \(64, 1, 3, 3\)"):
        load_vgg19(tmp_path / "gray.safetensors")
    save_file({k[len("features."):]: v for k, v in sd.items()}, str(tmp_path / "bare.safetensors"))   # vgg.features'
    assert torch.equal(load_vgg19(tmp_path / "bare.safetensors")[0].weight, sd["features.0.weight"])
    torch.save({"features.0.weight": "a string"}, tmp_path / "odd.pth")
    with pytest.raises(ConfigError, match=r"odd\.pth: not a VGG19 state dict"):
        load_vgg19(tmp_path / "odd.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk\.pth: cannot read VGG19 weights"):
        load_vgg19(tmp_path / "junk.pth")


@pytest.mark.parametrize("mode", ["ls", "wgan-gp"])
def test_other_gan_modes_train(tmp_path, mode):
    t = GANTrainer(small_cfg(gan_mode=mode, steps=2), tmp_path / "run", source=ListSource(), progress=False)
    out = t.fit()
    assert np.isfinite(out["d_real"]) and (mode != "wgan-gp" or "d_gp" in out)


def test_pose_judge_from_a_posenet_run(tmp_path):
    """--pose-judge RUN loads a trained pose network, frozen, as the judge."""
    from posesynth.posenet.model import PoseNet
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig

    src = ListSource(4, 64)
    pcfg = PoseTrainConfig(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small", epochs=1,
                           batch_size=2, data_augment=False)
    PoseNetTrainer(pcfg, tmp_path / "pose", source=src, progress=False).fit()
    t = GANTrainer(small_cfg(steps=1, pose_judge=str(tmp_path / "pose")), tmp_path / "gan", source=src, progress=False)
    judge = t.pose_loss.judge
    assert isinstance(judge, PoseNet) and not judge.training
    assert all(not p.requires_grad for p in judge.parameters())
    t.fit()
    assert "g_pose" in read_losses(tmp_path / "gan")[0]


# ---- the classic generators through the same trainer (--arch) ---------------------------------
@pytest.mark.parametrize("arch,netg,gan_mode", [("pix2pix", "unet", "hinge"), ("pix2pix", "resnet", "ls"),
                                                ("vanilla", "unet", "wgan-gp")])
def test_each_arch_trains_reloads_and_resumes(tmp_path, arch, netg, gan_mode):
    from posesynth.spade.load import load_render

    src = ListSource()
    cfg = small_cfg(arch=arch, netg=netg, gan_mode=gan_mode, steps=2)
    t = GANTrainer(cfg, tmp_path / "run", source=src, progress=False)
    # pix2pix's settings where none are given: one 70x70 PatchGAN, L1 x 100, no feature matching
    assert (cfg.num_d, cfg.lambda_l1, cfg.lambda_feat, cfg.lr_g, cfg.beta1) == (1, 100.0, 0.0, 2e-4, 0.5)
    assert len(t.D.scales) == 1 and t.D.scales[0].layers[0][0].in_channels == 6   # stick figure + image
    w0 = next(t.G.parameters()).detach().clone()
    t.fit()
    assert not torch.equal(next(t.G.parameters()), w0)
    rows = read_losses(tmp_path / "run")
    assert len(rows) == 2 and float(rows[0]["g_l1"]) > 0 and "g_feat" not in rows[0]
    assert (gan_mode == "wgan-gp") == ("d_gp" in rows[0])
    g, layout, meta = load_generator(tmp_path / "run")
    assert meta["arch"] == arch and meta["mode"] == "full" and meta["step"] == 2 and layout == DRIVER9
    assert meta["target"]["anchor"] == "hip"                      # driver9 has hips, no ankles
    kp = torch.zeros(2, 1, 9, 3)
    kp[..., 0], kp[..., 1], kp[..., 2] = torch.linspace(10, 50, 9), torch.linspace(8, 56, 9), 2
    render, _, _ = load_render(tmp_path / "run")
    t.G.eval()
    with torch.no_grad():
        x = t.arch.prepare({"keypoints": kp, "image": torch.zeros(2, 3, 64, 64)}, 0)["g_in"]
        assert torch.equal(render(kp, (64, 64)), t.G(x))      # the reloaded run draws what the trainer's G does
    resumed = GANTrainer(small_cfg(arch=arch, netg=netg, gan_mode=gan_mode, steps=3), tmp_path / "run", source=src,
                         resume=True, progress=False)
    assert resumed.step == 2
    resumed.fit()
    assert len(read_losses(tmp_path / "run")) == 3
    with pytest.raises(ConfigError, match=f"a {arch} run cannot continue as --arch spade"):
        GANTrainer(small_cfg(steps=4), tmp_path / "run", source=src, resume=True, progress=False)


@pytest.mark.parametrize("arch", ["pix2pix", "vanilla"])
def test_learned_baselines_overfit_one_batch_through_the_trainer(tmp_path, arch):
    """With D frozen (lr 0) the trainer's G step alone (L1 x 100 + GAN) memorises one batch:
    each image is drawn from its own pose."""
    from posesynth.datasets.torch_dataset import sample_to_tensors

    torch.manual_seed(0)
    src = ListSource(2, 64)
    items = [sample_to_tensors(s, DRIVER9, with_maps=False) for s in src.samples]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "keypoints")}
    t = GANTrainer(small_cfg(arch=arch, lr_g=2e-3, lr_d=0.0, steps=200), tmp_path / "run", source=src,
                   progress=False)

    def errors():
        t.G.eval()
        with torch.no_grad():
            out = t.G(t.arch.prepare(dict(batch), 0)["g_in"])
        t.G.train()
        return (out - batch["image"]).abs().flatten(1).mean(1)

    first = errors()
    for _ in range(100):   # 60 steps left vanilla at exactly first / 4 on one CPU: the path is noisy
        t.train_step(batch)
        t.step += 1
    last = errors()
    assert torch.all(last < first / 4) and torch.all(last < 0.12), (first, last)


def test_nearest_run_returns_the_exact_training_frame(tmp_path):
    from posesynth.datasets.torch_dataset import PoseMapDataset
    from posesynth.spade.load import load_render

    src = ListSource(5, 64)
    t = GANTrainer(small_cfg(arch="nearest", augment=True), tmp_path / "nn", source=src, progress=False)
    assert t.fit()["frames"] == 5
    assert (tmp_path / "nn" / "web" / "index.html").exists()
    render, layout, meta = load_render(tmp_path / "nn")
    assert meta["arch"] == "nearest" and meta["generator"]["frames"] == 5
    plain = PoseMapDataset(src, (64, 64), None, with_maps=False)      # the frames as every arch sees them
    for i in (3, 0, 4):
        item = plain[i]
        out = render(item["keypoints"][None], (64, 64))
        assert torch.equal(out[0], item["image"])                 # exactly that frame, whatever the augmentation
    with pytest.raises(ConfigError, match="nearest is not trained"):
        GANTrainer(small_cfg(arch="nearest"), tmp_path / "x", source=src, pose_judge=Judge(), progress=False)


def test_arch_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="arch must be one of spade, pix2pix, vanilla, nearest"):
        GANTrainer(small_cfg(arch="cyclegan"), tmp_path / "a", source=ListSource(), progress=False)
    with pytest.raises(ConfigError, match="--mode inpaint is not for --arch pix2pix"):
        GANTrainer(small_cfg(arch="pix2pix", mode="inpaint"), tmp_path / "b", source=ListSource(), progress=False)
    cfg = small_cfg().resolve()                                   # spade keeps the values it always had
    assert (cfg.num_d, cfg.lambda_feat, cfg.lambda_vgg, cfg.lambda_l1, cfg.lr_g, cfg.lr_d, cfg.beta1, cfg.beta2) == (
        2, 10.0, 10.0, 20.0, 1e-4, 4e-4, 0.0, 0.9)
