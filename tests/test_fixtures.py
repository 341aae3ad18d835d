"""The real fixtures in ../shared/fixtures load, and their labels survive resize and augmentation."""
import numpy as np
import pytest

from posesynth.datasets.formats import BlazePoseVideoDataset, MpiiDataset, open_dataset
from posesynth.datasets.layouts import COCO17, DRIVER9
from posesynth.datasets.posemaps import from_grid, render_heatmaps
from posesynth.datasets.torch_dataset import PoseMapDataset
from posesynth.datasets.transforms import Compose, Photometric, RandomAffine, Resize


def _peaks_on_keypoints(sample, out_size, stride):
    """Every labelled keypoint's heatmap has its maximum within a grid cell of it."""
    h, w = sample.image.shape[:2]
    grid = (h // stride, w // stride)
    checked = 0
    for p in range(sample.num_people):
        hm = render_heatmaps(sample.keypoints[p:p + 1], (h, w), grid, sigma=6.0)
        for j in np.nonzero(sample.keypoints[p, :, 2] > 0)[0]:
            y, x = np.unravel_index(hm[j].argmax(), hm[j].shape)
            back = from_grid(np.array([x, y], np.float32), (h, w), grid)
            assert np.abs(back - sample.keypoints[p, j, :2]).max() <= stride / 2 + 1e-3
            checked += 1
    return checked


def test_coco_fixture_loads(fixtures):
    ds = open_dataset(fixtures / "coco" / "test_coco.json")
    assert ds.layout == COCO17 and len(ds) == 4
    total = sum(s.num_people for s in ds)
    assert total == 14
    s = ds[0]
    assert s.image.dtype == np.uint8 and s.image.shape[2] == 3 and s.keypoints.shape[1:] == (17, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_heatmap_peaks_after_resize_and_augmentation(fixtures, seed):
    ds = open_dataset(fixtures / "coco" / "test_coco.json", layout="driver9")
    rng = np.random.default_rng(seed)
    aug = Compose([RandomAffine((256, 256), scale=(0.7, 1.3), rotate=30, translate=0.1, flip_prob=0.5,
                                layout=DRIVER9), Photometric()])
    checked = 0
    for s in ds:
        out = aug(Resize((384, 384))(s), rng)
        checked += _peaks_on_keypoints(out, (256, 256), 4)
    assert checked > 30


def test_augmented_keypoints_follow_the_image(fixtures):
    """A keypoint's image patch moves with it: compare the warped image at the warped keypoint."""
    ds = open_dataset(fixtures / "coco" / "test_coco.json")
    s = ds[1]
    aug = RandomAffine((300, 300), scale=(1.0, 1.0), aspect=(1.0, 1.0), rotate=0, translate=0.0,
                       flip_prob=1.0, layout=COCO17)
    out = aug(s, np.random.default_rng(0))
    for p in range(s.num_people):
        for j in np.nonzero(s.keypoints[p, :, 2] > 0)[0]:
            x, y = s.keypoints[p, j, :2]
            fj = COCO17.flip_index[j]
            ex = (s.width - 1 - x + 0.5) * 300 / s.width - 0.5
            ey = (y + 0.5) * 300 / s.height - 0.5
            if out.keypoints[p, fj, 2] > 0:
                np.testing.assert_allclose(out.keypoints[p, fj, :2], [ex, ey], atol=1e-3)


def test_mpii_fixture(fixtures):
    ds = open_dataset(fixtures / "mpii" / "test_mpii.json", layout="driver9")
    assert isinstance(ds, MpiiDataset) and len(ds) == 5
    for s in ds:
        assert s.keypoints.shape[1:] == (9, 3)
        assert _peaks_on_keypoints(Resize((256, 256))(s), (256, 256), 4) > 0
    raw = open_dataset(fixtures / "mpii" / "test_mpii.json")
    s = raw[[n for n, _ in raw.items].index("005808361.jpg")]
    # MPII joint 12 (right shoulder) is (902, 253) in the fixture
    assert s.keypoints[0, COCO17.index("right_shoulder")].tolist() == [902, 253, 2]
    assert s.keypoints[0, COCO17.index("nose"), 2] == 0  # MPII has no nose


def test_squats_video_fixture(fixtures):
    ds = open_dataset(fixtures / "squats" / "pose_squats.full.json", layout="driver9")
    assert isinstance(ds, BlazePoseVideoDataset) and len(ds) == 65
    s = ds[10]
    assert s.image.shape == (1280, 720, 3)
    assert s.keypoints.shape == (1, 9, 3) and (s.keypoints[0, :, 2] == 2).all()
    # the neck is the shoulders' midpoint; shoulders are on the person's body (not background)
    ls, rs = s.keypoints[0, DRIVER9.index("left_shoulder"), :2], s.keypoints[0, DRIVER9.index("right_shoulder"), :2]
    np.testing.assert_allclose(s.keypoints[0, DRIVER9.index("neck"), :2], (ls + rs) / 2, atol=1e-3)
    assert ls[0] > rs[0]  # facing the camera: her left shoulder is on the image's right
    assert _peaks_on_keypoints(Resize((384, 224))(s), (384, 224), 4) == 9


def test_torch_dataset_on_fixture(fixtures):
    ds = open_dataset(fixtures / "coco" / "test_coco.json", layout="driver9")
    tds = PoseMapDataset(ds, size=(128, 128), transform=RandomAffine(layout=DRIVER9))
    item = tds[0]
    assert item["image"].shape == (3, 128, 128) and -1 <= item["image"].min() and item["image"].max() <= 1
    assert item["heatmaps"].shape == (9, 32, 32) and item["pafs"].shape == (16, 32, 32)
    assert item["maps"].shape == (26, 128, 128) and item["masks"].shape == (1, 128, 128)
    again = tds[0]
    assert (again["image"] == item["image"]).all()  # reproducible augmentation
