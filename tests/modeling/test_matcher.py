import math

import pytest
import torch

from detforge.modeling.matcher import Matcher
from detforge.structures.boxes import box_iou


def rpn_matcher(low_quality: bool = False) -> Matcher:
    return Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=low_quality)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_bands_and_exact_thresholds(dtype):
    # column maxima: 0.1 neg, 0.3 (== low) ignore, 0.5 ignore, 0.7 (== high) pos, 0.9 pos,
    # 0.69 ignore, 0.29 neg, 0.0 neg
    quality = torch.tensor(
        [
            [0.1, 0.0, 0.5, 0.2, 0.9, 0.69, 0.0, 0.0],
            [0.0, 0.3, 0.4, 0.7, 0.1, 0.10, 0.29, 0.0],
        ],
        dtype=dtype,
    )
    matches, labels = rpn_matcher()(quality)
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8
    assert matches.tolist() == [0, 1, 0, 1, 0, 0, 1, 0]
    assert labels.tolist() == [0, -1, -1, 1, 1, -1, 0, 0]


def test_single_threshold_two_bands():
    quality = torch.tensor([[0.5, 0.49999, 1.0, 0.0]])
    _, labels = Matcher([0.5], [0, 1])(quality)
    assert labels.tolist() == [1, 0, 1, 0]


def test_ties_between_ground_truths_pick_the_lowest_index():
    quality = torch.tensor([[0.2, 0.8], [0.8, 0.8], [0.8, 0.1]])
    matches, labels = rpn_matcher()(quality)
    assert matches.tolist() == [1, 0]
    assert labels.tolist() == [1, 1]


def test_low_quality_matches_with_ties():
    quality = torch.tensor(
        [
            [0.40, 0.40, 0.10, 0.00, 0.05],  # gt 0: best 0.4 at predictions 0 and 1 (tie)
            [0.35, 0.00, 0.25, 0.25, 0.05],  # gt 1: best 0.35 at prediction 0 (owned by gt 0)
            [0.00, 0.00, 0.00, 0.20, 0.10],  # gt 2: best 0.2 at prediction 3
        ]
    )
    matches, labels = rpn_matcher()(quality)
    assert labels.tolist() == [-1, -1, 0, 0, 0]
    matches_lq, labels_lq = rpn_matcher(low_quality=True)(quality)
    assert labels_lq.tolist() == [1, 1, 0, 1, 0]
    # only labels change: the matched index stays the column argmax (prediction 3 -> gt 1)
    assert matches_lq.tolist() == matches.tolist() == [0, 0, 1, 1, 2]


def test_low_quality_matches_from_real_boxes():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 104.0, 104.0]])
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [98.0, 98.0, 114.0, 114.0], [102.0, 102.0, 118.0, 118.0]]
    )
    iou = box_iou(gt, anchors)  # gt 1 reaches only 16/256 with anchor 1 and 4/256 with anchor 2
    _, labels = rpn_matcher()(iou)
    assert labels.tolist() == [1, 0, 0]
    _, labels = rpn_matcher(low_quality=True)(iou)
    assert labels.tolist() == [1, 1, 0]


def test_low_quality_ground_truth_with_no_overlap_makes_zero_predictions_positive():
    # detectron2's rule has no lower bound: gt 1 overlaps nothing, so its maximum is 0 and every
    # prediction with quality 0 to it becomes positive
    quality = torch.tensor([[0.9, 0.0, 0.1], [0.0, 0.0, 0.0]])
    _, labels = rpn_matcher(low_quality=True)(quality)
    assert labels.tolist() == [1, 1, 1]


def test_no_ground_truth():
    matches, labels = rpn_matcher(low_quality=True)(torch.zeros(0, 5))
    assert matches.tolist() == [0] * 5 and matches.dtype == torch.int64
    assert labels.tolist() == [0] * 5 and labels.dtype == torch.int8
    _, labels = Matcher([0.4, 0.5], [-1, 0, 1])(torch.zeros(0, 3))
    assert labels.tolist() == [-1, -1, -1]


def test_no_predictions():
    matches, labels = rpn_matcher(low_quality=True)(torch.zeros(3, 0))
    assert matches.shape == (0,) and labels.shape == (0,)
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.1])
def test_non_finite_or_negative_quality_is_rejected(bad):
    quality = torch.tensor([[0.1, 0.5], [0.2, 0.3]])
    quality[1, 0] = bad
    with pytest.raises(ValueError, match=r"entry \[1, 0\]"):
        rpn_matcher()(quality)


@pytest.mark.parametrize(
    ("thresholds", "labels"),
    [
        ([], [0]),
        ([0.0, 0.7], [0, -1, 1]),
        ([0.7, 0.3], [0, -1, 1]),
        ([0.3, 0.7], [0, 1]),
        ([0.3, 0.7], [0, 2, 1]),
        ([0.3, math.nan], [0, -1, 1]),
    ],
)
def test_bad_construction(thresholds, labels):
    with pytest.raises(ValueError, match="Matcher"):
        Matcher(thresholds, labels)


def test_bad_matrix_shape():
    with pytest.raises(ValueError, match=r"\[G, N\]"):
        rpn_matcher()(torch.zeros(4))
    with pytest.raises(TypeError, match="Tensor"):
        rpn_matcher()([[0.5]])


def test_values_are_checked_on_the_cpu_only():
    # On an accelerator reading the matrix back would synchronise every training step: the
    # values are checked on the CPU only (the meta device stands in for an accelerator).
    bad = torch.tensor([[0.1, math.nan], [0.2, 0.3]])
    with pytest.raises(ValueError, match=r"entry \[0, 1\]"):
        rpn_matcher()(bad)
    matches, labels = rpn_matcher()(bad.to("meta"))
    assert matches.shape == (2,) and labels.shape == (2,)
