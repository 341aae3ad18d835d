import numpy as np
import pytest

from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.sample import Sample
from posesynth.datasets.transforms import (Compose, HorizontalFlip, Photometric, RandomAffine, Resize,
                                           affine_matrix, warp_sample)


@pytest.fixture
def sample(rng):
    img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    kp = np.zeros((2, 9, 3), np.float32)
    kp[..., 0] = rng.uniform(5, 154, (2, 9))
    kp[..., 1] = rng.uniform(5, 114, (2, 9))
    kp[..., 2] = 2
    kp[1, 3, 2] = 1
    masks = np.zeros((1, 120, 160), np.uint8)
    masks[0, 30:60, 40:50] = 1
    return Sample(img, kp, masks)


def test_flip_twice_is_identity(sample, rng):
    f = HorizontalFlip(DRIVER9)
    twice = f(f(sample, rng), rng)
    np.testing.assert_array_equal(twice.image, sample.image)
    np.testing.assert_array_equal(twice.masks, sample.masks)
    np.testing.assert_allclose(twice.keypoints, sample.keypoints, atol=1e-4)


def test_flipped_left_wrist_becomes_right_wrist(sample, rng):
    out = HorizontalFlip(DRIVER9)(sample, rng)
    lw, rw = DRIVER9.index("left_wrist"), DRIVER9.index("right_wrist")
    x, y = sample.keypoints[0, lw, :2]
    np.testing.assert_allclose(out.keypoints[0, rw, :2], [159 - x, y], atol=1e-4)
    # the image moved the same way: the mirrored pixel is the original pixel
    np.testing.assert_array_equal(out.image[:, 159 - 20], sample.image[:, 20])
    assert out.masks[0, 40, 159 - 45] == 1 and out.masks[0, 40, 45] == 0


def test_affine_moves_image_keypoints_masks_together(sample):
    # paint a bright dot at a keypoint and check it lands where the keypoint goes
    s = sample.copy()
    x, y = np.round(s.keypoints[0, 2, :2]).astype(int)
    s.keypoints[0, 2, :2] = [x, y]
    s.image[:] = 0
    s.image[y - 1:y + 2, x - 1:x + 2] = 255
    m = affine_matrix((120, 160), (96, 96), 1.1, 0.9, 20.0, (3.0, -2.0), flip=False)
    out = warp_sample(s, m, (96, 96), DRIVER9.flip_index)
    g = out.image[..., 0].astype(float)
    cy, cx = np.unravel_index(g.argmax(), g.shape)
    kx, ky = out.keypoints[0, 2, :2]
    assert abs(cx - kx) <= 1 and abs(cy - ky) <= 1


def test_out_of_frame_becomes_invisible_order_kept(sample, rng):
    s = sample.copy()
    s.keypoints[0, 0, :2] = [150, 60]  # near the right border
    m = affine_matrix((120, 160), (120, 160), shift=(30, 0))
    out = warp_sample(s, m, (120, 160), DRIVER9.flip_index)
    assert out.keypoints.shape == s.keypoints.shape
    assert out.keypoints[0, 0, 2] == 0
    np.testing.assert_allclose(out.keypoints[0, 0, :2], [180, 60], atol=1e-4)  # coordinates kept
    assert out.keypoints[1, 3, 2] == 1  # visibility preserved where still inside


def test_random_affine_reproducible_and_input_untouched(sample):
    before = sample.copy()
    t = Compose([RandomAffine((96, 128), layout=DRIVER9, flip_prob=0.5), Photometric()])
    a = t(sample, np.random.default_rng(5))
    b = t(sample, np.random.default_rng(5))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(sample.image, before.image)
    np.testing.assert_array_equal(sample.keypoints, before.keypoints)
    assert a.image.shape == (96, 128, 3) and a.masks.shape == (1, 96, 128)


def test_photometric_touches_image_only(sample, rng):
    out = Photometric()(sample, rng)
    np.testing.assert_array_equal(out.keypoints, sample.keypoints)
    np.testing.assert_array_equal(out.masks, sample.masks)
    assert out.image.shape == sample.image.shape


def test_separate_xy_scales(sample):
    m = affine_matrix((120, 160), (120, 160), scale_x=1.5, scale_y=0.5)
    out = warp_sample(sample, m, (120, 160))
    c = np.array([79.5, 59.5])
    d_in = sample.keypoints[0, :, :2] - c
    d_out = out.keypoints[0, :, :2] - c
    np.testing.assert_allclose(d_out, d_in * [1.5, 0.5], atol=1e-4)


def test_resize(sample):
    out = Resize((60, 80))(sample)
    np.testing.assert_allclose(out.keypoints[..., :2], (sample.keypoints[..., :2] + 0.5) * 0.5 - 0.5, atol=1e-4)
