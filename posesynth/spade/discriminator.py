"""Multi-scale PatchGAN discriminator (NVlabs SPADE's ``MultiscaleDiscriminator`` with
``NLayerDiscriminator``, ``norm_D = spectralinstance``).

Each scale: a 4x4 stride-2 conv (no norm) + leaky ReLU; ``n_layers - 1`` 4x4 convs with
spectral norm and parameter-free instance norm (widths doubling to at most 512, stride 2
except the last, stride 1) + leaky ReLU; a final 4x4 conv to one channel.  Padding 2.
Scale ``i + 1`` sees the input average-pooled (3x3, stride 2, padding 1, no pad counting).
The input is pose maps and image concatenated: ``(B, label_nc + 3, H, W)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["NLayerDiscriminator", "MultiscaleDiscriminator", "discriminate"]


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4, spectral: bool = True) -> None:
        super().__init__()
        kw, pad = 4, 2
        nf = ndf
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(input_nc, nf, kw, 2, pad), nn.LeakyReLU(0.2))]
        for n in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            conv = nn.Conv2d(prev, nf, kw, 1 if n == n_layers - 1 else 2, pad, bias=False)
            layers.append(nn.Sequential(spectral_norm(conv) if spectral else conv,
                                        nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)))
        layers.append(nn.Sequential(nn.Conv2d(nf, 1, kw, 1, pad)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output; the last, ``(B, 1, h, w)``, is the patch score map."""
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs at successively halved resolutions; returns a list (per scale) of
    lists of features, the last of each being the score map."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4, num_d: int = 2, spectral: bool = True) -> None:
        super().__init__()
        self.scales = nn.ModuleList(NLayerDiscriminator(input_nc, ndf, n_layers, spectral) for _ in range(num_d))
        from .generator import init_weights

        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            out.append(d(x))
        return out


def discriminate(D: nn.Module, fake: torch.Tensor, real: torch.Tensor, targets_only: bool = False):
    """D's features of the fake and of the real inputs (``(B, C, H, W)`` each, as ``D`` takes
    them): two lists (per scale) of lists (per layer) of ``(B, c, h, w)``.

    Without ``targets_only`` (the discriminator's step) one call on both, as NVlabs does.  With
    it (the generator's step) the real features are only feature matching's targets: they are
    computed without a graph and with D in eval mode.  Spectral norm's power iteration runs in
    every training-mode call, so it runs once, in the fake's call, and the real images see the
    weights that call used: the features of one call on both, without the backward pass
    through the real half (about 6% of a full-frame 256x128 SPADE step at ngf 16 on a CPU)."""
    if not targets_only:
        n = fake.shape[0]
        preds = D(torch.cat([fake, real], 0))
        return [[f[:n] for f in s] for s in preds], [[f[n:] for f in s] for s in preds]
    pf = D(fake)
    was = D.training
    try:
        with torch.no_grad():
            pr = D.eval()(real)
    finally:
        D.train(was)
    return pf, pr
