import numpy as np
import pytest
import torch

from posesynth.augment.mixing import BatchMixer
from posesynth.augment.perturb import PerturbConfig, arm_indices, perturb_keypoints
from posesynth.augment.renderers import GANRenderer
from posesynth.datasets.posemaps import PoseMapSpec
from posesynth.datasets.layouts import COCO17, DRIVER9
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.datasets.torch_dataset import sample_to_tensors
from posesynth.posenet.decode import decode_single
from posesynth.spade.generator import GeneratorConfig, SPADEGenerator


def driver_kp(i=0, size=128):
    return render_scene(scene_rng(11, i), size, passenger_prob=0.0).keypoints


def lengths(kp, layout):
    out = []
    for s, e, w in arm_indices(layout):
        out += [np.linalg.norm(kp[0, e, :2] - kp[0, s, :2]), np.linalg.norm(kp[0, w, :2] - kp[0, e, :2])]
    return np.array(out)


@pytest.mark.parametrize("i", range(6))
def test_angle_variant_preserves_bone_lengths(i):
    kp = driver_kp(i)
    out = perturb_keypoints(kp, DRIVER9, (128, 128), np.random.default_rng(i), PerturbConfig("arms-angle"))
    np.testing.assert_allclose(lengths(out, DRIVER9), lengths(kp, DRIVER9), rtol=1e-5)
    assert not np.allclose(out, kp)
    # only elbows and wrists move
    moved = np.abs(out - kp).max(-1)[0] > 1e-4
    assert set(np.nonzero(moved)[0]) <= {DRIVER9.index(n) for n in ("right_elbow", "right_wrist", "left_elbow", "left_wrist")}


def test_slight_within_ten_percent():
    kp = driver_kp(1)
    for s in range(20):
        out = perturb_keypoints(kp, DRIVER9, (128, 128), np.random.default_rng(s), PerturbConfig("arms-slight"))
        for sh, el, wr in arm_indices(DRIVER9):
            upper = np.linalg.norm(kp[0, el, :2] - kp[0, sh, :2])
            fore = np.linalg.norm(kp[0, wr, :2] - kp[0, el, :2])
            assert np.linalg.norm(out[0, el, :2] - kp[0, el, :2]) <= 0.1 * upper + 1e-4
            assert np.linalg.norm(out[0, wr, :2] - kp[0, wr, :2]) <= 0.1 * fore + 1e-4


def test_high_lengths_near_own_stays_in_frame_keeps_visibility():
    kp = driver_kp(2)
    kp[0, DRIVER9.index("left_elbow"), 2] = 1  # occluded: still perturbed, flag kept
    for s in range(20):
        out = perturb_keypoints(kp, DRIVER9, (128, 128), np.random.default_rng(s), PerturbConfig("arms-high"))
        np.testing.assert_allclose(lengths(out, DRIVER9), lengths(kp, DRIVER9), rtol=0.1 + 1e-4)
        assert (out[..., :2] >= 0).all() and (out[..., :2] <= 127).all()
        np.testing.assert_array_equal(out[..., 2], kp[..., 2])


def test_small_people_and_unlabelled_arms_untouched():
    kp = driver_kp(3)
    small = kp.copy()
    small[..., :2] = small[..., :2] * 0.1  # a tiny person
    out = perturb_keypoints(small, DRIVER9, (128, 128), np.random.default_rng(0), PerturbConfig(min_torso=20))
    np.testing.assert_array_equal(out, small)
    kp2 = kp.copy()
    kp2[0, DRIVER9.index("right_wrist"), 2] = 0
    out = perturb_keypoints(kp2, DRIVER9, (128, 128), np.random.default_rng(0))
    for n in ("right_elbow", "right_wrist"):
        np.testing.assert_array_equal(out[0, DRIVER9.index(n)], kp2[0, DRIVER9.index(n)])


def test_reproducible_and_input_unchanged():
    kp = driver_kp(4)
    before = kp.copy()
    a = perturb_keypoints(kp, DRIVER9, (128, 128), np.random.default_rng(5))
    b = perturb_keypoints(kp, DRIVER9, (128, 128), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(kp, before)
    assert len(arm_indices(COCO17)) == 2  # works for any layout that names the arms


def make_batch(n=4, size=64):
    items = [sample_to_tensors(render_scene(scene_rng(12, i), size, passenger_prob=0.0), DRIVER9, with_maps=False)
             for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return SPADEGenerator(GeneratorConfig(26, (64, 64), ngf=8))


def gan_mixer(generator, fraction=0.5, seed=0, gan_device="cpu", **kw):
    r = GANRenderer(generator, "full", DRIVER9, PoseMapSpec(), (64, 64), gan_device)
    return BatchMixer(DRIVER9, PoseMapSpec(), fraction, "render", r, seed=seed, **kw)


def test_untouched_half_is_exact_and_not_aliased(generator):
    batch = make_batch()
    before = {k: v.clone() for k, v in batch.items()}
    mixer = gan_mixer(generator, 0.5, seed=1, post_scale=(1, 1), post_translate=0)
    out = mixer(batch, step=0)
    gen = out["replaced"]
    assert int(gen.sum()) == 2
    for k in ("image", "heatmaps", "pafs", "masks", "keypoints"):
        assert torch.equal(out[k][~gen], before[k][~gen]), k     # untouched half: exact
        assert torch.equal(batch[k], before[k]), k               # input batch unchanged
        assert out[k].data_ptr() != batch[k].data_ptr()          # copies, never aliases
    assert not torch.equal(out["image"][gen], before["image"][gen])
    out["heatmaps"][~gen] += 1   # writing into the result does not reach the input
    assert torch.equal(batch["heatmaps"], before["heatmaps"])


def test_generated_labels_follow_perturbed_keypoints(generator):
    batch = make_batch()
    out = gan_mixer(generator, 0.5, seed=2, post_scale=(1, 1), post_translate=0)(batch, step=3)
    gen = torch.nonzero(out["replaced"]).flatten()
    for i in gen.tolist():
        kp = out["keypoints"][i, 0].numpy()
        assert not np.allclose(kp, batch["keypoints"][i, 0].numpy())
        dec, _ = decode_single(out["heatmaps"][i].numpy(), (64, 64))
        vis = kp[:, 2] > 0
        assert np.abs(dec[0, vis, :2] - kp[vis, :2]).max() < 1.0   # heatmap peaks at the new keypoints
        paf = out["pafs"][i].numpy()
        a, b = DRIVER9.limbs[2]   # right forearm: PAF along the new elbow -> wrist
        mid = (kp[a, :2] + kp[b, :2]) / 2
        u = (kp[b, :2] - kp[a, :2]) / np.linalg.norm(kp[b, :2] - kp[a, :2])
        gx, gy = np.clip(((mid + 0.5) / 4 - 0.5).round().astype(int), 0, 15)
        assert paf[4:6, gy, gx] @ u > 0.9


def test_mixing_reproducible(generator):
    batch = make_batch()
    a = gan_mixer(generator, 0.5, seed=4)(batch, step=7)
    b = gan_mixer(generator, 0.5, seed=4)(batch, step=7)
    for k in ("image", "keypoints", "heatmaps", "replaced"):
        assert torch.equal(a[k], b[k]), k


def test_two_device_placement(generator):
    batch = make_batch()
    mixer = gan_mixer(generator, 0.5, gan_device="cpu:0", device="cpu", seed=1)
    out = mixer(batch, 0)
    assert mixer.renderer.device == torch.device("cpu", 0) and mixer.device == torch.device("cpu")
    assert next(mixer.renderer.G.parameters()).device.type == "cpu"
    assert out["image"].device == torch.device("cpu") and mixer.stats.replaced == 2


def test_generator_unchanged_while_pose_network_trains(generator, tmp_path):
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig

    class Src:
        layout = DRIVER9

        def __init__(self):
            self.s = [render_scene(scene_rng(13, i), 64, passenger_prob=0.0) for i in range(4)]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.s[i]

    before = {k: v.clone() for k, v in generator.state_dict().items()}
    mixer = gan_mixer(generator, 0.5, seed=0)
    cfg = PoseTrainConfig(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small", epochs=1,
                          batch_size=2, data_augment=False, device="cpu")
    t = PoseNetTrainer(cfg, tmp_path / "run", source=Src(), progress=False, batch_transform=mixer)
    t.fit()
    assert mixer.stats.replaced == 2 and not mixer.renderer.G.training
    assert "train_loss_replaced" in t.history[-1] and "train_loss" in t.history[-1]
    for k, v in generator.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in generator.parameters())


def test_post_resize_and_translation_keep_labels_on_the_image(generator):
    """The original's random resize + shift of the mixed batch: a bright dot painted at a
    keypoint stays under that keypoint, and the heatmaps are rendered at the new positions."""
    batch = make_batch()
    kp = batch["keypoints"][:, 0, DRIVER9.index("neck")]
    img = torch.full_like(batch["image"], -1.0)
    for i, (x, y, v) in enumerate(kp.tolist()):
        img[i, :, int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = 1.0
    batch["image"] = img
    out = BatchMixer(DRIVER9, PoseMapSpec(), 0.0, "none", seed=3, post_scale=(0.8, 1.2), post_translate=0.1)(batch, 5)
    moved = 0
    for i in range(4):
        x, y, v = out["keypoints"][i, 0, DRIVER9.index("neck")].tolist()
        if v == 0:
            continue
        red = out["image"][i, 0]
        cy, cx = divmod(int(red.argmax()), red.shape[1])
        assert abs(cx - x) <= 1.5 and abs(cy - y) <= 1.5
        dec, _ = decode_single(out["heatmaps"][i].numpy(), (64, 64))
        assert np.abs(dec[0, DRIVER9.index("neck"), :2] - [x, y]).max() < 1.0
        moved += abs(x - kp[i, 0]) > 0.5
    assert moved >= 2


@pytest.mark.parametrize("batch,fraction", [(1, 0.5), (3, 0.5), (3, 0.25), (8, 0.5)])
def test_replaced_count_has_expectation_fraction_times_batch(batch, fraction):
    """Issue 20.6: the replaced share's expectation is exactly fraction x batch (round(0.5) == 0
    left a batch of one never replaced); slot choices depend only on (seed, step, fraction)."""
    m = BatchMixer(DRIVER9, PoseMapSpec(), fraction, "real-dup", seed=7)
    twin = BatchMixer(DRIVER9, PoseMapSpec(), fraction, "render", renderer=lambda *a: None, seed=7)
    steps = 4000
    counts = np.array([len(m.choose(batch, s)) for s in range(steps)])
    want = fraction * batch
    assert set(np.unique(counts)) <= {int(np.floor(want)), int(np.ceil(want))}
    # the mean of a floor + Bernoulli(r) count: sd sqrt(r (1 - r)) / sqrt(steps) <= 0.008
    assert abs(counts.mean() - want) < 0.03
    for s in range(50):
        a = m.choose(batch, s)
        assert np.array_equal(a, twin.choose(batch, s)) and np.array_equal(a, np.unique(a))
        assert a.min(initial=0) >= 0 and a.max(initial=0) < batch
