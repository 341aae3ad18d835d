"""``posesynth motion-metrics``: what a motion run's generator and critic are worth.

On windows of ``past + future`` frames from a sequence dataset (best a held-out one):

- **bone-length error** of generated futures: the mean absolute deviation of each bone
  from the person's own (their last past pose), in % of the bone; and of the real futures,
  for reference (0 for rigid synthetic bones; foreshortening in real video);
- **conditioning**: the distance from the last past pose to the first future pose, in torso
  lengths (mean over joints);
- **angle-histogram distance** between generated and real futures (total variation of
  10-degree histograms of each arm's shoulder angle and elbow flexion, averaged);
- the **critic**'s AUC for real against time-shuffled sequences (frames permuted within the
  window) and against generated ones, and the quality discriminator's mean probability;
- for single poses of the data (``draws`` perturbations each), the **critic-rated
  plausibility** of each perturbation mode (arms-slight, arms-high, arms-angle, learned; the
  learned sampler under the same joint limits as the others when :mod:`..perturb` offers
  ``plausible_arms``): the share rated plausible, the angle coverage (15-degree cells of
  shoulder angle x elbow flexion hit by all arms, and per arm by its draws), the mean change
  of the arm angles and the arm bone-length error;
- the critic on clearly implausible poses (bones scaled, elbows bent backwards, arms
  across the body, joint jitter): the AUC of real poses against them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...datasets.sequences import load_sequences
from ...errors import PosesynthError
from ...io import atomic_write_json
from ..perturb import PerturbConfig, perturb_keypoints
from .data import JointMap, arm_joints, bones_of, make_windows
from .metrics import angle_coverage, angle_histogram_distance, auc, bone_length_error, joint_angles
from .sampler import LearnedArmSampler, PlausibilityCritic, _load

__all__ = ["evaluate_motion", "PERTURB_MODES"]

PERTURB_MODES = ("arms-slight", "arms-high", "arms-angle", "learned")


def _arm_bones(layout) -> np.ndarray:
    arms = arm_joints(layout)
    return np.asarray([[s, e] for _, s, e, _ in arms] + [[e, w] for _, _, e, w in arms], np.int64).reshape(-1, 2)


@torch.no_grad()
def evaluate_motion(run_dir: "str | Path", data: "str | Path", num: int = 500, seed: int = 0,
                    device: str = "cpu", horizon: "int | None" = None, out: "str | Path | None" = None,
                    progress: bool = True, draws: int = 8) -> dict[str, Any]:
    """Measure a motion run on ``data`` (see the module docstring); writes the results as
    JSON to ``out`` (default ``RUN/motion_metrics.json``) and returns them."""
    run = _load(run_dir, device)
    c, lay = run.cfg, run.layout
    seqs, layout = load_sequences(data, c.layout or None)
    jmap = JointMap(lay, layout)
    rng = np.random.default_rng(seed)
    win = make_windows(seqs, jmap, run.length)
    if len(win) == 0:
        raise PosesynthError(f"{data}: no window of {run.length} frames with every joint of '{lay.name}' labelled")
    pick = rng.choice(len(win), min(num, len(win)), replace=False)
    xy = win.xy[pick]
    x, _, _ = run.norm.normalise(xy, xy[:, c.past - 1])
    past, real_f = x[:, :c.past], x[:, c.past:]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(x), c.z_dim, generator=g).to(run.device)
    gen_f = run.G(torch.as_tensor(past, device=run.device), c.future, z).cpu().numpy()
    own = past[:, -1]
    bones, arm_b = bones_of(lay), _arm_bones(lay)
    res: dict[str, Any] = {"run": str(run_dir), "data": str(data), "windows": int(len(x)), "layout": lay.name}
    res["bone_error_pct"] = {"generated": bone_length_error(gen_f, own, bones),
                             "generated_arms": bone_length_error(gen_f, own, arm_b) if len(arm_b) else None,
                             "real": bone_length_error(real_f, own, bones)}
    res["first_step_torso"] = {"generated": float(np.linalg.norm(gen_f[:, 0] - own, axis=-1).mean()),
                               "real": float(np.linalg.norm(real_f[:, 0] - own, axis=-1).mean())}
    if arm_joints(lay):
        ang_real, ang_gen = joint_angles(real_f, lay), joint_angles(gen_f, lay)
        ang_still = joint_angles(np.repeat(own[:, None], c.future, 1), lay)
        res["angle_hist_distance"] = {"generated_vs_real": angle_histogram_distance(ang_gen, ang_real),
                                      "still_vs_real": angle_histogram_distance(ang_still, ang_real)}
    # the critic on sequences: real vs time-shuffled vs generated
    real_seq = torch.as_tensor(x, device=run.device)
    perm = np.argsort(rng.random(x.shape[:2]), axis=1)
    shuffled = torch.as_tensor(np.take_along_axis(x, perm[:, :, None, None], 1), device=run.device)
    gen_seq = torch.as_tensor(np.concatenate([past, gen_f], 1), device=run.device)
    s_real, s_shuf, s_gen = (run.C(s).cpu().numpy() for s in (real_seq, shuffled, gen_seq))
    res["critic_auc"] = {"real_vs_shuffled": auc(s_real, s_shuf), "real_vs_generated": auc(s_real, s_gen)}
    res["quality"] = {"real": float(torch.sigmoid(run.Q(real_seq)).mean()),
                      "generated": float(torch.sigmoid(run.Q(gen_seq)).mean()),
                      "shuffled": float(torch.sigmoid(run.Q(shuffled)).mean())}
    # single poses of the data, perturbed by each mode and judged by the critic
    if arm_joints(lay) and arm_joints(layout):
        res["perturbations"] = _perturbation_table(run_dir, device, seqs, layout, jmap, min(num, 200), seed, horizon,
                                                   draws)
    out = Path(out) if out else Path(run_dir) / "motion_metrics.json"
    atomic_write_json(out, res, indent=1)
    if progress:
        print(format_results(res))
        print(f"written to {out}")
    return res


def _rot(v: np.ndarray, deg: "np.ndarray | float") -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


IMPLAUSIBLE = {   # corruption -> whether the critic's anatomical negatives (NDA) include its kind
    "forearm x1.3": True, "forearm x0.7": True, "elbow backwards 60deg": True,
    "arm across the body (abduction -70deg)": False, "joint jitter 10% torso": False}


def implausible_poses(kp: np.ndarray, layout, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Clearly implausible versions of poses ``(N, J, 3)`` (model layout, pixels), both arms
    changed: see :data:`IMPLAUSIBLE` for the kinds."""
    out = np.array(kp, np.float64, copy=True)
    xy = out[..., :2]
    names = layout.keypoints
    top = xy[:, names.index("neck")] if "neck" in names else \
        xy[:, [names.index("left_shoulder"), names.index("right_shoulder")]].mean(1)
    down = xy[:, [names.index("left_hip"), names.index("right_hip")]].mean(1) - top
    torso = np.linalg.norm(down, axis=-1)
    down = down / np.maximum(torso, 1e-9)[:, None]
    if kind == "joint jitter 10% torso":
        xy += rng.normal(size=xy.shape) * 0.1 * torso[:, None, None]
        return out
    for sign, s, e, w in arm_joints(layout):
        up, fore = xy[:, e] - xy[:, s], xy[:, w] - xy[:, e]
        lu, lf = np.linalg.norm(up, axis=-1)[:, None], np.linalg.norm(fore, axis=-1)[:, None]
        if kind.startswith("forearm x"):
            xy[:, w] = xy[:, e] + fore * float(kind.split("x")[1])
        elif kind == "elbow backwards 60deg":
            xy[:, w] = xy[:, e] + _rot(up / lu, -sign * 60.0) * lf
        elif kind.startswith("arm across"):
            d_up = _rot(down, -sign * -70.0)                    # abduction -70: across the body
            flex = np.degrees(np.arctan2(up[:, 0] * fore[:, 1] - up[:, 1] * fore[:, 0], (up * fore).sum(-1)))
            xy[:, e] = xy[:, s] + d_up * lu
            xy[:, w] = xy[:, e] + _rot(d_up, flex) * lf
        else:
            raise ValueError(kind)
    return out


def _joint_limits(layout):
    """The perturbation modes' joint-limit check as an ``accept`` hook for the learned sampler
    (so every mode keeps the same limits), when :mod:`..perturb` provides one."""
    try:
        from ..perturb import arm_indices, plausible_arms
    except ImportError:
        return None
    chains = [tuple(a) for a in arm_indices(layout)]

    def accept(cands: np.ndarray, arm: tuple[int, int, int]) -> np.ndarray:
        return plausible_arms(cands, layout)[:, chains.index(tuple(arm))]

    return accept


def _perturbation_table(run_dir, device, seqs, layout, jmap, num, seed, horizon, draws) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 1])
    cands = [(i, t) for i, s in enumerate(seqs) for t in np.flatnonzero((jmap(s.keypoints)[..., 2] > 0).all(-1))]
    pick = rng.choice(len(cands), min(num, len(cands)), replace=False)
    src = np.stack([seqs[cands[k][0]].keypoints[cands[k][1]] for k in pick])        # (N, K, 3)
    sizes = [seqs[cands[k][0]].size for k in pick]
    critic = PlausibilityCritic(run_dir, device)
    sampler = LearnedArmSampler(run_dir, device, horizon=horizon)
    accept = _joint_limits(layout)
    lay = critic.layout
    arm_b = _arm_bones(lay)
    src_m = jmap(src)[..., :2]
    ang_src = joint_angles(src_m, lay)
    table: dict[str, Any] = {"poses": int(len(src)), "draws": draws, "threshold": critic.threshold}
    s_real = critic.score(jmap(src))
    table["implausible"] = {}
    for kind, in_nda in IMPLAUSIBLE.items():
        bad = implausible_poses(jmap(src), lay, kind, np.random.default_rng([seed, 3]))
        s_bad = critic.score(bad)
        table["implausible"][kind] = {"auc_real_vs_it": auc(s_real, s_bad),
                                      "plausible": float((s_bad >= critic.threshold).mean()), "kind_in_nda": in_nda}
    for mi, mode in enumerate(("real",) + PERTURB_MODES):
        prng = np.random.default_rng([seed, 2, mi])
        if mode == "real":
            pert = np.repeat(src[:, None], draws, 1)
        elif mode == "learned":
            pert = np.stack([[sampler.perturb(k[None], layout, sz, prng, accept)[0] for _ in range(draws)]
                             for k, sz in zip(src, sizes)])
        else:
            pert = np.stack([[perturb_keypoints(k[None], layout, sz, prng, PerturbConfig(mode))[0]
                              for _ in range(draws)] for k, sz in zip(src, sizes)])
        flat = pert.reshape(-1, *pert.shape[2:])                                   # (N * draws, K, 3)
        pm = jmap(pert)[..., :2]                                                   # (N, draws, J, 2)
        ang = joint_angles(pm, lay)                                                # (N, draws, A, 2)
        d = np.abs((ang - ang_src[:, None] + 180.0) % 360.0 - 180.0)
        per_pose = [angle_coverage(ang[i, :, a]) for i in range(len(src)) for a in range(ang.shape[2])]
        table[mode] = {"plausible": float(critic.plausible(flat, layout).mean()),
                       "score_mean": float(np.nanmean(critic.score(flat, layout))),
                       "moved": float((np.abs(pert[..., :2] - src[:, None, ..., :2]).max((2, 3)) > 1e-3).mean()),
                       "angle_coverage_cells": angle_coverage(ang),
                       "cells_per_arm": float(np.mean(per_pose)),
                       "mean_angle_change_deg": float(d.mean()),
                       "arm_bone_error_pct": bone_length_error(pm.reshape(-1, *pm.shape[2:]),
                                                               np.repeat(src_m, draws, 0), arm_b)}
    return table


def format_results(res: dict[str, Any]) -> str:
    """The results of :func:`evaluate_motion` as a readable table."""
    b, f = res["bone_error_pct"], res["first_step_torso"]
    lines = [f"motion run {res['run']} on {res['data']} ({res['windows']} windows, layout {res['layout']})",
             f"  bone-length error of generated futures: {b['generated']:.2f}% (arms {b['generated_arms'] or 0:.2f}%); "
             f"real futures: {b['real']:.2f}%",
             f"  first future step from the last past pose: generated {f['generated']:.4f}, real {f['real']:.4f} torso"]
    if "angle_hist_distance" in res:
        a = res["angle_hist_distance"]
        lines.append(f"  joint-angle histogram distance (TV): generated vs real {a['generated_vs_real']:.3f} "
                     f"(standing still vs real {a['still_vs_real']:.3f})")
    ca, q = res["critic_auc"], res["quality"]
    lines.append(f"  critic AUC: real vs time-shuffled {ca['real_vs_shuffled']:.3f}, real vs generated "
                 f"{ca['real_vs_generated']:.3f}; quality D: real {q['real']:.2f}, generated {q['generated']:.2f}, "
                 f"shuffled {q['shuffled']:.2f}")
    if "perturbations" in res:
        t = res["perturbations"]
        lines.append(f"  perturbations: {t['draws']} draws for each of {t['poses']} poses (critic threshold "
                     f"{t['threshold']:.4g}); coverage: 15-degree (shoulder, elbow) cells hit, all arms pooled and "
                     "per arm")
        lines.append(f"    {'mode':<12} {'plausible':>9} {'cells':>6} {'per arm':>7} {'angle chg':>9} {'arm bone err':>12} "
                     f"{'moved':>6}")
        for mode in ("real",) + PERTURB_MODES:
            r = t[mode]
            lines.append(f"    {mode:<12} {r['plausible']:>9.3f} {r['angle_coverage_cells']:>6d} {r['cells_per_arm']:>7.2f} "
                         f"{r['mean_angle_change_deg']:>8.1f}° {r['arm_bone_error_pct']:>11.2f}% {r['moved']:>6.2f}")
        lines.append("  the critic on clearly implausible poses (AUC of real against them; share rated plausible):")
        for kind, r in t["implausible"].items():
            lines.append(f"    {kind:<40} AUC {r['auc_real_vs_it']:.3f}  plausible {r['plausible']:.3f}"
                         + ("" if r["kind_in_nda"] else "  (kind not among the critic's negatives)"))
    return "\n".join(lines)
