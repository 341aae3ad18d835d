import numpy as np
import pytest

from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.posemaps import (PoseMapSpec, from_grid, render_heatmaps, render_pafs,
                                         render_pose_maps, to_grid)


def reference_heatmaps(kp, in_size, out_size, sigma):
    """Straight from the definition, over the whole grid (no windows)."""
    h, w = out_size
    sx, sy = sigma * w / in_size[1], sigma * h / in_size[0]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((kp.shape[1], h, w))
    for p in range(kp.shape[0]):
        for j in range(kp.shape[1]):
            if kp[p, j, 2] <= 0:
                continue
            cx, cy = to_grid(kp[p, j, :2], in_size, out_size)
            g = np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
            g[np.abs(xs - cx) > np.ceil(3 * sx) + 1] = 0
            g[np.abs(ys - cy) > np.ceil(3 * sy) + 1] = 0
            out[j] = np.maximum(out[j], g)
    return out


def one_person(rng, size=384):
    kp = np.zeros((1, 9, 3), np.float32)
    kp[0, :, :2] = rng.uniform(40, size - 40, (9, 2))
    kp[0, :, 2] = 2
    return kp


def test_heatmap_peak_and_reference(rng):
    kp = one_person(rng)
    kp[0, 4, 2] = 0  # invisible: no peak
    hm = render_heatmaps(kp, (384, 384), (96, 96), sigma=7.0)
    assert hm.shape == (9, 96, 96) and hm.dtype == np.float32
    assert hm[4].max() == 0
    ref = reference_heatmaps(kp, (384, 384), (96, 96), 7.0)
    inside = ref > 1e-3  # the window cuts the far tail only
    np.testing.assert_allclose(hm[inside], ref[inside], atol=1e-5)
    for j in [0, 1, 2, 3, 5, 6, 7, 8]:
        y, x = np.unravel_index(hm[j].argmax(), hm[j].shape)
        back = from_grid(np.array([x, y]), (384, 384), (96, 96))
        assert np.abs(back - kp[0, j, :2]).max() <= 384 / 96 / 2 + 1e-4


def test_heatmap_sigma_scales_with_grid():
    kp = np.array([[[191.5, 191.5, 2]]], np.float32)
    big = render_heatmaps(kp, (384, 384), (384, 384), sigma=8.0)[0]
    small = render_heatmaps(kp, (384, 384), (96, 96), sigma=8.0)[0]
    # sigma in input pixels: at 1/4 resolution the half-maximum width is 1/4 as many pixels
    fw_big = (big[191] > 0.5).sum()
    fw_small = (small[47] > 0.5).sum() + (small[48] > 0.5).sum()
    assert fw_big == pytest.approx(2 * 8 * np.sqrt(2 * np.log(2)), abs=1.5)
    assert fw_small / 2 == pytest.approx(fw_big / 4, abs=1)


def test_heatmaps_max_over_people():
    kp = np.array([[[40, 40, 2]], [[44, 40, 2]]], np.float32)
    hm = render_heatmaps(kp, (96, 96), (96, 96), sigma=3.0)[0]
    assert hm.max() == pytest.approx(1.0) and hm[40, 40] == pytest.approx(1.0) and hm[40, 44] == pytest.approx(1.0)


def test_paf_unit_along_limb_zero_away():
    kp = np.zeros((1, 2, 3), np.float32)
    kp[0, 0] = [100, 200, 2]
    kp[0, 1] = [300, 100, 2]
    paf = render_pafs(kp, [(0, 1)], (384, 384), (384, 384), width=6.0)
    mag = np.hypot(paf[0], paf[1])
    u = np.array([200, -100]) / np.hypot(200, -100)
    # on the limb's axis: unit vectors pointing from a to b
    for t in np.linspace(0.05, 0.95, 10):
        x, y = np.round(kp[0, 0, :2] + t * (kp[0, 1, :2] - kp[0, 0, :2])).astype(int)
        np.testing.assert_allclose(paf[:, y, x], u, atol=1e-6)
    assert set(np.unique(np.round(mag, 5))) <= {0.0, 1.0}
    # a pixel 20 px from the axis (beyond width 6) and one beyond the segment's end are zero
    n = np.array([u[1], -u[0]])
    x, y = np.round(np.array([200, 150]) + 20 * n).astype(int)
    assert mag[y, x] == 0
    x, y = np.round(kp[0, 1, :2] + 15 * u).astype(int)
    assert mag[y, x] == 0
    # band width: every pixel within 5 px of the axis mid-limb is set, none beyond 7
    for d in (-5, 0, 5):
        x, y = np.round(np.array([200, 150]) + d * n).astype(int)
        assert mag[y, x] == pytest.approx(1)
    for d in (-8, 8):
        x, y = np.round(np.array([200, 150]) + d * n).astype(int)
        assert mag[y, x] == 0


def test_paf_same_band_at_384_and_96():
    """The width is in input pixels: the band covers the same image region at both grids."""
    kp = np.array([[[50, 60, 2], [330, 300, 2]]], np.float32)
    big = np.hypot(*render_pafs(kp, [(0, 1)], (384, 384), (384, 384), width=8.0)) > 0
    small = np.hypot(*render_pafs(kp, [(0, 1)], (384, 384), (96, 96), width=8.0)) > 0
    # fraction of the image covered is the same (within the grid's quantisation)
    assert small.mean() == pytest.approx(big.mean(), rel=0.1)
    # and each 96-grid pixel is set iff the 384 pixel at its centre is
    ys, xs = np.mgrid[0:96, 0:96]
    centre = np.round(from_grid(np.stack([xs, ys], -1), (384, 384), (96, 96))).astype(int)
    agree = big[centre[..., 1].clip(0, 383), centre[..., 0].clip(0, 383)] == small
    assert agree.mean() > 0.98


def test_paf_invisible_end_draws_nothing_and_overlap_averages():
    kp = np.array([[[10, 50, 2], [90, 50, 0]]], np.float32)
    assert np.abs(render_pafs(kp, [(0, 1)], (100, 100), (100, 100), 5)).max() == 0
    two = np.array([[[10, 50, 2], [90, 50, 2]], [[10, 52, 2], [90, 52, 2]]], np.float32)  # same direction
    paf = render_pafs(two, [(0, 1)], (100, 100), (100, 100), 5)
    np.testing.assert_allclose(paf[:, 51, 50], [1, 0], atol=1e-6)  # average of equal unit vectors
    opp = np.array([[[10, 50, 2], [90, 50, 2]], [[90, 50, 2], [10, 50, 2]]], np.float32)
    paf = render_pafs(opp, [(0, 1)], (100, 100), (100, 100), 5)
    np.testing.assert_allclose(paf[:, 50, 50], [0, 0], atol=1e-6)  # opposite vectors cancel


def test_pose_maps_channels(rng):
    kp = one_person(rng)
    masks = np.zeros((1, 384, 384), np.uint8)
    masks[0, 100:200, 100:140] = 1
    maps = render_pose_maps(kp, DRIVER9, (384, 384), (96, 96), masks, PoseMapSpec())
    assert maps.shape == (26, 96, 96)
    np.testing.assert_allclose(maps[25, 25:50, 25:35], 1.0)
    assert maps[25].sum() == pytest.approx(masks.sum() / 16, rel=1e-5)
