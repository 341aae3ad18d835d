import json
from pathlib import Path

import numpy as np
import pytest
import torch

from posesynth.augment.perturb import PerturbConfig, perturb_keypoints
from posesynth.datasets.coco import CocoKeypointDataset, write_coco
from posesynth.datasets.layouts import DRIVER9, KeypointLayout
from posesynth.datasets.make_data import make_synthetic_dataset
from posesynth.datasets.sample import Sample
from posesynth.datasets.transforms import Fit
from posesynth.errors import PosesynthError
from posesynth.augment.generate import GenerateConfig, generate_dataset, merge_shards
from posesynth.spade.inference import fold_spectral_norm, optimize_generator
from posesynth.spade.load import load_generator
from posesynth.spade.trainer import GANConfig, GANTrainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    make_synthetic_dataset(root / "data", 5, seed=2, size=64, workers=1, progress=False)
    cfg = GANConfig(data=str(root / "data"), size=(64, 64), ngf=8, ndf=8, steps=2, vgg="off", augment=False,
                    device="cpu")
    GANTrainer(cfg, root / "gan", progress=False).fit()
    return root


def gcfg(setup, out, **kw):
    base = dict(gan=str(setup / "gan"), data=str(setup / "data"), out=str(out), per_image=2, seed=3, batch_size=3,
                flush_every=2)
    base.update(kw)
    return GenerateConfig(**base)


def read(path):
    return json.loads((path / "annotations.json").read_text())


def test_round_trip_and_provenance(setup, tmp_path):
    generate_dataset(gcfg(setup, tmp_path / "g"), progress=False)
    ds = CocoKeypointDataset(tmp_path / "g")
    src = CocoKeypointDataset(setup / "data")
    assert len(ds) == 10 and ds.layout == DRIVER9
    data = read(tmp_path / "g")
    for s in ds:
        prov = s.meta["provenance"]
        i = [e.image["id"] for e in src.entries].index(prov["source_image_id"])
        assert prov["perturbation"] == "arms-angle" and prov["seed"] == 3 and prov["renderer"] == "gan"
        want = perturb_keypoints(Fit((64, 64))(src[i]).keypoints, DRIVER9, (64, 64),
                                 np.random.default_rng([3, i, prov["copy"]]), PerturbConfig("arms-angle"))
        np.testing.assert_allclose(s.keypoints, want, atol=1e-3)
        assert s.image.shape == (64, 64, 3) and s.masks.shape == (1, 64, 64)
    assert all("provenance" in a for a in data["annotations"])


def test_resume_equals_uninterrupted(setup, tmp_path):
    generate_dataset(gcfg(setup, tmp_path / "full"), progress=False)
    generate_dataset(gcfg(setup, tmp_path / "part"), progress=False, stop_after=3)
    partial = read(tmp_path / "part")
    assert 3 <= len(partial["images"]) < 10     # valid JSON on disk after the interruption
    generate_dataset(gcfg(setup, tmp_path / "part"), progress=False)
    assert read(tmp_path / "part") == read(tmp_path / "full")
    for f in (tmp_path / "full" / "images").iterdir():
        assert (tmp_path / "part" / "images" / f.name).read_bytes() == f.read_bytes()


def test_shards_merge_to_one_dataset(setup, tmp_path):
    generate_dataset(gcfg(setup, tmp_path / "one", batch_size=1), progress=False)
    for i in range(2):
        generate_dataset(gcfg(setup, tmp_path / "sh", batch_size=1, shard=f"{i}/2"), progress=False)
    merge_shards(tmp_path / "sh", progress=False)
    one, sh = read(tmp_path / "one"), read(tmp_path / "sh")
    assert one["images"] == sh["images"] and one["annotations"] == sh["annotations"]
    for f in (tmp_path / "one" / "images").iterdir():
        assert (tmp_path / "sh" / "images" / f.name).read_bytes() == f.read_bytes()


def test_folded_weights_same_output(setup):
    g, _, _ = load_generator(setup / "gan")
    folded = fold_spectral_norm(g)
    assert not any(hasattr(m, "parametrizations") for m in folded.modules())
    x = torch.rand(2, 26, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), g(x), rtol=1e-4, atol=1e-5)
        fast = optimize_generator(g, "cpu", "fp32")
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), g(x), rtol=1e-4, atol=1e-5)


def test_int8_close_to_fp32(setup):
    g, _, _ = load_generator(setup / "gan")
    x = torch.rand(4, 26, 64, 64)
    q = optimize_generator(g, "cpu", "int8", calibration=[x])
    with torch.no_grad():
        ref, out = g(x), q(x)
    mse = float(((ref - out) ** 2).mean())
    psnr = 10 * np.log10(4.0 / max(mse, 1e-12))   # range [-1, 1]
    assert psnr > 25, psnr


def test_layout_mismatch_stops_before_work(setup, tmp_path):
    arm = KeypointLayout("arm3", ("shoulder", "elbow", "wrist"), ((0, 1), (1, 2)))
    kp = np.array([[[10, 10, 2], [20, 20, 2], [30, 30, 2]]], np.float32)
    write_coco(tmp_path / "arm", [Sample(np.zeros((64, 64, 3), np.uint8), kp, np.zeros((0, 64, 64), np.uint8))], arm)
    with pytest.raises(PosesynthError, match="trained on layout 'driver9'.*'arm3'"):
        generate_dataset(gcfg(setup, tmp_path / "x", data=str(tmp_path / "arm")), progress=False)
    assert not (tmp_path / "x").exists()


def test_unwritable_output(setup, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(PosesynthError, match="cannot write there"):
        generate_dataset(gcfg(setup, tmp_path / "file" / "out"), progress=False)


def test_pose_network_trains_on_generated_data(setup, tmp_path):
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig

    generate_dataset(gcfg(setup, tmp_path / "g"), progress=False)
    cfg = PoseTrainConfig(data=str(tmp_path / "g"), size=(64, 64), backbone="pvt_v2_b0", pretrained="none",
                          heads="small", epochs=1, batch_size=2)
    row = PoseNetTrainer(cfg, tmp_path / "run", progress=False).fit()
    assert np.isfinite(row["train_loss"])


def test_torchrun_ranks_take_shards_and_merge(setup, tmp_path):
    import os
    import subprocess
    import sys

    generate_dataset(gcfg(setup, tmp_path / "one", batch_size=1), progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "posesynth", "generate", "--gan", str(setup / "gan"), "--data", str(setup / "data"), "--out",
                        str(tmp_path / "tr"), "--per-image", "2", "--seed", "3", "--batch-size", "1"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read(tmp_path / "tr")["annotations"] == read(tmp_path / "one")["annotations"]


def test_compiled_path_same_output(setup):
    g, _, _ = load_generator(setup / "gan")
    x = torch.rand(2, 26, 64, 64).contiguous(memory_format=torch.channels_last)
    comp = optimize_generator(g, "cpu", "fp32", compile=True)
    with torch.no_grad():
        torch.testing.assert_close(comp(x), g(x), rtol=1e-4, atol=1e-4)
    import shutil

    if shutil.which("c++") or shutil.which("gcc"):
        assert not comp.failed  # really compiled, not the eager fallback


def test_warp_needs_no_gan_and_keeps_the_source_size(tmp_path):
    from posesynth.datasets.synthetic import render_scene, scene_rng

    samples = [render_scene(scene_rng(6, i), 96, "narrow", 0.0) for i in range(2)]
    big = Sample(np.pad(samples[1].image, ((0, 0), (16, 16), (0, 0))), samples[1].keypoints + [16, 0, 0],
                 np.pad(samples[1].masks, ((0, 0), (0, 0), (16, 16))))
    write_coco(tmp_path / "src", [samples[0], big], DRIVER9)
    cfg = GenerateConfig(data=str(tmp_path / "src"), out=str(tmp_path / "g"), per_image=2, seed=1, device="cpu")
    generate_dataset(cfg, progress=False)
    ds = CocoKeypointDataset(tmp_path / "g")
    assert len(ds) == 4
    sizes = sorted({ds[i].image.shape[:2] for i in range(4)})
    assert sizes == [(96, 96), (96, 128)]   # each copy at its source's own size
    assert all(ds[i].meta["provenance"]["renderer"] == "warp" for i in range(4))


def test_other_settings_into_the_same_output_are_refused(setup, tmp_path):
    generate_dataset(gcfg(setup, tmp_path / "g"), progress=False, stop_after=2)
    with pytest.raises(PosesynthError, match="other settings.*seed: 3 there, 4 now"):
        generate_dataset(gcfg(setup, tmp_path / "g", seed=4), progress=False)
    with pytest.raises(PosesynthError, match="per_image: 2 there, 3 now"):
        generate_dataset(gcfg(setup, tmp_path / "g", per_image=3), progress=False)
    generate_dataset(gcfg(setup, tmp_path / "g"), progress=False)   # the same settings continue
    assert len(read(tmp_path / "g")["images"]) == 10


@pytest.fixture(scope="module")
def warp_data(tmp_path_factory):
    from posesynth.cli import main

    root = tmp_path_factory.mktemp("warpgen")
    assert main(["make-data", "--out", str(root / "data"), "--size", "128", "--num", "8", "--seed", "5",
                 "--workers", "1"]) == 0
    return root


def _images(path):
    return {f.name: f.read_bytes() for f in sorted((path / "images").iterdir())}


def test_warp_generate_is_independent_of_sharding_and_interruption(warp_data, tmp_path):
    """Issue 20.11: a warp render depends only on (seed, image, copy): the uninterrupted run,
    two shards merged, and a run interrupted then resumed give identical bytes, although the
    process's OpenCV random state differs between them (GrabCut's k-means start draws from it)."""
    import cv2

    from posesynth.cli import main

    def run(out, *extra):
        return main(["generate", "--renderer", "warp", "--data", str(warp_data / "data"), "--out", str(out),
                     "--per-image", "2", "--seed", "4", "--device", "cpu", *extra])

    assert run(tmp_path / "one") == 0
    cv2.setRNGSeed(987)
    cv2.randu(np.zeros((50, 50), np.uint8), 0, 255)        # another history of OpenCV's RNG
    assert run(tmp_path / "sh", "--shard", "1/2") == 0
    assert run(tmp_path / "sh", "--shard", "0/2") == 0
    assert main(["generate", "--out", str(tmp_path / "sh"), "--merge"]) == 0
    one, sh = read(tmp_path / "one"), read(tmp_path / "sh")
    assert one["images"] == sh["images"] and one["annotations"] == sh["annotations"]
    ref = _images(tmp_path / "one")
    assert len(ref) == 16 and _images(tmp_path / "sh") == ref
    # one image per call instead of batches of 8 rendered on a thread each: the same bytes
    assert run(tmp_path / "b1", "--batch-size", "1") == 0
    assert read(tmp_path / "b1") == one and _images(tmp_path / "b1") == ref
    # interrupted after 5 images (batches of 3; another RNG history again), then resumed
    cfg = GenerateConfig(renderer="warp", data=str(warp_data / "data"), out=str(tmp_path / "part"), per_image=2,
                         seed=4, device="cpu", batch_size=3)
    generate_dataset(cfg, progress=False, stop_after=5)
    cv2.setRNGSeed(31)
    assert run(tmp_path / "part") == 0
    assert read(tmp_path / "part") == one and _images(tmp_path / "part") == ref


def test_warp_batches_of_mixed_sizes_give_the_bytes_of_one_at_a_time(tmp_path):
    """Photos of several sizes and people counts: the warp renders each batch by size (each
    group within a pixel budget) and writes in order; the same bytes as one image per call."""
    from posesynth.augment.generate import _same_size_groups
    from posesynth.cli import main
    from posesynth.datasets.coco import write_coco
    from posesynth.datasets.layouts import DRIVER9
    from posesynth.datasets.synthetic import render_scene, scene_rng

    scenes = [render_scene(scene_rng(9, i), (96, 128, 112)[i % 3], "narrow", 0.5) for i in range(9)]
    assert len({s.image.shape for s in scenes}) == 3 and len({s.num_people for s in scenes}) == 2
    write_coco(tmp_path / "mixed", scenes, DRIVER9)

    def run(out, bs):
        return main(["generate", "--renderer", "warp", "--data", str(tmp_path / "mixed"), "--out", str(out),
                     "--per-image", "2", "--seed", "1", "--device", "cpu", "--batch-size", str(bs)])

    assert run(tmp_path / "b8", 8) == 0 and run(tmp_path / "b1", 1) == 0
    assert read(tmp_path / "b8") == read(tmp_path / "b1")
    assert _images(tmp_path / "b8") == _images(tmp_path / "b1") and len(_images(tmp_path / "b1")) == 18
    # groups: by size in order of first appearance, split at the pixel budget
    ready = [(k, scenes[k], None) for k in range(6)]     # sizes 96, 128, 112, 96, 128, 112
    assert _same_size_groups(ready) == [[0, 3], [1, 4], [2, 5]]
    assert _same_size_groups(ready, max_pixels=128 * 128) == [[0], [1], [2], [3], [4], [5]]
    assert _same_size_groups(ready, max_pixels=2 * 96 * 96) == [[0, 3], [1], [2], [4], [5]]


def test_warp_render_ignores_opencv_random_state():
    """Issue 20.11: the same render twice in one process, OpenCV's RNG disturbed in between."""
    import cv2

    from posesynth.augment.renderers import WarpRenderer
    from posesynth.datasets.synthetic import render_scene, scene_rng
    from posesynth.datasets.torch_dataset import image_to_tensor

    for i in range(4):
        s = render_scene(scene_rng(9, i), 128, "narrow", 0.3)
        new = perturb_keypoints(s.keypoints, DRIVER9, (128, 128), np.random.default_rng(i), PerturbConfig())
        args = (image_to_tensor(s.image)[None], torch.from_numpy(s.masks[None]).float(), s.keypoints[None], new[None])
        a = WarpRenderer(DRIVER9)(*args)
        cv2.setRNGSeed(1000 + i)
        cv2.randu(np.zeros((20, 20), np.float32), 0, 1)
        b = WarpRenderer(DRIVER9)(*args)
        assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks), i


def test_train_posenet_with_warp_resumes_bit_for_bit(warp_data, tmp_path):
    """Issue 20.11: train-posenet --renderer warp resumed (in a process whose OpenCV random state
    is another) ends with the same weights as the uninterrupted run."""
    import cv2

    from posesynth.augment.training import AugmentedPoseConfig, build_pose_trainer
    from posesynth.checkpoint import load_checkpoint

    cfg = dict(data=str(warp_data / "data"), size=(128, 128), backbone="pvt_v2_b0", pretrained="none", heads="small",
               batch_size=2, steps_per_epoch=3, renderer="warp", device="cpu", seed=1, fraction=1.0)
    build_pose_trainer(AugmentedPoseConfig(epochs=2, **cfg), tmp_path / "one", progress=False).fit()
    build_pose_trainer(AugmentedPoseConfig(epochs=1, **cfg), tmp_path / "two", progress=False).fit()
    cv2.setRNGSeed(4242)
    cv2.randu(np.zeros((64, 64), np.uint8), 0, 255)
    build_pose_trainer(AugmentedPoseConfig(epochs=2, **cfg), tmp_path / "two", progress=False, resume=True).fit()
    a, ma = load_checkpoint(tmp_path / "one" / "checkpoints" / "latest")
    b, mb = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest")
    assert ma["epoch"] == mb["epoch"] == 2 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_appends_instead_of_rewriting(warp_data, tmp_path, monkeypatch):
    """Issue 20.16: recording an image appends one journal line; the annotation file is written
    once, at the end (it was rewritten every flush_every images: quadratic in the dataset)."""
    import posesynth.io as pio

    writes = []
    real = pio.atomic_write_bytes

    def counting(path, data):
        writes.append((Path(path).name, len(data)))
        return real(path, data)

    monkeypatch.setattr(pio, "atomic_write_bytes", counting)
    cfg = GenerateConfig(renderer="warp", data=str(warp_data / "data"), out=str(tmp_path / "g"), per_image=2,
                         seed=4, device="cpu", flush_every=1)
    generate_dataset(cfg, progress=False)
    ann = [w for w in writes if w[0].startswith("annotations")]
    assert [w[0] for w in ann] == ["annotations.json"]
    data = read(tmp_path / "g")
    assert len(data["images"]) == 16 and [im["id"] for im in data["images"]] == list(range(1, 17))
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    assert not list((tmp_path / "g").glob("*.jsonl"))          # the journal is gone once the file is written


def test_generate_after_kill_9_gives_the_uninterrupted_bytes(warp_data, tmp_path):
    """Issues 20.13 and 20.16: kill -9 in the middle of a run, a journal line cut short and a
    crashed atomic write's temporary file; the rerun removes the temporary file, continues,
    and ends with the uninterrupted run's bytes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from posesynth.cli import main

    args = ["generate", "--renderer", "warp", "--data", str(warp_data / "data"), "--per-image", "4", "--seed", "2",
            "--device", "cpu", "--flush-every", "1000"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "killed"
    journal = out / "annotations.journal.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "posesynth", *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 120:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 4:
            os.kill(p.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    p.wait()
    if p.returncode == -signal.SIGKILL:           # killed mid-run (else it finished first: still compared)
        assert 4 <= journal.read_bytes().count(b"\n") < 32 and not (out / "annotations.json").exists()
        with open(journal, "ab") as f:
            f.write(b'{"image": {"id": 31, "file_na')      # a line cut short
    stale = out / ".annotations.json.abcd1234.tmp"
    stale.write_text("{")
    assert main([*args, "--out", str(out)]) == 0
    assert not stale.exists() and not journal.exists()
    assert (out / "annotations.json").read_bytes() == (tmp_path / "one" / "annotations.json").read_bytes()
    assert _images(out) == _images(tmp_path / "one") and len(_images(out)) == 32


def test_merge_refuses_an_unfinished_shard(warp_data, tmp_path):
    cfg = dict(renderer="warp", data=str(warp_data / "data"), out=str(tmp_path / "sh"), per_image=2, seed=4,
               device="cpu", batch_size=2)   # stop_after stops after a whole batch
    generate_dataset(GenerateConfig(shard="0/2", **cfg), progress=False)
    generate_dataset(GenerateConfig(shard="1/2", **cfg), progress=False, stop_after=3)
    with pytest.raises(PosesynthError, match=r"not finished \(annotations.shard-1-of-2.journal.jsonl\)"):
        merge_shards(tmp_path / "sh", progress=False)
    generate_dataset(GenerateConfig(shard="1/2", **cfg), progress=False)
    assert len(json.loads(merge_shards(tmp_path / "sh", progress=False).read_text())["images"]) == 16
