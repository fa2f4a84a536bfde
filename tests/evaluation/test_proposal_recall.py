"""Proposal recall: hand cases, greedy matching against a brute-force oracle, the evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detforge.evaluation.proposal_recall import ProposalRecallEvaluator, proposal_recall
from detforge.structures.boxes import box_iou
from detforge.structures.instances import Instances

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
# p3 (best score) covers half of g1, p1 is g1 exactly, p2 overlaps g2 with IoU 100/150 = 2/3.
PROPS = Instances(
    (40, 40),
    boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 35.0], [0.0, 0.0, 10.0, 5.0]]),
    scores=torch.tensor([0.9, 0.8, 0.95]),
)


def test_hand_case() -> None:
    res = proposal_recall([PROPS], [GT])
    assert res.num_pos == 2
    assert sorted(res.overlaps.tolist()) == pytest.approx([2 / 3, 1.0])
    # t = 0.50 .. 0.65: both boxes; t = 0.70 .. 0.95: only g1.
    expected = [1.0] * 4 + [0.5] * 6
    assert res.recalls.tolist() == pytest.approx(expected)
    assert res.ar == pytest.approx(0.7)


def test_limit_keeps_the_highest_scores() -> None:
    # Only p3 (score 0.95) is left: it covers g1 with IoU 0.5 and g2 not at all.
    res = proposal_recall([PROPS], [GT], limit=1)
    assert res.overlaps.tolist() == pytest.approx([0.5])
    assert res.recalls.tolist() == pytest.approx([0.5] + [0.0] * 9)
    assert res.ar == pytest.approx(0.05)


def test_images_without_proposals_count_as_missed_and_area_ranges() -> None:
    empty = Instances((40, 40), boxes=torch.zeros(0, 4), scores=torch.zeros(0))
    res = proposal_recall([PROPS, empty], [GT, GT])
    assert res.num_pos == 4 and res.ar == pytest.approx(0.35)
    # Areas: g1 counts as large, g2 as small; only g2 is in the small range.
    areas = [torch.tensor([100.0**2, 10.0])]
    small = proposal_recall([PROPS], [GT], gt_areas=areas, area_range=(0.0, 32.0**2))
    assert small.num_pos == 1 and small.recalls.tolist() == pytest.approx([1.0] * 4 + [0.0] * 6)
    none = proposal_recall([PROPS], [torch.zeros(0, 4)])
    assert none.num_pos == 0 and math.isnan(none.ar)
    with pytest.raises(ValueError, match="one entry per image"):
        proposal_recall([PROPS], [GT, GT])


def _oracle_overlaps(iou: np.ndarray) -> list[float]:
    """Brute force of the greedy rule: repeatedly take the globally highest remaining IoU."""
    iou = iou.copy()
    out = []
    for _ in range(min(iou.shape)):
        r, g = np.unravel_index(np.argmax(iou), iou.shape)
        out.append(float(iou[r, g]))
        iou[r, :] = -1
        iou[:, g] = -1
    return out


@pytest.mark.parametrize(("num_props", "num_gt"), [(7, 4), (3, 6), (5, 5)])
def test_greedy_matching_against_oracle(num_props: int, num_gt: int) -> None:
    # The best (proposal, box) pair among each box's best proposal is the global maximum.
    def boxes(n: int) -> torch.Tensor:
        xy = torch.rand(n, 2, dtype=torch.float64) * 50
        return torch.cat([xy, xy + 5 + torch.rand(n, 2, dtype=torch.float64) * 30], dim=1)

    props, gt = boxes(num_props), boxes(num_gt)
    inst = Instances((100, 100), boxes=props, scores=torch.rand(num_props))
    res = proposal_recall([inst], [gt])
    expected = _oracle_overlaps(box_iou(props, gt).numpy())
    assert sorted(res.overlaps.tolist()) == pytest.approx(sorted(expected))
    assert len(res.overlaps) == min(num_props, num_gt)


def _records() -> list[dict]:
    anns = [
        {"bbox": GT[0].tolist(), "category_id": 0, "iscrowd": 0},
        {"bbox": GT[1].tolist(), "category_id": 0, "iscrowd": 0},
        {"bbox": [30.0, 0.0, 40.0, 10.0], "category_id": 0, "iscrowd": 1},  # never counted
    ]
    return [{"image_id": 3, "height": 40, "width": 40, "annotations": anns}]


def test_evaluator_rescales_proposals_of_the_resized_image() -> None:
    ev = ProposalRecallEvaluator(_records(), limits=(1, 100))
    resized = Instances((80, 80), boxes=PROPS.boxes * 2, scores=PROPS.scores)
    ev.process([{"image_id": 3, "height": 40, "width": 40}], [resized])
    m = ev.evaluate()["box_proposals"]
    assert m["AR@100"] == pytest.approx(70.0) and m["AR@1"] == pytest.approx(5.0)
    # Both boxes have area 100 (small): the medium and large ranges have no ground truth.
    assert m["ARs@100"] == pytest.approx(70.0)
    assert math.isnan(m["ARm@100"]) and math.isnan(m["ARl@100"])
    with pytest.raises(ValueError, match="not in records"):
        ev.process([{"image_id": 4}], [PROPS])
    with pytest.raises(ValueError, match="limits"):
        ProposalRecallEvaluator(_records(), limits=(0,))
