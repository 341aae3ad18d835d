"""Run under ``torchrun --nproc_per_node=2`` by tests/test_distributed.py (gloo on CPU):
``posesynth train-posenet --gan RUN`` through the command line's own entry point, so the
process group is made and destroyed as a user's run does.  Each rank writes what its mixer
rendered to ``OUT/gan_rank{r}.json``.

Usage: ``ddp_gan_script.py DATA GAN OUT``
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import posesynth.posenet.trainer as trainer
from posesynth.cli import main as cli_main


def main(data: str, gan: str, out: Path) -> None:
    torch.set_num_threads(1)
    seen: dict = {}
    fit = trainer.PoseNetTrainer.fit

    def spy(self):   # the trainer the command builds, and every batch its mixer returns
        hook = self.batch_transform

        def watch(batch, step):
            b = hook(batch, step)
            seen.setdefault("steps", []).append({"step": step, "replaced": b["replaced"].tolist(),
                                                 "keypoints": b["keypoints"][b["replaced"]].tolist()})
            return b

        self.batch_transform = watch
        seen.update(rank=self.rank, world=self.world, backend=dist.get_backend(), mixer=hook.describe(),
                    renderer=type(hook.renderer).__name__, mixer_seed=hook.seed)
        result = fit(self)
        seen["epochs"] = self.epoch
        seen["replaced_total"] = hook.stats.replaced
        return result

    trainer.PoseNetTrainer.fit = spy
    rc = cli_main(["train-posenet", "--data", data, "--gan", gan, "--out", str(out / "run"), "--size", "64",
                   "--backbone", "pvt_v2_b0", "--pretrained", "none", "--heads", "small", "--batch-size", "2",
                   "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu", "--seed", "5"])
    seen["rc"] = rc
    seen["group_left_initialised"] = dist.is_initialized()
    (out / f"gan_rank{seen['rank']}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
