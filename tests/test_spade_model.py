import sys
from pathlib import Path

import pytest
import torch

from posesynth.spade.discriminator import MultiscaleDiscriminator
from posesynth.spade.generator import GeneratorConfig, SPADEGenerator, convert_nvlabs_state_dict
from posesynth.spade.losses import feature_matching_loss, gan_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from nvlabs_reference import RefMultiscaleDiscriminator, RefSPADEGenerator  # noqa: E402


@pytest.mark.parametrize("size,up", [((64, 64), "normal"), ((96, 160), "normal"), ((128, 128), "more"),
                                     ((128, 256), "most")])
def test_generator_shapes(size, up):
    g = SPADEGenerator(GeneratorConfig(label_nc=26, size=size, ngf=8, num_upsampling=up, z_dim=2))
    y = g(torch.rand(2, 26, *size))
    assert y.shape == (2, 3, *size) and y.abs().max() <= 1


def test_generator_rejects_bad_size():
    with pytest.raises(ValueError, match="multiple of 32"):
        SPADEGenerator(GeneratorConfig(size=(100, 128)))


def test_spectral_norm_where_nvlabs_has_it():
    g = SPADEGenerator(GeneratorConfig(size=(64, 64), ngf=8))
    sn = {n for n, m in g.named_modules() if hasattr(m, "parametrizations")}
    assert "up_0.conv_0" in sn and "up_0.conv_1" in sn and "up_0.conv_s" in sn and "head_0.conv_0" in sn
    assert not any("norm_" in n or n in ("fc", "conv_img") for n in sn)  # SPADE convs, fc, conv_img plain
    d = MultiscaleDiscriminator(29)
    dsn = sorted(n for n, m in d.named_modules() if hasattr(m, "parametrizations"))
    # first and last conv of each scale plain; the 3 middle ones spectral
    assert dsn == [f"scales.{s}.layers.{i}.0" for s in range(2) for i in (1, 2, 3)]
    inst = [m for m in d.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(inst) == 6 and all(not m.affine for m in inst)


def test_layer_for_layer_equal_to_nvlabs():
    torch.manual_seed(0)
    ref = RefSPADEGenerator(26, 64, ngf=8).eval()
    ours = SPADEGenerator(GeneratorConfig(26, (64, 64), ngf=8)).eval()
    for p in ref.parameters():  # non-trivial weights
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        ref(torch.rand(1, 26, 64, 64))
    converted = convert_nvlabs_state_dict(ref.state_dict())
    missing = ours.load_state_dict(converted, strict=True)
    assert not missing.missing_keys
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.rand(2, 26, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    # and the same gradients: ours computes gamma and beta in one convolution and splits them
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    for blk in ("head_0", "up_1"):
        for norm in ("norm_0", "norm_1"):
            r, o = getattr(getattr(ref, blk), norm), getattr(getattr(ours, blk), norm)
            for got, want in ((o.mlp_gamma_beta.weight.grad, torch.cat([r.mlp_gamma.weight.grad, r.mlp_beta.weight.grad])),
                              (o.mlp_shared.weight.grad, r.mlp_shared[0].weight.grad)):
                # fp32 sums in another order: equal to 1e-4 of the gradient's scale
                torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
    d_ref, d_ours = RefMultiscaleDiscriminator(29), MultiscaleDiscriminator(29)
    assert [p.shape for p in d_ref.parameters()] == [p.shape for p in d_ours.parameters()]


def test_discriminator_features():
    d = MultiscaleDiscriminator(29, ndf=16, n_layers=4, num_d=2)
    out = d(torch.rand(2, 29, 128, 128))
    assert len(out) == 2 and all(len(s) == 5 for s in out)
    assert out[0][-1].shape == (2, 1, 19, 19) and out[1][-1].shape == (2, 1, 11, 11)


def test_hinge_loss_known_values():
    x = [[torch.tensor([[-2.0, 0.5, 3.0]])]]
    # D real: mean(relu(1 - x)) = (3 + 0.5 + 0) / 3; D fake: mean(relu(1 + x)) = (0 + 1.5 + 4) / 3
    assert gan_loss(x, True, "hinge").item() == pytest.approx(3.5 / 3)
    assert gan_loss(x, False, "hinge").item() == pytest.approx(5.5 / 3)
    assert gan_loss(x, True, "hinge", for_discriminator=False).item() == pytest.approx(-0.5)
    two_scales = x + [[torch.tensor([[1.0]])]]
    assert gan_loss(two_scales, True, "hinge").item() == pytest.approx((3.5 / 3 + 0) / 2)
    assert gan_loss(x, True, "ls").item() == pytest.approx(((-3) ** 2 + 0.25 + 4) / 3)


def test_feature_matching_skips_score_map():
    f = [[torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 2, 2)]]
    r = [[torch.zeros(1, 2, 2, 2), torch.full((1, 1, 2, 2), 9.0)]]
    assert feature_matching_loss(f, r).item() == pytest.approx(1.0)


def test_generator_step_features_equal_one_call_on_both():
    """In G's step the real features are feature matching's targets only: computed apart, without
    a graph, they must equal one call on fake and real together (NVlabs), spectral norm's power
    iteration must advance once as in that call, and G's gradient must be the same."""
    import copy

    from posesynth.spade.discriminator import discriminate

    torch.manual_seed(0)
    d = MultiscaleDiscriminator(29, ndf=16).train()
    ref = copy.deepcopy(d)
    d.requires_grad_(False)
    ref.requires_grad_(False)
    fake_a = torch.randn(3, 29, 64, 64, requires_grad=True)
    fake_b = fake_a.detach().clone().requires_grad_(True)
    real = torch.randn(3, 29, 64, 64)
    n = 3
    both = ref(torch.cat([fake_b, real], 0))
    rf, rr = [[f[:n] for f in s] for s in both], [[f[n:] for f in s] for s in both]
    pf, pr = discriminate(d, fake_a, real, targets_only=True)
    assert d.training and all(f.grad_fn is None for s in pr for f in s)
    for got, want in ((pf, rf), (pr, rr)):
        for gs, ws in zip(got, want):
            for g, w in zip(gs, ws):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    u = {k: v for k, v in d.state_dict().items() if k.endswith("._u")}
    assert len(u) == 6
    for k, v in u.items():   # one power iteration, as in the single call
        torch.testing.assert_close(v, ref.state_dict()[k], rtol=1e-6, atol=1e-7)
    loss_a = gan_loss(pf, True, "hinge", for_discriminator=False) + feature_matching_loss(pf, pr)
    loss_b = gan_loss(rf, True, "hinge", for_discriminator=False) + feature_matching_loss(rf, rr)
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(fake_a.grad, fake_b.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("channels_last", [False, True])
def test_image_channels_are_area_averaged_at_every_level(channels_last):
    """With ``area_channels`` the last channels (images) reach each block area-averaged and the
    pose maps nearest-resized, as the two resizes of the whole conditioning give them."""
    torch.manual_seed(0)
    g = SPADEGenerator(GeneratorConfig(label_nc=30, size=(64, 64), ngf=8, area_channels=4, hidden=8))
    x = torch.rand(2, 30, 64, 64)
    seen = {}
    for name in ("head_0", "up_0", "up_3"):
        getattr(g, name).register_forward_hook(lambda m, inp, out, name=name: seen.update({name: inp[1]}))
    with torch.no_grad():
        g(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    for name, size in (("head_0", 2), ("up_0", 8), ("up_3", 64)):
        want_pose = x[:, :26, ::64 // size, ::64 // size]   # nearest at a power-of-2 factor: every k-th pixel
        want_img = x[:, 26:].reshape(2, 4, size, 64 // size, size, 64 // size).mean((3, 5))
        torch.testing.assert_close(seen[name][:, :26], want_pose, rtol=0, atol=0)
        torch.testing.assert_close(seen[name][:, 26:], want_img, rtol=1e-5, atol=1e-6)
