"""HP-GAN's networks: a GRU sequence-to-sequence generator and temporal sequence critics.

All tensors hold normalised poses (see :mod:`.data`): ``(B, T, J, 2)`` float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MotionModelConfig", "MotionGenerator", "SequenceCritic"]


@dataclass
class MotionModelConfig:
    """Sizes of the networks (recorded in each checkpoint)."""

    joints: int
    length: int = 30          # frames the critics see: past + future
    hidden: int = 128
    z_dim: int = 16
    layers: int = 2
    critic_hidden: int = 256
    critic_layers: int = 3


class MotionGenerator(nn.Module):
    """Past poses + noise ``z`` -> future poses.

    A ``layers``-layer GRU encoder reads the past; the decoder is a ``layers``-layer GRU whose
    initial hidden state is the encoder's final state with ``z`` concatenated (width
    ``hidden + z_dim``, in every layer).  Starting from the last past pose, each decoder step
    reads the previous pose and adds a predicted displacement, so futures start from the
    conditioning pose.
    """

    def __init__(self, cfg: MotionModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = 2 * cfg.joints
        self.encoder = nn.GRU(d, cfg.hidden, cfg.layers, batch_first=True)
        self.decoder = nn.GRU(d, cfg.hidden + cfg.z_dim, cfg.layers, batch_first=True)
        self.out = nn.Linear(cfg.hidden + cfg.z_dim, d)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    def forward(self, past: torch.Tensor, steps: int, z: torch.Tensor) -> torch.Tensor:
        """``past (B, Tp, J, 2)``, ``z (B, z_dim)`` -> ``(B, steps, J, 2)``."""
        b, _, j, _ = past.shape
        _, h = self.encoder(past.reshape(b, -1, 2 * j))                  # (layers, B, H)
        h = torch.cat([h, z.unsqueeze(0).expand(h.shape[0], -1, -1)], -1).contiguous()
        x = past[:, -1].reshape(b, 2 * j)
        outs = []
        for _ in range(steps):
            o, h = self.decoder(x.unsqueeze(1), h)
            x = x + self.out(o[:, 0])
            outs.append(x)
        return torch.stack(outs, 1).reshape(b, steps, j, 2)


class SequenceCritic(nn.Module):
    """A whole sequence ``(B, length, J, 2)`` -> one score per sequence ``(B,)``.

    Fully connected, as HP-GAN's critic: every frame's pose and its displacement from the
    previous frame (0 for the first; times ``vel_scale``, set from the training data so
    displacements have unit RMS), flattened over the sequence, through ``critic_layers``
    hidden layers of width ``critic_hidden`` with LeakyReLU, then a linear head.  No
    normalisation layers, so it suits the WGAN-GP gradient penalty; the same network, with
    another loss, is the quality discriminator.
    """

    def __init__(self, cfg: MotionModelConfig) -> None:
        super().__init__()
        self.length = cfg.length
        dims = [4 * cfg.joints * cfg.length] + [cfg.critic_hidden] * cfg.critic_layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], 1))
        # displacements are ~10x smaller than positions: scaled to unit RMS on the training data
        self.register_buffer("vel_scale", torch.ones(()))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        b, t, j, _ = seq.shape
        if t != self.length:
            raise ValueError(f"the critic takes sequences of {self.length} frames, not {t}")
        x = seq.reshape(b, t, 2 * j)
        vel = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1) * self.vel_scale
        return self.net(torch.cat([x, vel], -1).reshape(b, -1))[:, 0]
