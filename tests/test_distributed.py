"""Devices, data parallel, checkpoints (issue 11)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posesynth.checkpoint import TornCheckpoint, load_checkpoint, save_checkpoint
from posesynth.datasets.layouts import DRIVER9
from posesynth.runs import Precision, resolve_device, resolve_gan_device

HERE = Path(__file__).parent


def test_device_auto_picks_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_gan_device("auto", torch.device("cpu")) == torch.device("cpu")
    from posesynth.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        Precision("bf16", torch.device("cpu"))
    assert Precision("auto", torch.device("cpu")).name == "fp32"


def test_device_under_torchrun_is_per_rank(monkeypatch):
    """Issue 20.9: under torchrun (WORLD_SIZE 2, this is LOCAL_RANK 1) an explicit cuda:0 would put
    both ranks on GPU 0 (NCCL refuses): it is refused with a line naming the fix; a bare cuda and
    auto give cuda:LOCAL_RANK.  A single process may name any GPU; a generator may share one."""
    from posesynth.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"--device cuda:0 names one GPU for all 2 torchrun processes.*"
                                          r"--device cuda or auto"):
        resolve_device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda:1")
    assert resolve_gan_device("cuda:3", torch.device("cuda:1"), 1, 2) == torch.device("cuda:3")
    assert resolve_gan_device("auto", torch.device("cuda:1"), 1, 2) == torch.device("cuda:3")
    from posesynth.posenet.trainer import init_distributed

    with pytest.raises(ConfigError, match="names one GPU"):   # before any process group is made
        init_distributed("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("cuda:2") == torch.device("cuda:2")


def test_more_ranks_than_gpus(monkeypatch):
    """torchrun with 2 processes on a machine with one GPU (seen on an H200 machine): a rank of
    the pose network, which needs a GPU of its own for NCCL, is refused with a line naming the
    fix; ranks without collectives (generate, a generator) share the GPU."""
    from posesynth.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for spec in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"local rank 1, there are 1\).*--nproc_per_node=1, or --device cpu"):
            resolve_device(spec)
        assert resolve_device(spec, shared_ok=True) == torch.device("cuda:0")
    assert resolve_gan_device("auto", torch.device("cuda:0"), 1, 2) == torch.device("cuda:0")
    from posesynth.posenet.trainer import init_distributed

    with pytest.raises(ConfigError, match="more processes were started on this machine than it has GPUs"):
        init_distributed("auto")   # before any process group is made
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda:0")


def test_torn_checkpoint_pair_is_detected_and_the_previous_one_used(tmp_path, caplog):
    p = tmp_path / "checkpoints" / "latest"
    save_checkpoint(p, {"w": torch.full((3,), 1.0)}, {"step": 1})
    save_checkpoint(p, {"w": torch.full((3,), 2.0)}, {"step": 2})
    t, m = load_checkpoint(p)
    assert m["step"] == 2 and float(t["w"][0]) == 2.0
    # a crash between the two writes of step 3: new tensors beside the old JSON
    from safetensors.torch import save

    (p.parent / "latest.safetensors").write_bytes(save({"w": torch.full((3,), 3.0)}, metadata={"step": "3"}))
    with pytest.raises(TornCheckpoint, match="does not belong to latest.json"):
        load_checkpoint(p, fallback=False)
    with caplog.at_level("WARNING"):
        t, m = load_checkpoint(p)
    assert m["step"] == 1 and float(t["w"][0]) == 1.0     # the previous complete pair
    assert "previous complete checkpoint" in caplog.text


def test_resume_after_a_torn_pair_and_stale_temps(tmp_path):
    from posesynth.datasets.synthetic import render_scene, scene_rng
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig

    class Src:
        layout = DRIVER9
        s = [render_scene(scene_rng(40, i), 64, "narrow", 0.0) for i in range(4)]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.s[i]

    cfg = PoseTrainConfig(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small", epochs=2,
                          batch_size=2, device="cpu", data_augment=False)
    run = tmp_path / "run"
    PoseNetTrainer(cfg, run, source=Src(), progress=False).fit()
    ck = run / "checkpoints"
    assert json.loads((ck / "latest.json").read_text())["epoch"] == 2
    assert json.loads((ck / "previous.json").read_text())["epoch"] == 1
    (ck / "latest.safetensors").write_bytes((ck / "latest.safetensors").read_bytes()[:-7])   # cut short
    (ck / ".latest.json.abc123.tmp").write_text("{")                                         # a crash's leftover
    import dataclasses

    t = PoseNetTrainer(dataclasses.replace(cfg, epochs=3), run, source=Src(), progress=False, resume=True)
    assert t.epoch == 1 and len(t.history) == 1            # resumed from the complete pair
    assert not (ck / ".latest.json.abc123.tmp").exists()
    # a best newer than the resumed state (here: epoch 2's, written after the resumed epoch 1) is gone
    import shutil

    for suffix in (".json", ".safetensors"):
        shutil.copy(ck / f"previous{suffix}", ck / f"best{suffix}")
    (ck / "best.json").write_text(json.dumps({**json.loads((ck / "best.json").read_text()), "epoch": 2}))
    t = PoseNetTrainer(dataclasses.replace(cfg, epochs=3), run, source=Src(), progress=False, resume=True)
    assert not (ck / "best.json").exists() and t.best_epoch == 0
    t.fit()
    assert t.epoch == 3 and [h["epoch"] for h in t.history] == [1, 2, 3]
    assert 2 <= t.best_epoch == json.loads((ck / "best.json").read_text())["epoch"]   # a best exists again
    import stat

    mode = stat.S_IMODE(os.stat(ck / "latest.json").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask          # the user's umask, not mkstemp's 0600


def test_run_scaffold_removes_stale_temps_anywhere_in_the_run(tmp_path):
    """Issue 20.13: the temporary files of interrupted atomic writes (io.atomic_write_*:
    ``.NAME.XXXXXXXX.tmp``; checkpoint links ``.NAME.link.tmp``) go at the next start, in any
    folder of the run; other files stay."""
    from posesynth.io import atomic_write_text
    from posesynth.runs import RunDir

    run = tmp_path / "run"
    d = RunDir(run)
    d.prepare(_Cfg(), resume=False)
    d.save("latest", {"w": torch.zeros(2)}, {"step": 1})
    atomic_write_text(run / "web" / "index.html", "<html>")
    stale = [run / ".history.csv.x1y2z3w4.tmp", run / "checkpoints" / ".latest.safetensors.abcd1234.tmp",
             run / "checkpoints" / ".previous.json.link.tmp", run / "web" / ".index.html.q9_w8e7r.tmp",
             run / "web" / "images" / ".step_000010.png.zzzzzzzz.tmp"]
    keep = [run / ".keep", run / "notes.tmp", run / "web" / "index.html"]
    for p in stale + keep[:2]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    RunDir(run).prepare(_Cfg(), resume=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


@dataclasses.dataclass
class _Cfg:
    a: int = 1


def test_five_people_stay_in_the_maps(tmp_path):
    from posesynth.datasets.sample import Sample
    from posesynth.datasets.torch_dataset import PoseMapDataset, max_people_of
    from posesynth.posenet.decode import find_peaks

    kp = np.zeros((5, 9, 3), np.float32)
    for p in range(5):
        kp[p, :, 0] = 12 + 25 * p
        kp[p, :, 1] = np.linspace(10, 110, 9)
        kp[p, :, 2] = 2

    class Src:
        layout = DRIVER9

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Sample(np.zeros((128, 128, 3), np.uint8), kp, np.zeros((1, 128, 128), np.uint8))

    assert max_people_of(Src()) == 5
    item = PoseMapDataset(Src(), (128, 128), max_people=max_people_of(Src()), with_maps=False)[0]
    assert item["keypoints"].shape[0] == 5
    peaks = find_peaks(item["heatmaps"].numpy(), 0.5)
    assert all(len(p) == 5 for p in peaks)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(HERE / "ddp_script.py"), str(out)], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)], out


def test_gloo_ddp_with_the_mixer_ranks_render_their_own_slots(ddp_run):
    (a, b), _ = ddp_run
    assert a["backend"] == b["backend"] == "gloo" and a["device"] == b["device"] == "cpu"
    assert a["mixer_seed"] != b["mixer_seed"]
    for sa, sb in zip(a["seen"], b["seen"]):
        assert sa["step"] == sb["step"]
        assert sum(sa["replaced"]) == sum(sb["replaced"]) == 1          # half of each rank's batch of 2
        assert sa["keypoints"] != sb["keypoints"]                       # different slots, different poses


def test_a_nan_on_one_rank_does_not_hang_the_run(ddp_run):
    (a, b), _ = ddp_run
    assert a["skipped"] == b["skipped"] == 1        # both ranks skipped the step together
    assert a["epochs"] == b["epochs"] == 1          # and the run finished


def test_metrics_over_two_ranks_equal_one_process(ddp_run):
    """The two ranks' combined validation figures equal one process scoring the same data."""
    sys.path.insert(0, str(HERE))
    import ddp_script

    from posesynth.datasets.posemaps import PoseMapSpec
    from posesynth.datasets.torch_dataset import PoseMapDataset
    from posesynth.posenet.evaluate import evaluate_dataset
    from posesynth.posenet.load import load_posenet
    from posesynth.posenet.losses import PoseLossWeights

    (a, b), out = ddp_run
    assert a["val"] == b["val"]                     # every rank ends with the whole dataset's figures
    model, layout, meta = load_posenet(out / "run", "cpu", checkpoint="latest")
    ds = PoseMapDataset(ddp_script.Scenes(32, 6), (64, 64), None, 4, PoseMapSpec.from_dict(meta["posemaps"]),
                        meta["max_people"], with_maps=False, fit="letterbox", with_original=True)
    w = meta["config"]
    one = evaluate_dataset(model, ds, layout, True, w["decode_threshold"], w["pck_alpha"],
                           PoseLossWeights(w["w_heatmap"], w["w_paf"], w["w_mask"], w["loss_reduction"]), 2)
    assert len(a["val"]) > 5
    for k, v in a["val"].items():
        assert one[k[4:]] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_fp16_grad_scaler_skips_an_overflow_then_steps_unscaled(monkeypatch):
    """The real fp16 path (autocast + torch.amp.GradScaler, here on the CPU): the loss is scaled
    by 2^16 before backward; a gradient of 1 then overflows fp16 (max 65504), so the step is
    skipped (weights unchanged, scale halved, step() False); at 2^15 it fits and the update is
    exactly lr x the unscaled gradient."""
    monkeypatch.setattr(Precision, "reduced_on_cpu", True)
    prec = Precision("fp16", torch.device("cpu"))
    assert prec.scaler is not None and prec.scaler.get_scale() == 2.0 ** 16
    lin = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.constant_(lin.weight, 0.5)
    opt = torch.optim.SGD(lin.parameters(), lr=0.25)
    x = torch.ones(1, 4)

    def step():
        with prec.autocast():
            y = lin(x)                      # fp16 under autocast: d(sum y)/dW = x = 1 per weight
        assert y.dtype == torch.float16
        opt.zero_grad()
        prec.backward(y.float().sum())
        return prec.step(opt)

    assert step() is False and torch.equal(lin.weight, torch.full((1, 4), 0.5))
    assert prec.scaler.get_scale() == 2.0 ** 15
    assert step() is True and torch.equal(lin.weight, torch.full((1, 4), 0.5 - 0.25 * 1.0))
    # the scaler's state travels in a checkpoint's JSON and comes back
    state = prec.state_dict()
    assert state == {"scale": 2.0 ** 15, "growth_tracker": 1}
    other = Precision("fp16", torch.device("cpu"))
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.state_dict() == state and other.scaler.get_scale() == 2.0 ** 15


def test_fp16_loss_scale_is_in_the_checkpoints(monkeypatch, tmp_path):
    """Resuming an fp16 run continues with its loss scale (a fresh 2^16 would skip steps the
    uninterrupted run took): both trainers save and restore it."""
    from posesynth.datasets.synthetic import render_scene, scene_rng
    from posesynth.posenet.trainer import PoseNetTrainer, PoseTrainConfig
    from posesynth.spade.trainer import GANConfig, GANTrainer

    monkeypatch.setattr(Precision, "reduced_on_cpu", True)

    class Src:
        layout = DRIVER9
        s = [render_scene(scene_rng(40, i), 64, "narrow", 0.0) for i in range(2)]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.s[i]

    pcfg = PoseTrainConfig(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small", epochs=1,
                           batch_size=2, device="cpu", precision="fp16")
    t = PoseNetTrainer(pcfg, tmp_path / "pose", source=Src(), progress=False)
    t.precision.load_state_dict({"scale": 512.0, "growth_tracker": 7})
    t.save("latest")
    r = PoseNetTrainer(pcfg, tmp_path / "pose", source=Src(), progress=False, resume=True)
    assert r.precision.state_dict() == {"scale": 512.0, "growth_tracker": 7}
    gcfg = GANConfig(size=(64, 64), ngf=8, ndf=8, batch_size=2, steps=1, vgg="off", augment=False, device="cpu",
                     precision="fp16")
    g = GANTrainer(gcfg, tmp_path / "gan", source=Src(), progress=False)
    g.precision.load_state_dict({"scale": 256.0, "growth_tracker": 3})
    g.precision_d.load_state_dict({"scale": 1024.0, "growth_tracker": 5})
    g.save()
    h = GANTrainer(gcfg, tmp_path / "gan", source=Src(), progress=False, resume=True)
    assert h.precision.state_dict() == {"scale": 256.0, "growth_tracker": 3}
    assert h.precision_d.state_dict() == {"scale": 1024.0, "growth_tracker": 5}


def test_train_posenet_with_a_gan_under_torchrun(tmp_path):
    """train-posenet --gan RUN with two ranks (gloo, CPU), through the command line: each rank
    renders its own slots with the generator, the run ends on both, and the process group the
    command made is destroyed at the end."""
    from posesynth.datasets.make_data import make_synthetic_dataset
    from posesynth.spade.trainer import GANConfig, GANTrainer

    make_synthetic_dataset(tmp_path / "data", 6, seed=4, size=64, workers=1, progress=False)
    GANTrainer(GANConfig(data=str(tmp_path / "data"), mode="full", size=(64, 64), ngf=8, ndf=8, steps=2,
                         batch_size=2, vgg="off", augment=False, device="cpu"), tmp_path / "gan", progress=False).fit()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(HERE / "ddp_gan_script.py"), str(tmp_path / "data"), str(tmp_path / "gan"),
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = (json.loads((tmp_path / f"gan_rank{i}.json").read_text()) for i in range(2))
    for s in (a, b):
        assert s["rc"] == 0 and s["world"] == 2 and s["backend"] == "gloo" and s["epochs"] == 1
        assert s["renderer"] == "GANRenderer" and s["mixer"]["renderer"] == "gan-full"
        assert s["replaced_total"] == 2 and [sum(x["replaced"]) for x in s["steps"]] == [1, 1]
        assert s["group_left_initialised"] is False
    assert a["mixer_seed"] != b["mixer_seed"]
    assert [x["keypoints"] for x in a["steps"]] != [x["keypoints"] for x in b["steps"]]
    assert (tmp_path / "run" / "checkpoints" / "latest.json").exists()
