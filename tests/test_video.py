"""People from video: frame reading and the verified MP4 writer, detectors and `extract`,
stick figures, the classic generators (pix2pix, vanilla, nearest), global pose normalisation,
retiming/mirroring and rendering a sequence to video."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from posesynth.augment.transfer import (GlobalPoseNormalizer, SourceSequence, load_sequence, mirror_sequence,
                                        pose_stats, render_sequence, retime_sequence, skeleton_heights,
                                        transfer_sequence)
from posesynth.datasets.convert import convert_keypoints
from posesynth.datasets.layouts import COCO17, DRIVER9
from posesynth.datasets.stickfigure import render_stick_figures
from posesynth.datasets.video import VideoError, VideoWriter, count_frames, probe_video, read_frames
from posesynth.datasets.visualize import limb_colours
from posesynth.errors import PosesynthError
from posesynth.posenet.detectors import DetectorError, KeypointRCNNDetector, _pack, cv2_distributions
from posesynth.spade.baselines import build_discriminator, build_generator, generator_input, make_render
from posesynth.spade.discriminator import MultiscaleDiscriminator
from posesynth.spade.nearest import NearestNeighbourGenerator
from posesynth.spade.pix2pix import receptive_field

SQUATS = "squats/pose_squats.mp4"


# ---- video I/O ------------------------------------------------------------------------------
def test_read_frames_is_sequential_with_every(fixtures):
    path = fixtures / SQUATS
    info = probe_video(path)
    assert (info.height, info.width) == (1280, 720) and info.fps == pytest.approx(5.0)
    assert count_frames(path) == 65
    got = list(read_frames(path, every=16))
    assert [i for i, _ in got] == [0, 16, 32, 48, 64]
    every1 = {i: f for i, f in read_frames(path) if i in (16, 48)}
    assert np.array_equal(dict(got)[16], every1[16]) and np.array_equal(dict(got)[48], every1[48])
    assert not np.array_equal(dict(got)[16], dict(got)[48])       # really different frames
    with pytest.raises(VideoError, match="every must be at least 1"):
        list(read_frames(path, every=0))
    with pytest.raises(VideoError, match="not found"):
        probe_video(fixtures / "squats" / "nowhere.mp4")


def test_video_writer_writes_verified_mp4(tmp_path):
    out = tmp_path / "v.mp4"
    levels = [30, 90, 150, 210, 250, 10, 120]
    with VideoWriter(out, fps=10) as w:
        for v in levels:
            w.write(np.full((48, 80, 3), v, np.uint8))
        assert not out.exists()                                   # written beside it, moved on close
    res = w.result
    assert res.frames == 7 and res.size == (48, 80) and out.exists()
    assert count_frames(out) == 7
    frames = [f for _, f in read_frames(out)]
    assert frames[0].shape == (48, 80, 3)
    assert np.allclose([f.mean() for f in frames], levels, atol=6)  # lossy, but the right frames in order
    assert res.codec in ("avc1", "H264", "X264", "mp4v", "XVID", "MJPG")
    bad = VideoWriter(tmp_path / "bad.mp4", fps=10)
    bad.write(np.zeros((48, 80, 3), np.uint8))
    with pytest.raises(VideoError, match="frame 1 is 64x48"):
        bad.write(np.zeros((48, 64, 3), np.uint8))
    bad.abort()
    assert not list(tmp_path.glob(".bad*"))


# ---- detectors and extract -------------------------------------------------------------------
def test_exactly_one_cv2():
    dists = cv2_distributions()
    assert len(dists) == 1, f"several packages provide cv2 and overwrite each other's files: {dists}"
    import cv2

    assert cv2.__version__.split(".")[:3] == next(iter(dists.values())).split(".")[:3]
    assert cv2.cvtColor(np.zeros((2, 2, 3), np.uint8), cv2.COLOR_RGB2BGR).shape == (2, 2, 3)


def test_extract_matches_fixture_keypoints(fixtures, tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe (the optional 'video' extra) is not installed; see README")
    from posesynth.posenet.extract import extract_video

    r = extract_video(fixtures / SQUATS, tmp_path / "ds", detector="mediapipe", progress=False)
    assert r["frames"] == 65 and r["people"] == 65 and r["layout"] == "coco17"
    data = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert [im["frame_id"] for im in data["images"]] == list(range(65))
    ref = np.asarray(json.loads((fixtures / "squats" / "pose_squats.full.json").read_text()), np.float32)
    kp = np.array([a["keypoints"] for a in data["annotations"]], np.float32).reshape(-1, 17, 3)
    ref17 = convert_keypoints(np.concatenate([ref[..., :2], np.full(ref.shape[:2] + (1,), 2, np.float32)], -1),
                              "blazepose33", "coco17")
    vis = kp[..., 2] > 0
    assert vis.mean() > 0.9
    err = np.linalg.norm(kp[..., :2] - ref17[..., :2], axis=-1)[vis]
    # measured 3.5 px median, 6.8 px at the 90th percentile (frames are 720x1280)
    assert np.median(err) < 5 and np.percentile(err, 90) < 10, (np.median(err), np.percentile(err, 90))
    blaze = np.array([a["blazepose33"] for a in data["annotations"]], np.float32).reshape(-1, 33, 4)
    assert np.median(np.linalg.norm(blaze[..., :2] - ref[..., :2], axis=-1)) < 5


class _FixedDetector:
    """Stands in for a real detector: one person whose right wrist is outside the frame and
    whose left ear is below the confidence threshold."""

    name = "fixed"
    layout = COCO17

    def __init__(self):
        self.calls = 0

    def __call__(self, frames):
        out = []
        for f in frames:
            h, w = f.shape[:2]
            xy = np.stack([np.linspace(10, w - 10, 17), np.linspace(10, h - 10, 17)], -1)[None].astype(np.float32)
            xy[0, COCO17.index("right_wrist")] = [w + 30, h / 2]
            sc = np.full((1, 17), 0.9, np.float32)
            sc[0, COCO17.index("left_ear")] = 0.1
            out.append(_pack(xy, sc, sc.mean(1), (h, w), 0.5, 1, {"blazepose33": np.ones((1, 33, 4), np.float32)}))
            self.calls += 1
        return out

    def close(self):
        pass


def test_extract_writes_coco_with_frame_ids(fixtures, tmp_path):
    from posesynth.datasets.coco import CocoKeypointDataset
    from posesynth.posenet.extract import extract_video

    det = _FixedDetector()
    r = extract_video(fixtures / SQUATS, tmp_path / "ds", every=16, detector=det, progress=False)
    assert r["frames"] == det.calls == 5 and r["people"] == 5
    data = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert [(im["id"], im["frame_id"], im["video_id"]) for im in data["images"]] == [
        (f + 1, f, "pose_squats") for f in (0, 16, 32, 48, 64)]
    assert all(a["track_id"] == 0 for a in data["annotations"])
    assert data["videos"][0]["fps"] == pytest.approx(5.0) and data["videos"][0]["every"] == 16
    ann = data["annotations"][0]
    kp = np.array(ann["keypoints"]).reshape(17, 3)
    assert kp[COCO17.index("right_wrist")].tolist() == [0, 0, 0]          # outside the frame: unlabelled
    assert kp[COCO17.index("left_ear")].tolist() == [0, 0, 0]             # not confident: unlabelled
    assert kp[COCO17.index("nose"), 2] == 2 and ann["num_keypoints"] == 15 and len(ann["blazepose33"]) == 132
    ds = CocoKeypointDataset(tmp_path / "ds")                              # reads back, images and all
    assert len(ds) == 5 and ds[2].image.shape == (1280, 720, 3)
    with pytest.raises(PosesynthError, match="already holds a dataset"):
        extract_video(fixtures / SQUATS, tmp_path / "ds", detector=det, progress=False)


def test_keypointrcnn_says_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DetectorError, match="nothing is downloaded"):
        KeypointRCNNDetector()
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not weights")
    with pytest.raises(DetectorError, match="not Keypoint R-CNN"):
        KeypointRCNNDetector(bad)


def test_posenet_detector_maps_back_to_frame_pixels():
    from posesynth.datasets.posemaps import render_heatmaps
    from posesynth.posenet.detectors import PoseNetDetector

    frame_size, net_size = (200, 120), (64, 32)
    truth = np.zeros((1, 9, 3), np.float32)
    truth[0, :, 0] = np.linspace(15, 95, 9)          # away from the border, where decoding cannot refine
    truth[0, :, 1] = np.linspace(20, 180, 9)
    truth[0, :, 2] = 2
    truth[0, 4, 2] = 0                                      # one keypoint the network does not find

    class PerfectNet(nn.Module):                            # heatmaps of the true pose, at 1/4 of the input
        def forward(self, x):
            hm = render_heatmaps(truth, frame_size, (x.shape[2] // 4, x.shape[3] // 4), sigma=12.0)
            return torch.from_numpy(hm)[None].repeat(len(x), 1, 1, 1), torch.zeros(len(x), 16, 1, 1), None

    det = PoseNetDetector.from_model(PerfectNet(), DRIVER9, net_size, threshold=0.1)
    out = det([np.zeros((*frame_size, 3), np.uint8)] * 3)
    assert len(out) == 3 and out[0].keypoints.shape == (1, 9, 3)
    kp = out[1].keypoints[0]
    assert np.array_equal(kp[:, 2] > 0, truth[0, :, 2] > 0)
    err = np.linalg.norm(kp[:, :2] - truth[0, :, :2], axis=1)[truth[0, :, 2] > 0]
    assert err.max() < 0.5, err                             # a heatmap cell is 15 x 12.5 frame pixels


def test_extract_cli_errors(tmp_path, capsys):
    from posesynth.cli import main

    assert main(["extract", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "none.mp4: video file not found" in err and len(err.strip().splitlines()) == 1
    vid = tmp_path / "v.mp4"
    with VideoWriter(vid, fps=5) as w:
        w.write(np.zeros((32, 32, 3), np.uint8))
    assert main(["extract", str(vid), "--out", str(tmp_path / "o"), "--detector", "openpose"]) == 2
    assert "unknown detector 'openpose'" in capsys.readouterr().err


# ---- stick figures -------------------------------------------------------------------------
def test_stick_figure_geometry():
    kp = np.zeros((1, 1, 17, 3), np.float32)
    ls, rs = COCO17.index("left_shoulder"), COCO17.index("right_shoulder")
    kp[0, 0, ls] = [40, 60, 2]        # in a 128x128 frame; drawn at 64x64, so at (20, 30)
    kp[0, 0, rs] = [100, 60, 2]       # (50, 30)
    img = render_stick_figures(kp, COCO17, (64, 64), in_size=(128, 128), line_width=3, joint_radius=0)
    assert img.shape == (1, 3, 64, 64) and img.min() >= -1 and img.max() <= 1
    li = COCO17.limbs.index((ls, rs))
    colour = torch.tensor(limb_colours(COCO17.num_limbs)[li], dtype=torch.float32) / 127.5 - 1
    on = img[0, :, 30, 20:51]                                    # along the limb (pixel centres 29.75 .. )
    assert torch.allclose(on, colour[:, None].expand_as(on), atol=0.3)
    assert torch.all(img[0, :, 36, :] == -1) and torch.all(img[0, :, :, 55:] == -1)
    kp[0, 0, rs, 2] = 0                                          # an unlabelled end draws no limb
    assert torch.all(render_stick_figures(kp, COCO17, (64, 64), in_size=(128, 128), joint_radius=0) == -1)


# ---- generators --------------------------------------------------------------------------------
def _toy_batch(size=(32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    real = F.interpolate(torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, size=size, mode="bilinear", align_corners=False)
    kp = torch.zeros(2, 1, 17, 3)
    kp[..., :2] = torch.rand(2, 1, 17, 2, generator=g) * (min(size) - 8) + 4
    kp[..., 2] = 2
    return {"image": real, "keypoints": kp, "maps": torch.zeros(2, 1, *size)}


@pytest.mark.parametrize("arch,netg,kw", [("pix2pix", "resnet", {"n_blocks": 2}), ("pix2pix", "unet", {}),
                                          ("vanilla", "unet", {"n_up": 3})])
def test_generator_overfits_one_batch(arch, netg, kw):
    torch.manual_seed(0)
    batch = _toy_batch()
    G = build_generator(arch, COCO17, (32, 32), ngf=16, netg=netg, **kw)
    x = generator_input(arch, batch, COCO17)
    assert x.shape == ((2, 3, 32, 32) if arch == "pix2pix" else (2, 3 * 17))
    opt = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    with torch.no_grad():
        first = F.l1_loss(G(x), batch["image"]).item()
    for _ in range(80):
        loss = F.l1_loss(G(x), batch["image"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    G.eval()
    with torch.no_grad():
        out = G(x)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    per = (out - batch["image"]).abs().flatten(1).mean(1)
    assert first > 0.25 and torch.all(per < 0.1), (first, per)  # each sample's own image, from its own pose


def test_patchgan_is_70_pixels():
    d = build_discriminator("pix2pix", COCO17, ndf=8)
    assert isinstance(d, MultiscaleDiscriminator) and len(d.scales) == 1 and receptive_field(d) == 70
    out = d(torch.randn(1, 6, 96, 96))
    assert isinstance(out, list) and len(out) == 1 and out[0][-1].shape[1] == 1
    # the same measured: the input pixels that reach one score (norms removed: they couple all pixels)
    for m in list(d.modules()):
        for name, c in list(m.named_children()):
            if isinstance(c, nn.InstanceNorm2d):
                setattr(m, name, nn.Identity())
    x = torch.randn(1, 6, 160, 160, requires_grad=True)
    s = d(x)[0][-1]
    s[0, 0, s.shape[2] // 2, s.shape[3] // 2].backward()
    ys, xs = torch.nonzero(x.grad[0].abs().sum(0) > 0, as_tuple=True)
    assert (ys.max() - ys.min() + 1).item() == 70 and (xs.max() - xs.min() + 1).item() == 70


def test_nearest_returns_the_training_frame(tmp_path):
    rng = np.random.default_rng(0)
    n, size = 40, (48, 32)
    frames = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    kp = np.zeros((n, 1, 17, 3), np.float32)
    kp[..., 0] = rng.uniform(0, size[1] - 1, (n, 1, 17))
    kp[..., 1] = rng.uniform(0, size[0] - 1, (n, 1, 17))
    kp[..., 2] = np.where(rng.random((n, 1, 17)) < 0.9, 2, 0)
    nn_g = NearestNeighbourGenerator(frames, kp, COCO17)
    idx, dist = nn_g.query(kp)
    assert np.array_equal(idx, np.arange(n)) and np.allclose(dist, 0)
    out = nn_g(torch.from_numpy(kp[[7, 3]]))
    expect = torch.from_numpy(frames[[7, 3]]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(out, expect)
    nudged = kp[[5]].copy()
    nudged[..., :2] += 0.5                                         # a nearby pose finds the same frame
    assert nn_g.query(nudged)[0][0] == 5
    nn_g.save(tmp_path / "nn")
    assert (tmp_path / "nn.safetensors").exists() and json.loads((tmp_path / "nn.json").read_text())["frames"] == n
    back = NearestNeighbourGenerator.load(tmp_path / "nn")
    assert torch.equal(back(torch.from_numpy(kp[[7, 3]])), expect)
    render = make_render("nearest", back, COCO17)
    assert torch.equal(render(torch.from_numpy(kp[[7, 3]]), size), expect)


def test_make_render_and_config_round_trip():
    from posesynth.checkpoint import load_module, module_tensors
    from posesynth.spade.baselines import generator_config, generator_from_config

    kp = _toy_batch((32, 32))["keypoints"]
    for arch, kw in [("pix2pix", {"netg": "unet"}), ("pix2pix", {"netg": "resnet", "n_blocks": 1}),
                     ("vanilla", {"n_up": 3})]:
        g = build_generator(arch, COCO17, (32, 32), ngf=8, **kw)
        r = make_render(arch, g, COCO17)
        out = r(kp, (32, 32))
        assert out.shape == (2, 3, 32, 32)
        cfg = json.loads(json.dumps(generator_config(arch, g)))            # through JSON, as in a checkpoint
        g2 = generator_from_config(arch, cfg)
        load_module(g2, module_tensors(g, "G"), "G")
        assert torch.equal(make_render(arch, g2, COCO17)(kp, (32, 32)), out)


def test_pose_consistency_scores_detections_against_input_skeletons():
    from posesynth.posenet.detectors import pose_consistency

    kp = np.stack([_person(60, 180, 150), _person(70, 170, 140)])[:, None]   # (2, 1, 17, 3) in 200x128 images

    class Shifted:                                                           # "detects" the pose 3 px off
        name, layout = "shifted", COCO17

        def __call__(self, frames):
            out = []
            for i in range(len(frames)):
                xy = kp[i, :, :, :2] + np.array([3.0, 0.0], np.float32)
                sc = np.ones((1, 17), np.float32)
                out.append(_pack(xy, sc, sc.mean(1), (200, 128), 0.5, 1))
            return out

    r = pose_consistency(Shifted(), [np.zeros((200, 128, 3), np.uint8)] * 2, kp, COCO17)
    assert r["mean_px_error"] == pytest.approx(3.0, abs=1e-4) and r["PCK@0.2"] == 1.0 and r["detected"] == 1.0
    d9 = pose_consistency(Shifted(), [np.zeros((200, 128, 3), np.uint8)] * 2,
                          convert_keypoints(kp, "coco17", "driver9"), DRIVER9)   # detections converted
    assert d9["mean_px_error"] == pytest.approx(3.0, abs=1e-4)


# ---- pose normalisation, retiming, mirroring ---------------------------------------------------
_TEMPLATE = {  # a standing coco17 person, ankles at y = 0, height 1 (head top at -1)
    "nose": (0, -0.95), "left_eye": (0.03, -0.97), "right_eye": (-0.03, -0.97), "left_ear": (0.06, -0.95),
    "right_ear": (-0.06, -0.95), "left_shoulder": (0.12, -0.8), "right_shoulder": (-0.12, -0.8),
    "left_elbow": (0.15, -0.62), "right_elbow": (-0.15, -0.62), "left_wrist": (0.16, -0.47),
    "right_wrist": (-0.16, -0.47), "left_hip": (0.08, -0.5), "right_hip": (-0.08, -0.5), "left_knee": (0.08, -0.25),
    "right_knee": (-0.08, -0.25), "left_ankle": (0.08, 0.0), "right_ankle": (-0.08, 0.0)}


def _person(x: float, ankle_y: float, height: float, squat: float = 1.0) -> np.ndarray:
    """A coco17 person with ankles at (x, ankle_y), ``height`` px from ankles to eyes when
    standing, ``squat`` times that when squatting."""
    t = np.array([_TEMPLATE[n] for n in COCO17.keypoints], np.float32)
    out = np.ones((17, 3), np.float32) * 2
    out[:, 0] = x + t[:, 0] * height
    out[:, 1] = ankle_y + t[:, 1] / 0.97 * height * squat
    return out


def _sequence(far, close, h_far, h_close, x, n=9):
    people = []
    for a in np.linspace(far, close, n):
        h = h_far + (a - far) / (close - far) * (h_close - h_far)
        people += [_person(x, a, h), _person(x, a, h, squat=0.6)]
    return np.stack(people)[:, None]


def test_pose_normalisation_maps_height_range():
    src = _sequence(400, 600, 200, 300, x=300)                    # source: 720x1280 frames
    tgt = _sequence(500, 700, 150, 250, x=800)                    # target: 1080x1920
    s_stats = pose_stats(src, COCO17, (720, 1280))
    t_stats = pose_stats(tgt, COCO17, (1080, 1920))
    assert s_stats.anchor == "ankle" and s_stats.far == pytest.approx(400) and s_stats.close == pytest.approx(600)
    assert s_stats.height_far == pytest.approx(200, rel=1e-3) and s_stats.height_close == pytest.approx(300, rel=1e-3)
    out = GlobalPoseNormalizer(s_stats, t_stats, COCO17)(src)
    # the source's range of heights and positions becomes the target's: exactly at the far and
    # close ends, within 2% between them (the paper interpolates the scale, not the height)
    h_out, h_tgt = skeleton_heights(out)[:, 0], skeleton_heights(tgt)[:, 0]
    assert np.allclose(h_out[[0, 1, -2, -1]], h_tgt[[0, 1, -2, -1]], rtol=1e-4)
    assert np.allclose(h_out, h_tgt, rtol=0.02) and h_out.min() == pytest.approx(0.6 * 150, rel=1e-4)
    ankles = out[:, 0, [COCO17.index("left_ankle"), COCO17.index("right_ankle")]].mean(1)
    assert np.allclose(ankles[:, 1], np.repeat(np.linspace(500, 700, 9), 2), atol=1e-3)
    assert np.allclose(ankles[:, 0], 800, atol=1e-3)
    back = pose_stats(out, COCO17, (1080, 1920))
    for k in ("far", "close", "height_far", "height_close", "center_x"):
        assert getattr(back, k) == pytest.approx(getattr(t_stats, k), rel=1e-4)
    # no ankles in the layout: the hips place the person
    d9 = convert_keypoints(src, "coco17", "driver9")
    assert pose_stats(d9, DRIVER9, (720, 1280)).anchor == "hip"


def test_normalisation_without_depth_change_uses_standing_height():
    src = np.stack([_person(300, 600, 200, s) for s in (1.0, 0.6, 0.8, 1.0)])[:, None]   # squats in place
    tgt = np.stack([_person(900, 1000, 400, s) for s in (1.0, 0.7)])[:, None]
    norm = GlobalPoseNormalizer(pose_stats(src, COCO17, (720, 1280)), pose_stats(tgt, COCO17, (1080, 1920)), COCO17)
    h = skeleton_heights(norm(src))[:, 0]
    assert np.allclose(h / h[0], [1.0, 0.6, 0.8, 1.0], atol=1e-4) and h[0] == pytest.approx(400, rel=1e-4)


def test_retime_and_mirror():
    kp = np.zeros((5, 1, 17, 3), np.float32)
    kp[..., 0] = np.arange(5)[:, None, None] * 10
    kp[..., 1] = 7
    kp[..., 2] = 2
    kp[2, 0, 0, 2] = 0
    slow, near = retime_sequence(kp, 0.5)
    assert len(slow) == 9 and np.allclose(slow[1, 0, 1, 0], 5) and np.array_equal(near[:3], [0, 1, 1])
    assert np.array_equal(slow[2], kp[1]) and slow[3, 0, 1, 0] == 15
    assert slow[3, 0, 0, 2] == 0                                   # nearest frame where one end is unlabelled
    fast, near = retime_sequence(kp, 2)
    assert np.array_equal(fast, kp[[0, 2, 4]]) and np.array_equal(near, [0, 2, 4])
    m = mirror_sequence(kp, COCO17, 100)
    lw, rw = COCO17.index("left_wrist"), COCO17.index("right_wrist")
    assert m[1, 0, rw, 0] == 99 - kp[1, 0, lw, 0]
    assert np.array_equal(mirror_sequence(m, COCO17, 100), kp)


# ---- rendering to video ---------------------------------------------------------------------
def _stick_render(kp, size):
    return render_stick_figures(kp, COCO17, size)


def test_render_sequence_writes_both_videos(tmp_path):
    kp = np.stack([_person(50 + i, 150, 100) for i in range(6)])[:, None]
    src = (np.full((200, 100, 3), 40 * i, np.uint8) for i in range(6))
    r = render_sequence(_stick_render, kp, COCO17, (200, 100), (64, 32), tmp_path / "r.mp4", 5.0,
                        source_frames=src, side_by_side_out=tmp_path / "sbs.mp4", progress=False)
    assert r["video"].frames == 6 and r["video"].size == (64, 32)
    assert count_frames(tmp_path / "r.mp4") == 6 and probe_video(tmp_path / "r.mp4").size == (64, 32)
    assert r["side_by_side"].size == (64, 32 + 32 + 32) and count_frames(tmp_path / "sbs.mp4") == 6
    with pytest.raises(PosesynthError, match="generator returned"):
        render_sequence(lambda k, s: torch.zeros(len(k), 3, 8, 8), kp, COCO17, (200, 100), (64, 32),
                        tmp_path / "x.mp4", 5.0, progress=False)
    assert not (tmp_path / "x.mp4").exists()


def test_transfer_of_fixture_clip(fixtures, tmp_path):
    from posesynth.augment.transfer import source_pose_stats
    from posesynth.datasets.formats import open_dataset

    seq = load_sequence(fixtures / "squats" / "pose_squats.full.json", layout=COCO17, progress=False)
    assert seq.keypoints.shape == (65, 1, 17, 3) and seq.frame_size == (1280, 720) and seq.fps == pytest.approx(5)
    target = pose_stats(seq.keypoints[:48], COCO17, seq.frame_size)
    ds = open_dataset(fixtures / "squats" / "pose_squats.full.json")
    assert source_pose_stats(ds) == pose_stats(seq.keypoints, COCO17, seq.frame_size)
    assert target.anchor == "ankle" and target.close - target.far < 30     # she squats in place
    assert 0.5 * 1280 < target.height_far < 1280                            # standing height: most of the frame
    held = SourceSequence(seq.keypoints[48:], seq.frame_size, seq.fps, COCO17,
                          lambda: (f for i, f in read_frames(fixtures / SQUATS) if i >= 48), "held-out")
    r = transfer_sequence(_stick_render, held, target, (64, 32), tmp_path / "t.mp4", tmp_path / "t_sbs.mp4",
                          mirror=True, speed=0.5, progress=False)
    assert r["video"].frames == 33 == count_frames(tmp_path / "t.mp4") and r["video"].size == (64, 32)
    assert r["side_by_side"].frames == 33 and r["side_by_side"].size == (64, 36 + 32 + 32)


# ---- the whole transfer and generator scoring, through trained runs ----------------------------
@pytest.fixture(scope="module")
def scene_runs(tmp_path_factory):
    """Six synthetic 64x64 driver scenes, a nearest run on them at 64x96 (letterboxed, as every
    arch fits its frames) and a one-step pix2pix run."""
    from posesynth.cli import main
    from posesynth.datasets.make_data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("scenes")
    make_synthetic_dataset(root / "data", 6, seed=4, size=64, passenger_prob=0.0, workers=1, progress=False)
    assert main(["train-gan", "--data", str(root / "data"), "--arch", "nearest", "--size", "64,96",
                 "--out", str(root / "nn")]) == 0
    assert main(["train-gan", "--data", str(root / "data"), "--arch", "pix2pix", "--size", "64", "--ngf", "8",
                 "--ndf", "8", "--steps", "1", "--vgg", "off", "--out", str(root / "p2p")]) == 0
    return root


def test_transfer_cli_writes_both_videos(scene_runs, tmp_path, capsys):
    from posesynth.cli import main

    out = tmp_path / "t.mp4"
    assert main(["transfer", "--gan", str(scene_runs / "nn"), "--source", str(scene_runs / "data"), "--out", str(out),
                 "--speed", "0.5", "--mirror", "--fps", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    info = probe_video(out)
    assert count_frames(out) == 11 and info.size == (64, 96) and info.fps == pytest.approx(4)   # 6 frames at half speed
    sbs = tmp_path / "t_side_by_side.mp4"
    assert count_frames(sbs) == 11 and probe_video(sbs).size == (64, 64 + 96 + 96)
    # an inpainting or missing run, and a motion run that is not there: one line, status 2
    assert main(["transfer", "--gan", str(tmp_path / "none"), "--source", str(scene_runs / "data"),
                 "--out", str(tmp_path / "x.mp4")]) == 2
    assert "no such GAN run folder" in capsys.readouterr().err
    assert main(["transfer", "--gan", str(scene_runs / "nn"), "--source", str(scene_runs / "data"),
                 "--out", str(tmp_path / "x.mp4"), "--motion", str(tmp_path / "no_motion")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "x.mp4").exists()


def test_transfer_of_own_poses_gives_back_the_training_frames(scene_runs, tmp_path, monkeypatch):
    """The run's own frames as the source: normalisation is the identity, the letterbox fit maps
    each pose onto its training frame's, and the nearest run draws exactly that frame."""
    import posesynth.spade.load as load_mod
    from posesynth.augment.transfer import transfer_from_run
    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.torch_dataset import PoseMapDataset

    seen = []
    real_load = load_mod.load_render

    def recording(*a, **kw):
        render, layout, meta = real_load(*a, **kw)

        def rec(kp, size):
            seen.append(kp.clone())
            return render(kp, size)
        return rec, layout, meta

    monkeypatch.setattr(load_mod, "load_render", recording)
    r = transfer_from_run(scene_runs / "nn", scene_runs / "data", tmp_path / "own.mp4", None, fps=5, progress=False)
    assert r["video"].frames == 6 and r["side_by_side"] is None
    plain = PoseMapDataset(open_dataset(scene_runs / "data"), (64, 96), None, with_maps=False)
    want = torch.stack([plain[i]["keypoints"][:1] for i in range(6)])                # one person each
    got = torch.cat(seen)
    vis = want[..., 2] > 0
    assert torch.equal(got[..., 2] > 0, vis)
    assert torch.allclose(got[..., :2][vis], want[..., :2][vis], atol=1e-3)     # letterboxed, 16 px borders
    frames = np.stack([f for _, f in read_frames(tmp_path / "own.mp4")]).astype(np.float32)
    truth = np.stack([(plain[i]["image"].permute(1, 2, 0).numpy() + 1) * 127.5 for i in range(6)])
    assert np.abs(frames - truth).mean() < 6                                       # mp4v is lossy


def test_transfer_continues_with_extra_poses(tmp_path):
    kp = np.stack([_person(50 + 4 * i, 150, 100) for i in range(5)])[:, None]
    more = np.stack([_person(70 + 4 * i, 150, 100) for i in range(3)])[:, None]
    seq = SourceSequence(kp, (200, 100), 5.0, COCO17, lambda: (np.full((200, 100, 3), 200, np.uint8) for _ in range(5)))
    target = pose_stats(kp, COCO17, (200, 100))
    r = transfer_sequence(_stick_render, seq, target, (64, 32), tmp_path / "c.mp4", tmp_path / "c_sbs.mp4",
                          progress=False, fit="letterbox", extra=more)
    assert r["video"].frames == 8 and r["continued_frames"] == 3 and count_frames(tmp_path / "c_sbs.mp4") == 8
    left = [f[:, :32].mean() for _, f in read_frames(tmp_path / "c_sbs.mp4")]
    assert min(left[:5]) > 150 and max(left[5:]) < 20                  # source frames, then black beside the new poses


def test_evaluate_generator_scores_renders(scene_runs, tmp_path, capsys):
    from posesynth.cli import main
    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.torch_dataset import PoseMapDataset
    from posesynth.spade.evaluate import evaluate_generator

    plain = PoseMapDataset(open_dataset(scene_runs / "data"), (64, 96), None, with_maps=False)
    truth = {plain[i]["image"].numpy().tobytes(): plain[i]["keypoints"][:1].numpy() for i in range(6)}

    class Oracle:                        # knows each training frame's pose; finds nobody elsewhere
        name, layout = "oracle", DRIVER9

        def __call__(self, frames):
            out = []
            for f in frames:
                key = (torch.from_numpy(f).permute(2, 0, 1).float() / 127.5 - 1).numpy().tobytes()
                kp = truth.get(key, np.zeros((0, 9, 3), np.float32))
                sc = np.ones(kp.shape[:2], np.float32)
                out.append(_pack(kp[..., :2], sc, sc.mean(1) if len(kp) else np.zeros(0, np.float32), f.shape[:2],
                                 0.5, 1))
            return out

    res = evaluate_generator(scene_runs / "nn", scene_runs / "data", detector=Oracle(), out=tmp_path / "m.json",
                             grid=tmp_path / "g.png", progress=False)
    assert res["frames"] == 6 and res["psnr"] == float("inf") and res["ssim"] == pytest.approx(1.0)
    assert res["pose"]["PCK@0.2"] == 1.0 and res["pose"]["mean_px_error"] == pytest.approx(0, abs=1e-4)
    assert res["pose_real"]["detected"] == 1.0 and json.loads((tmp_path / "m.json").read_text())["frames"] == 6
    assert (tmp_path / "g.png").exists()
    assert main(["evaluate-generator", "--gan", str(scene_runs / "p2p"), "--data", str(scene_runs / "data"),
                 "--detector", "none", "--out", str(tmp_path / "p.json")]) == 0
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["arch"] == "pix2pix" and p["frames"] == 6 and 3 < p["psnr"] < 40 and p["pose"] is None
    assert "pix2pix on 6 frames" in capsys.readouterr().out
