"""The HP-GAN motion model: sequences as data, losses, training, sampler, critic, continuation."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from posesynth.augment.motion.data import JointMap, Normaliser, bones_of, make_windows
from posesynth.augment.motion.losses import bone_loss, consistency_loss
from posesynth.augment.motion.metrics import angle_coverage, auc, bone_length_error, joint_angles
from posesynth.augment.motion.sampler import LearnedArmSampler, PlausibilityCritic, continue_motion
from posesynth.augment.motion.trainer import MotionConfig, MotionTrainer, load_motion
from posesynth.augment.perturb import arm_indices
from posesynth.datasets.convert import convert_keypoints
from posesynth.datasets.layouts import COCO17, DRIVER9
from posesynth.datasets.make_data import make_sequence_dataset
from posesynth.datasets.sequences import ARM_LIMITS, load_sequences, synthetic_arm_motion, synthetic_sequences
from posesynth.datasets.synthetic import SceneSpec
from posesynth.errors import PosesynthError

ARM_JOINTS = {DRIVER9.index(n) for n in ("right_elbow", "right_wrist", "left_elbow", "left_wrist")}


def _rot(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


# ---- losses and metrics ------------------------------------------------------------------
def test_bone_loss_zero_for_rigid_motion_positive_otherwise(rng):
    own = rng.normal(size=(9, 2))
    rigid = np.stack([own @ _rot(a).T + rng.normal(size=2) for a in np.linspace(0, 90, 12)])   # (T, J, 2)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    bones = torch.as_tensor(bones_of(DRIVER9))
    assert float(bone_loss(t(rigid[None]), t(own[None]), bones)) < 1e-10
    bent = rigid.copy()
    bent[5:, DRIVER9.index("left_wrist")] += 0.3          # one joint leaves its bone's length
    assert float(bone_loss(t(bent[None]), t(own[None]), bones)) > 1e-4
    assert float(bone_loss(t(1.1 * rigid[None]), t(own[None]), bones)) > 1e-4     # scaling is not rigid
    # the metric: 0 for rigid motion, exactly 10% when every bone is 10% longer
    assert bone_length_error(rigid[None], own[None], bones_of(DRIVER9)) < 1e-6
    assert bone_length_error(1.1 * own[None], own[None], bones_of(DRIVER9)) == pytest.approx(10.0, abs=1e-6)
    # consistency: zero for a still sequence, the squared step otherwise
    still = t(np.repeat(own[None, None], 5, 1))
    assert float(consistency_loss(t(own[None]), still)) == 0.0
    assert float(consistency_loss(t(own[None]), still + 0.1)) == pytest.approx(0.02 / 5, rel=1e-4)


def test_auc_and_coverage():
    assert auc([2, 3], [0, 1]) == 1.0 and auc([0], [1]) == 0.0 and auc([1, 1], [1, 1]) == 0.5
    ang = np.array([[[0.0, 0.0], [14.0, 14.0]], [[16.0, 0.0], [170.0, 100.0]]])    # 15-degree cells
    assert angle_coverage(ang) == 3


# ---- sequences as data -------------------------------------------------------------------
def test_synthetic_arm_motion_smooth_within_limits_exact_bones():
    spec = SceneSpec(3, 1, 192, passenger_prob=0.0)
    base = spec.render().keypoints
    m = synthetic_arm_motion(base, 60, np.random.default_rng(0), (192, 192))   # (T, 1, 9, 3)
    np.testing.assert_allclose(m[0, ..., :2], base[..., :2], atol=1e-3)
    xy = m[:, 0, :, :2].astype(np.float64)
    for a, b in bones_of(DRIVER9):       # every bone keeps the person's own length
        ln = np.linalg.norm(xy[:, a] - xy[:, b], axis=-1)
        np.testing.assert_allclose(ln, ln[0], rtol=1e-4)
    still = [j for j in range(9) if j not in ARM_JOINTS]
    np.testing.assert_allclose(xy[:, still], xy[:1, still].repeat(60, 0), atol=1e-4)
    ang = joint_angles(xy, DRIVER9)      # (T, arms, [shoulder, flexion]) as the scenes define them
    (a_lo, a_hi), (f_lo, f_hi) = ARM_LIMITS
    assert (ang[..., 0] >= a_lo - 0.01).all() and (ang[..., 0] <= a_hi + 0.01).all()
    assert (ang[..., 1] >= f_lo - 0.01).all() and (ang[..., 1] <= f_hi + 0.01).all()
    step = np.abs(np.diff(ang, axis=0))
    assert step.max() < 20.0 and (ang.max(0) - ang.min(0)).max() > 30.0    # smooth, and it moves


def test_make_sequence_dataset_round_trip(tmp_path):
    make_sequence_dataset(tmp_path / "d", 3, 5, seed=4, size=96, passenger_prob=1.0, workers=1, progress=False)
    data = json.loads((tmp_path / "d" / "annotations.json").read_text())
    assert [(im["video_id"], im["frame_id"]) for im in data["images"][:6]] == [(1, t) for t in range(5)] + [(2, 0)]
    assert {a["track_id"] for a in data["annotations"]} == {0, 1}      # passenger, driver
    seqs, layout = load_sequences(tmp_path / "d")
    ref = synthetic_sequences(3, 5, seed=4, size=96, passenger_prob=1.0)
    assert layout.name == "driver9" and [(s.video, s.track, len(s)) for s in seqs] == \
        [(s.video, s.track, len(s)) for s in ref]
    for a, b in zip(seqs, ref):
        lab = (a.keypoints[..., 2] > 0) & (b.keypoints[..., 2] > 0)
        np.testing.assert_allclose(a.keypoints[..., :2][lab], b.keypoints[..., :2][lab], atol=2e-3)


def _coco(images, anns, k=17):
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.keypoints), "skeleton": []}]}


def _kp(x, k=17):
    return [v for j in range(k) for v in (x + j, 10.0 + j, 2)]


def test_load_sequences_video_ids_tracks_and_gaps(tmp_path):
    # PoseTrack style: vid_id strings, frame ids out of file order, an unlabelled frame
    # (skipped) and a labelled frame without track 7 (which splits track 7)
    imgs = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80, "vid_id": v, "frame_id": f}
            for i, v, f in [(1, "a", 3), (2, "a", 1), (3, "a", 2), (4, "a", 4), (5, "a", 5), (6, "b", 0), (7, "b", 1)]]
    anns = [{"id": n + 1, "image_id": im, "keypoints": _kp(x), "track_id": t} for n, (im, t, x) in enumerate(
        [(2, 7, 1), (2, 9, 40), (1, 7, 3), (1, 9, 42), (5, 7, 5), (5, 9, 45), (4, 9, 44), (6, 0, 0), (7, 0, 1)])]
    (tmp_path / "pt.json").write_text(json.dumps(_coco(imgs, anns)))
    seqs, layout = load_sequences(tmp_path / "pt.json", min_length=1)
    assert layout.name == "coco17" and all(s.size == (80, 100) for s in seqs)
    by: dict = {}
    for s in seqs:
        by.setdefault((s.video, s.track), []).append((list(s.frame_ids), list(s.keypoints[:, 0, 0])))
    assert by[("a", "9")] == [([1, 3, 4, 5], [40, 42, 44, 45])]         # frame 2 unlabelled: skipped
    assert by[("a", "7")] == [([1, 3], [1, 3]), ([5], [5])]              # frame 4 lacks track 7: split
    assert by[("b", "0")] == [([0, 1], [0, 1])]
    # a video dataset (one clip, no video id): ordered by frame_id, one person per frame
    imgs = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80, "frame_id": f} for i, f in [(1, 2), (2, 0), (3, 1)]]
    anns = [{"id": i, "image_id": i, "keypoints": _kp(float(i))} for i in (1, 2, 3)]
    (tmp_path / "clip.json").write_text(json.dumps(_coco(imgs, anns)))
    seqs, _ = load_sequences(tmp_path / "clip.json", layout="driver9")
    assert len(seqs) == 1 and list(seqs[0].frame_ids) == [0, 1, 2] and seqs[0].keypoints.shape == (3, 9, 3)
    assert list(seqs[0].keypoints[:, DRIVER9.index("right_wrist"), 0]) == [2 + 10, 3 + 10, 1 + 10]
    with pytest.raises(PosesynthError, match="no pose sequence"):
        load_sequences(tmp_path / "clip.json", min_length=4)


def test_squats_clip_as_a_sequence(fixtures):
    seqs, layout = load_sequences(fixtures / "squats" / "pose_squats.full.json", layout="driver9")
    assert len(seqs) == 1 and seqs[0].keypoints.shape == (65, 9, 3) and seqs[0].size == (1280, 720)
    frames = json.loads((fixtures / "squats" / "pose_squats.full.json").read_text())
    # the neck is the shoulders' midpoint (BlazePose 11 and 12)
    neck = (np.asarray(frames[10][11][:2]) + np.asarray(frames[10][12][:2])) / 2
    np.testing.assert_allclose(seqs[0].keypoints[10, DRIVER9.index("neck"), :2], neck, atol=1e-3)


def test_joint_map_and_normaliser():
    kp17 = np.zeros((17, 3), np.float32)
    kp17[:, :2] = np.random.default_rng(0).uniform(0, 100, (17, 2))
    kp17[:, 2] = 2
    jm = JointMap(DRIVER9, COCO17)
    np.testing.assert_allclose(jm(kp17), convert_keypoints(kp17[None], COCO17, DRIVER9)[0], atol=1e-4)
    with pytest.raises(PosesynthError, match="lacks the motion model's joint"):
        JointMap(COCO17, DRIVER9)
    norm = Normaliser.for_layout(DRIVER9)
    xy = jm(kp17)[:, :2]
    x, root, scale = norm.normalise(xy[None, None], xy[None])
    hips = (x[0, 0, DRIVER9.index("left_hip")] + x[0, 0, DRIVER9.index("right_hip")]) / 2
    np.testing.assert_allclose(hips, 0, atol=1e-6)                       # root-centred
    assert np.linalg.norm(x[0, 0, DRIVER9.index("neck")] - hips) == pytest.approx(1.0, abs=1e-5)  # torso-scaled
    np.testing.assert_allclose(norm.denormalise(x, root, scale)[0, 0], xy, atol=1e-4)


# ---- a short training run shared by the tests below ----------------------------------------
SMALL = dict(past=6, future=8, hidden=32, z_dim=8, critic_hidden=64, batch_size=32, val_fraction=0.2,
             picture_every=1000, checkpoint_every=1000, log_every=50)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("motion") / "run"
    seqs = synthetic_sequences(40, 30, seed=0, size=192)
    MotionTrainer(MotionConfig(steps=150, **SMALL), run, sequences=(seqs, DRIVER9), progress=False).fit()
    held = synthetic_sequences(30, 30, seed=99, size=192, passenger_prob=0.0)
    return run, held


def test_run_folder(trained):
    run, _ = trained
    for f in ("config.yaml", "losses.csv", "predictions.png", "plausibility.json", "checkpoints/latest.safetensors"):
        assert (run / f).exists(), f
    rows = (run / "losses.csv").read_text().splitlines()
    assert len(rows) == 151 and "bone_err_pct" in rows[0] and "wasserstein" in rows[0]


def _held_windows(run, held):
    m = load_motion(run)
    w = make_windows(held, JointMap(m.layout, DRIVER9), m.length, stride=m.length)
    x, _, _ = m.norm.normalise(w.xy, w.xy[:, m.cfg.past - 1])
    return m, x


def test_critic_separates_real_from_time_shuffled(trained):
    m, x = _held_windows(*trained)
    perm = np.argsort(np.random.default_rng(0).random(x.shape[:2]), axis=1)
    shuffled = np.take_along_axis(x, perm[:, :, None, None], 1)
    with torch.no_grad():
        s_real, s_shuf = m.C(torch.as_tensor(x)).numpy(), m.C(torch.as_tensor(shuffled)).numpy()
    assert auc(s_real, s_shuf) > 0.9
    assert (s_real > s_shuf).mean() > 0.9        # and each clip in its real order beats its shuffle


def test_conditioning_futures_start_at_the_last_past_pose(trained):
    m, x = _held_windows(*trained)
    past = torch.as_tensor(x[:, :m.cfg.past])
    with torch.no_grad():
        fut = m.G(past, m.cfg.future, torch.randn(len(x), m.cfg.z_dim)).numpy()
    last = x[:, m.cfg.past - 1]
    step = np.linalg.norm(fut[:, 0] - last, axis=-1).mean(-1)              # torso lengths
    real_step = np.linalg.norm(x[:, m.cfg.past] - last, axis=-1).mean(-1)
    assert step.mean() < 0.1 and step.mean() < 3 * real_step.mean() + 0.02
    # each future's first pose is nearest to its own conditioning pose, not another window's
    d = np.linalg.norm(fut[:, None, 0] - last[None], axis=-1).mean(-1)     # (future of i, past of j)
    apart = np.linalg.norm(last[:, None] - last[None], axis=-1).mean(-1) + 10 * np.eye(len(x))
    distinct = apart.min(1) > 0.05                                       # other windows' poses are not close
    assert distinct.sum() >= 10
    assert (d.argmin(1) == np.arange(len(x)))[distinct].mean() > 0.95


def test_learned_sampler_contract(trained):
    run, _ = trained
    sampler = LearnedArmSampler(run)
    spec = SceneSpec(7, 0, 192, passenger_prob=1.0)
    kp = spec.render().keypoints
    kp[1, DRIVER9.index("left_elbow"), 2] = 1            # occluded: still moved, flag kept
    before = kp.copy()
    out = sampler.perturb(kp, DRIVER9, (192, 192), np.random.default_rng(3))
    np.testing.assert_array_equal(kp, before)
    np.testing.assert_array_equal(out[..., 2], kp[..., 2])
    moved = np.abs(out - kp).max(-1) > 1e-4
    assert set(np.nonzero(moved)[1]) <= ARM_JOINTS and moved[1].any()
    assert (out[..., :2][out[..., 2] > 0] >= 0).all() and (out[..., :2][out[..., 2] > 0] <= 191).all()
    for p in range(2):                                    # the person's own bone lengths, exactly
        if moved[p].any():
            for s, e, w in arm_indices(DRIVER9):
                for a, b in ((s, e), (e, w)):
                    assert np.linalg.norm(out[p, b, :2] - out[p, a, :2]) == pytest.approx(
                        np.linalg.norm(kp[p, b, :2] - kp[p, a, :2]), rel=1e-4)
    again = sampler.perturb(kp, DRIVER9, (192, 192), np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)
    tiny = kp.copy()
    tiny[..., :2] *= 0.05
    np.testing.assert_array_equal(sampler.perturb(tiny, DRIVER9, (192, 192), np.random.default_rng(0)), tiny)
    # coco17 people work too: only their elbows and wrists move
    kp17 = np.zeros((1, 17, 3), np.float32)
    d9 = kp[1]
    for n in ("shoulder", "elbow", "wrist", "hip"):
        for side in ("left", "right"):
            kp17[0, COCO17.index(f"{side}_{n}")] = d9[DRIVER9.index(f"{side}_{n}")]
    out17 = sampler.perturb(kp17, COCO17, (192, 192), np.random.default_rng(1))
    moved17 = set(np.nonzero(np.abs(out17 - kp17).max(-1)[0] > 1e-4)[0])
    assert moved17 and moved17 <= {COCO17.index(f"{s}_{j}") for s in ("left", "right") for j in ("elbow", "wrist")}


def test_plausibility_critic(trained):
    run, held = trained
    critic = PlausibilityCritic(run)
    saved = json.loads((run / "plausibility.json").read_text())
    assert critic.threshold == pytest.approx(saved["threshold"]) and saved["quantile"] == 0.05
    real = np.concatenate([s.keypoints for s in held])
    real = real[(real[..., 2] > 0).all(-1)][:300]
    s = critic.score(real, DRIVER9)
    assert s.shape == (len(real),) and np.isfinite(s).all()
    assert critic.plausible(real).mean() > 0.8            # calibrated to pass ~95% of real poses
    missing = real[:2].copy()
    missing[0, DRIVER9.index("right_hip"), 2] = 0
    s2 = critic.score(missing)
    assert np.isnan(s2[0]) and np.isfinite(s2[1]) and critic.plausible(missing)[0]


def test_continue_motion(trained):
    run, held = trained
    seq = held[0].keypoints[:10]
    out = continue_motion(run, seq, 20, np.random.default_rng(0), size=(192, 192))
    assert out.shape == (20, 9, 3) and out.dtype == np.float32
    torso = np.linalg.norm(seq[-1, DRIVER9.index("neck"), :2] - seq[-1, [7, 8], :2].mean(0))
    assert np.linalg.norm(out[0, :, :2] - seq[-1, :, :2], axis=-1).mean() < 0.1 * torso
    np.testing.assert_array_equal(out[0, :, 2][out[0, :, 2] > 0], seq[-1, :, 2][out[0, :, 2] > 0])
    again = continue_motion(run, seq, 20, np.random.default_rng(0), size=(192, 192))
    np.testing.assert_array_equal(out, again)
    # coco17 input: joints the model lacks (the face) follow the root
    kp17 = np.zeros((10, 17, 3), np.float32)
    for n in ("shoulder", "elbow", "wrist", "hip"):
        for side in ("left", "right"):
            kp17[:, COCO17.index(f"{side}_{n}")] = seq[:, DRIVER9.index(f"{side}_{n}")]
    kp17[:, COCO17.index("nose")] = seq[:, DRIVER9.index("neck")] - np.array([0, 20, 0], np.float32)
    out17 = continue_motion(run, kp17, 5, np.random.default_rng(0), layout=COCO17)
    root = out17[:, [COCO17.index("left_hip"), COCO17.index("right_hip")], :2].mean(1)
    root0 = kp17[-1, [COCO17.index("left_hip"), COCO17.index("right_hip")], :2].mean(0)
    np.testing.assert_allclose(out17[:, COCO17.index("nose"), :2] - root,
                               np.broadcast_to(kp17[-1, COCO17.index("nose"), :2] - root0, (5, 2)),
                               atol=1e-3)


def test_resume_continues_exactly(tmp_path):
    torch.set_num_threads(1)
    seqs = (synthetic_sequences(6, 20, seed=1, size=128), DRIVER9)
    cfg = dict(SMALL, checkpoint_every=2)
    MotionTrainer(MotionConfig(steps=4, **cfg), tmp_path / "a", sequences=seqs, progress=False).fit()
    MotionTrainer(MotionConfig(steps=2, **cfg), tmp_path / "b", sequences=seqs, progress=False).fit()
    with pytest.raises(PosesynthError, match="already holds a run"):
        MotionTrainer(MotionConfig(steps=4, **cfg), tmp_path / "b", sequences=seqs, progress=False)
    # issue 20.13: a crash's temporary files (a checkpoint-sized one, the CSV's) go at the next start
    stale = [tmp_path / "b" / "checkpoints" / ".latest.safetensors.k2j3h4g5.tmp", tmp_path / "b" / ".losses.csv.q1w2e3r4.tmp"]
    stale[0].write_bytes((tmp_path / "b" / "checkpoints" / "latest.safetensors").read_bytes()[:1000])
    stale[1].write_text("step,")
    MotionTrainer(MotionConfig(steps=4, **cfg), tmp_path / "b", sequences=seqs, resume=True, progress=False).fit()
    assert not any(p.exists() for p in stale)
    assert (tmp_path / "a" / "losses.csv").read_text() == (tmp_path / "b" / "losses.csv").read_text()
    a, b = load_motion(tmp_path / "a"), load_motion(tmp_path / "b")
    for pa, pb in zip(a.G.parameters(), b.G.parameters()):
        assert torch.equal(pa, pb)


def _cli(*args):
    from conftest import run_cli

    return run_cli(*args)


def test_cli_make_data_sequences_and_train_motion(tmp_path):
    r = _cli("make-data", "--out", str(tmp_path / "d"), "--sequences", "2", "--length", "8", "--size", "64",
             "--workers", "1", "--passenger-prob", "0")
    assert r.returncode == 0, r.stderr
    r = _cli("train-motion", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--past", "3",
             "--future", "4", "--steps", "2", "--hidden", "8", "--critic-hidden", "8", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert "bone-length error" in r.stdout and (tmp_path / "run" / "predictions.png").exists()
    r = _cli("train-motion", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run2"), "--past", "5",
             "--future", "5")
    assert r.returncode == 2 and "no window of 10 consecutive frames" in r.stderr and "Traceback" not in r.stderr
