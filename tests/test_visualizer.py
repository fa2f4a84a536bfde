import numpy as np
import pytest

from detforge.utils.visualizer import draw_instances, palette


def test_palette_distinct_and_deterministic():
    p = palette(20)
    assert len(set(p)) == 20 and p == palette(20)


def test_draw_instances_marks_boxes_masks_and_keypoints():
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 20, 40, 50]])
    masks = np.zeros((1, 60, 80), dtype=bool)
    masks[0, 25:45, 15:35] = True
    kps = np.array([[[60.0, 10.0, 2], [70.0, 30.0, 2], [5.0, 5.0, 0]]])
    out = draw_instances(
        img, boxes, [1], class_names=["a", "b"], scores=[0.9], masks=masks,
        keypoints=kps, skeleton=[(0, 1)],
    )  # fmt: skip
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[50, 25].any()  # bottom edge of the box
    assert out[35, 25].any()  # mask tint inside
    assert out[10, 60].any() and out[20, 65].any()  # keypoint and skeleton line
    assert not out[5, 5].any()  # unlabelled keypoint not drawn
    assert not img.any()  # input untouched


def test_draw_instances_errors():
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(np.zeros((4, 4, 3)), np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_instances(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 4)), [0])
