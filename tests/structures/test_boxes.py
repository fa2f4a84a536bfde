import math

import pytest
import torch

from detforge.structures.boxes import (
    box_area,
    box_convert,
    box_ioa,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    nonempty_boxes,
    scale_boxes,
)


def _iou_oracle(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _random_boxes(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=dtype) * 100
    wh = torch.rand(n, 2, dtype=dtype) * 50
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh", "xyxy"])
def test_convert_round_trip(fmt):
    boxes = _random_boxes(20)
    there = box_convert(boxes, "xyxy", fmt)
    back = box_convert(there, fmt, "xyxy")
    torch.testing.assert_close(back, boxes)
    assert there is not boxes


def test_convert_known_values():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert box_convert(b, "xyxy", "xywh").tolist() == [[10, 20, 20, 40]]
    assert box_convert(b, "xyxy", "cxcywh").tolist() == [[20, 40, 20, 40]]
    assert box_convert(torch.tensor([[20.0, 40, 20, 40]]), "cxcywh", "xywh").tolist() == [
        [10, 20, 20, 40]
    ]


def test_convert_batched_shape_and_errors():
    b = torch.rand(2, 3, 4)
    assert box_convert(b, "xywh", "xyxy").shape == (2, 3, 4)
    with pytest.raises(ValueError, match="in_fmt"):
        box_convert(b, "xyz", "xyxy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        box_convert(torch.rand(3, 5), "xyxy", "xywh")
    with pytest.raises(TypeError, match="torch.Tensor"):
        box_convert([[0, 0, 1, 1]], "xyxy", "xywh")  # type: ignore[arg-type]


def test_area_clip_nonempty_scale():
    b = torch.tensor([[0.0, 0, 10, 5], [5, 5, 5, 9], [-10, -10, 20, 300]])
    assert box_area(b).tolist() == [50, 0, 30 * 310]
    clipped = clip_boxes(b, (100, 15))
    assert clipped.tolist() == [[0, 0, 10, 5], [5, 5, 5, 9], [0, 0, 15, 100]]
    assert nonempty_boxes(b).tolist() == [True, False, True]
    assert nonempty_boxes(b, min_size=6).tolist() == [False, False, True]
    assert scale_boxes(b[:1], 2.0, 0.5).tolist() == [[0, 0, 20, 2.5]]
    nan = torch.tensor([[math.nan, 0, 1, 1]])
    assert nonempty_boxes(nan).tolist() == [False]


def test_clip_box_outside_becomes_degenerate():
    b = torch.tensor([[200.0, 200, 300, 300]])
    out = clip_boxes(b, (100, 100))
    assert out.tolist() == [[100, 100, 100, 100]]
    assert not nonempty_boxes(out).any()


def test_iou_against_oracle():
    a, b = _random_boxes(7), _random_boxes(9)
    iou = box_iou(a, b)
    for i in range(7):
        for j in range(9):
            assert iou[i, j].item() == pytest.approx(_iou_oracle(a[i].tolist(), b[j].tolist()))


def test_iou_degenerate_and_empty():
    z = torch.tensor([[5.0, 5, 5, 5]])
    assert box_iou(z, z).tolist() == [[0.0]]
    assert box_iou(torch.zeros(0, 4), _random_boxes(3).float()).shape == (0, 3)
    assert box_ioa(z, torch.tensor([[0.0, 0, 10, 10]])).tolist() == [[0.0]]


def test_ioa_known():
    small = torch.tensor([[2.0, 2, 4, 4]])
    big = torch.tensor([[0.0, 0, 3, 10]])
    assert box_ioa(small, big).tolist() == [[0.5]]
    assert box_ioa(big, small).item() == pytest.approx(2 / 30)


def test_giou_known_and_bounds():
    a = torch.tensor([[0.0, 0, 1, 1]])
    b = torch.tensor([[2.0, 0, 3, 1]])
    # disjoint: IoU 0, enclosing box area 3, union 2 -> -1/3
    assert generalized_box_iou(a, b).item() == pytest.approx(-1 / 3)
    assert generalized_box_iou(a, a).item() == pytest.approx(1.0)
    g = generalized_box_iou(_random_boxes(10), _random_boxes(10))
    assert (g <= 1).all() and (g >= -1).all()
    with pytest.raises(ValueError, match="x2 >= x1"):
        generalized_box_iou(torch.tensor([[1.0, 0, 0, 1]]), a)


def test_checks_name_argument():
    with pytest.raises(ValueError, match=r"box_iou: `boxes2` must have shape \[\*, 4\]"):
        box_iou(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(TypeError, match="floating"):
        box_area(torch.zeros(2, 4, dtype=torch.long))
