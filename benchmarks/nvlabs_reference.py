"""A faithful re-implementation of NVlabs SPADE's generator and discriminator structure
(``SPADE``, ``SPADEResnetBlock``, ``SPADEGenerator`` without VAE, ``NLayerDiscriminator``,
``MultiscaleDiscriminator``) with their module names, ``torch.nn.utils.spectral_norm`` hooks,
separate gamma/beta convolutions and per-layer map resizing.

Used by the tests to prove that ``posesynth.spade`` is the same network layer for layer
(NVlabs weights load through ``convert_nvlabs_state_dict`` and give the same output), and
by the benchmark as the baseline run on the same machine in the same session.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.nn.utils import spectral_norm


class RefSPADE(nn.Module):
    def __init__(self, norm_nc, label_nc, norm="instance"):
        super().__init__()
        self.param_free_norm = (nn.InstanceNorm2d(norm_nc, affine=False) if norm == "instance"
                                else nn.BatchNorm2d(norm_nc, affine=False))
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, 128, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(128, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(128, norm_nc, 3, padding=1)

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class RefSPADEResnetBlock(nn.Module):
    def __init__(self, fin, fout, label_nc, norm="instance"):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = RefSPADE(fin, label_nc, norm)
        self.norm_1 = RefSPADE(fmiddle, label_nc, norm)
        if self.learned_shortcut:
            self.norm_s = RefSPADE(fin, label_nc, norm)

    def forward(self, x, seg):
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 2e-1))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 2e-1))
        return x_s + dx


class RefSPADEGenerator(nn.Module):
    def __init__(self, label_nc=26, size=128, ngf=64, norm="instance"):
        super().__init__()
        nf = ngf
        self.sw = self.sh = size // 2 ** 5
        self.fc = nn.Conv2d(label_nc, 16 * nf, 3, padding=1)
        self.head_0 = RefSPADEResnetBlock(16 * nf, 16 * nf, label_nc, norm)
        self.G_middle_0 = RefSPADEResnetBlock(16 * nf, 16 * nf, label_nc, norm)
        self.G_middle_1 = RefSPADEResnetBlock(16 * nf, 16 * nf, label_nc, norm)
        self.up_0 = RefSPADEResnetBlock(16 * nf, 8 * nf, label_nc, norm)
        self.up_1 = RefSPADEResnetBlock(8 * nf, 4 * nf, label_nc, norm)
        self.up_2 = RefSPADEResnetBlock(4 * nf, 2 * nf, label_nc, norm)
        self.up_3 = RefSPADEResnetBlock(2 * nf, 1 * nf, label_nc, norm)
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, seg):
        x = F.interpolate(seg, size=(self.sh, self.sw))
        x = self.fc(x)
        x = self.head_0(x, seg)
        x = self.up(x)
        x = self.G_middle_0(x, seg)
        x = self.G_middle_1(x, seg)
        for blk in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = self.up(x)
            x = blk(x, seg)
        x = self.conv_img(F.leaky_relu(x, 2e-1))
        return torch.tanh(x)


class RefNLayerDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, n_layers_D=4):
        super().__init__()
        kw, padw = 4, 2
        nf = ndf
        sequence = [[nn.Conv2d(input_nc, nf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, False)]]
        for n in range(1, n_layers_D):
            nf_prev = nf
            nf = min(nf * 2, 512)
            stride = 1 if n == n_layers_D - 1 else 2
            conv = spectral_norm(nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=stride, padding=padw))
            delattr(conv, "bias")
            conv.register_parameter("bias", None)
            sequence += [[conv, nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2, False)]]
        sequence += [[nn.Conv2d(nf, 1, kernel_size=kw, stride=1, padding=padw)]]
        for n in range(len(sequence)):
            self.add_module("model" + str(n), nn.Sequential(*sequence[n]))

    def forward(self, x):
        results = [x]
        for submodel in self.children():
            results.append(submodel(results[-1]))
        return results[1:]


class RefMultiscaleDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, n_layers_D=4, num_D=2):
        super().__init__()
        for i in range(num_D):
            self.add_module("discriminator_%d" % i, RefNLayerDiscriminator(input_nc, ndf, n_layers_D))

    def forward(self, x):
        result = []
        for D in self.children():
            result.append(D(x))
            x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=[1, 1], count_include_pad=False)
        return result


def reference_train_step(G, D, opt_g, opt_d, maps, real, lambda_feat=10.0):
    """NVlabs Pix2PixTrainer: a G step (hinge + feature matching), then a D step that
    regenerates the fake under no_grad."""
    def disc(fake):
        fake_and_real = torch.cat([torch.cat([maps, fake], 1), torch.cat([maps, real], 1)], 0)
        pred = D(fake_and_real)
        n = fake.shape[0]
        return [[p[:n] for p in s] for s in pred], [[p[n:] for p in s] for s in pred]

    opt_g.zero_grad()
    fake = G(maps)
    pf, pr = disc(fake)
    g_gan = sum(-s[-1].mean() for s in pf) / len(pf)
    g_feat = sum(F.l1_loss(a, b.detach()) for sf, sr in zip(pf, pr) for a, b in zip(sf[:-1], sr[:-1])) * lambda_feat / len(pf)
    (g_gan + g_feat).backward()
    opt_g.step()
    opt_d.zero_grad()
    with torch.no_grad():
        fake = G(maps).detach()
    pf, pr = disc(fake)
    d = sum(F.relu(1 + s[-1]).mean() for s in pf) / len(pf) + sum(F.relu(1 - s[-1]).mean() for s in pr) / len(pr)
    d.backward()
    opt_d.step()
    return float(g_gan + g_feat), float(d)
