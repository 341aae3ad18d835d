import numpy as np
import pytest

from posesynth.datasets.convert import conversion_matrix, convert_keypoints
from posesynth.datasets.layouts import COCO17, DRIVER9, KeypointLayout, get_layout
from posesynth.errors import LayoutError


def test_driver9_table():
    assert DRIVER9.keypoints == ("right_wrist", "right_elbow", "right_shoulder", "neck", "left_shoulder",
                                 "left_elbow", "left_wrist", "right_hip", "left_hip")
    named = [(DRIVER9.keypoints[a], DRIVER9.keypoints[b]) for a, b in DRIVER9.limbs]
    assert named == [("neck", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
                     ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
                     ("neck", "right_hip"), ("neck", "left_hip")]
    assert DRIVER9.num_channels == 9 + 16 + 1 == 26
    assert DRIVER9.masks == ("seatbelt",)
    fi = DRIVER9.flip_index
    assert [DRIVER9.keypoints[i] for i in fi] == ["left_wrist", "left_elbow", "left_shoulder", "neck",
                                                  "right_shoulder", "right_elbow", "right_wrist", "left_hip",
                                                  "right_hip"]
    # COCO sigmas for the same joints; the neck takes the shoulders' mean
    assert DRIVER9.sigmas[DRIVER9.index("right_wrist")] == 0.062
    assert DRIVER9.sigmas[DRIVER9.index("neck")] == pytest.approx(0.079)
    assert DRIVER9.sigmas[DRIVER9.index("left_hip")] == 0.107


def test_coco17_table():
    assert COCO17.num_keypoints == 17 and COCO17.num_limbs == 19
    assert COCO17.keypoints[COCO17.flip_index[5]] == "right_shoulder"
    assert COCO17.flip_index[0] == 0  # nose stays
    assert COCO17.sigmas[0] == 0.026


def test_user_layout_yaml(tmp_path):
    p = tmp_path / "arm.yaml"
    p.write_text("name: arm3\nkeypoints: [shoulder, elbow, wrist]\nlimbs: [[shoulder, elbow], [1, 2]]\n"
                 "sigmas: [0.08, 0.07, 0.06]\nmasks: [glove]\n")
    lay = get_layout(str(p))
    assert lay.name == "arm3" and lay.limbs == ((0, 1), (1, 2)) and lay.num_channels == 3 + 4 + 1
    assert lay.flip_index.tolist() == [0, 1, 2]


@pytest.mark.parametrize("text,msg", [
    ("name: x\nkeypoints: [a, b]\nlimbs: [[a, c]]\n", "unknown keypoint 'c'"),
    ("name: x\nkeypoints: [a, b]\nsigmas: [0.1]\n", "1 sigmas for 2 keypoints"),
    ("name: x\nkeypoints: [a, a]\n", "unique"),
    ("keypoints: [a, b\n", "malformed YAML"),
])
def test_bad_layout_messages(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(LayoutError, match=msg):
        get_layout(str(p))


def test_unknown_layout():
    with pytest.raises(LayoutError, match="unknown layout 'foo'"):
        get_layout("foo")


def test_coco17_to_driver9_neck_is_shoulder_midpoint():
    kp = np.zeros((1, 17, 3), np.float32)
    for i in range(17):
        kp[0, i] = [10 * i, 5 * i, 2]
    kp[0, 5] = [100, 50, 2]   # left shoulder
    kp[0, 6] = [60, 54, 1]    # right shoulder, occluded
    out = convert_keypoints(kp, COCO17, DRIVER9)
    neck = out[0, DRIVER9.index("neck")]
    assert neck.tolist() == [80, 52, 1]          # midpoint; lowest visibility
    assert out[0, DRIVER9.index("right_wrist")].tolist() == kp[0, 10].tolist()
    assert out[0, DRIVER9.index("left_hip")].tolist() == kp[0, 11].tolist()
    kp[0, 6, 2] = 0                               # one shoulder unlabelled -> no neck
    assert convert_keypoints(kp, COCO17, DRIVER9)[0, DRIVER9.index("neck"), 2] == 0


def test_mpii_and_blazepose_tables():
    m = conversion_matrix("mpii16", "coco17")
    # MPII 12 = right shoulder -> COCO 6; MPII 15 = left wrist -> COCO 9; no nose in MPII
    assert m[6, 12] == 1 and m[9, 15] == 1 and m[0].sum() == 0
    b = conversion_matrix("blazepose33", "coco17")
    assert b[0, 0] == 1 and b[1, 2] == 1 and b[2, 5] == 1 and b[16, 28] == 1
    d = conversion_matrix("mpii16", "driver9")  # chained
    assert d[DRIVER9.index("neck"), 12] == 0.5 and d[DRIVER9.index("neck"), 13] == 0.5
    assert np.allclose(d.sum(1), 1)
    with pytest.raises(LayoutError, match="no conversion"):
        conversion_matrix("driver9", "coco17")


def test_layout_rejects_bad_pairs():
    with pytest.raises(LayoutError):
        KeypointLayout("x", ("a", "b"), ((0, 2),))
