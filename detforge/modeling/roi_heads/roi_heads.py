"""``StandardROIHeads``: the second stage of Faster / Mask R-CNN.

Semantics follow detectron2's ``StandardROIHeads`` exactly where results depend on them:

* Training: the ground-truth boxes are appended to each image's proposals (after them, with
  objectness logit ``log((1 - 1e-10) / 1e-10)``, i.e. probability ~1). Each proposal is matched to
  the ground truth by IoU (``Matcher([0.5], [0, 1])`` in the standard models): matched ones take
  their ground truth's class, the others the background class ``K``, ignored ones -1. Then
  ``batch_size_per_image`` proposals are sampled with at most ``positive_fraction`` of
  foreground (:func:`detforge.modeling.sampling.subsample_labels`), foreground first. An image
  without ground truth gives background samples only. The box head runs on the sampled proposals;
  the mask head on their foreground subset.
* Inference: the box head runs on all proposals; the mask head on the final detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.modeling.matcher import Matcher
from detforge.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detforge.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detforge.modeling.sampling import subsample_labels
from detforge.ops.poolers import MultiLevelRoIPooler
from detforge.structures.boxes import box_iou
from detforge.structures.instances import Instances
from detforge.utils.checks import check_float, check_int

__all__ = ["GT_PROPOSAL_LOGIT", "StandardROIHeads", "add_ground_truth_to_proposals"]

#: Objectness logit given to ground-truth boxes appended to the proposals (sigmoid ~ 1).
GT_PROPOSAL_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def add_ground_truth_to_proposals(proposals: Instances, targets: Instances) -> Instances:
    """Append the ground-truth boxes to the proposals of one image.

    Args:
        proposals: ``boxes`` (Tensor[R, 4]) and optionally ``scores`` (objectness logits).
        targets: ground truth of the same image, ``boxes`` (Tensor[G, 4]).

    Returns:
        ``Instances`` with ``R + G`` boxes, the proposals first; the appended rows get score
        :data:`GT_PROPOSAL_LOGIT` when the proposals have scores. Other proposal fields are
        dropped.
    """
    gt_boxes = targets.boxes.to(proposals.boxes)
    scores = None
    if proposals.scores is not None:
        gt_scores = torch.full_like(gt_boxes[:, 0], GT_PROPOSAL_LOGIT, dtype=proposals.scores.dtype)
        scores = torch.cat([proposals.scores.detach(), gt_scores])
    boxes = torch.cat([proposals.boxes.detach(), gt_boxes])
    return Instances(proposals.image_size, boxes=boxes, scores=scores)


def _check_in_features(
    fn: str, kind: str, names: Sequence[str], pooler: MultiLevelRoIPooler
) -> list[str]:
    if isinstance(names, str) or len(names) == 0:
        raise ValueError(f"{fn}: `{kind}_in_features` must be a non-empty list of names")
    if len(names) != len(pooler.scales):
        raise ValueError(
            f"{fn}: {len(names)} `{kind}_in_features` {list(names)} but the {kind} pooler has "
            f"{len(pooler.scales)} scales"
        )
    return list(names)


def _check_target(fn: str, i: int, target: object, *, need_masks: bool) -> None:
    """Structure only (type, fields, dtype): the label values are checked at the detector's
    edge (``detectors/detector_io.py``); reading them here would synchronise every step."""
    if not isinstance(target, Instances):
        raise TypeError(f"{fn}: targets[{i}] must be Instances, got {type(target).__name__}")
    if target.labels is None:
        raise ValueError(f"{fn}: targets[{i}] has no `labels`")
    labels = target.labels
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{fn}: targets[{i}].labels must be an integer tensor, got {labels.dtype}")
    if need_masks and len(target) > 0 and target.masks is None:
        raise ValueError(f"{fn}: targets[{i}] has no `masks` but the model has a mask head")


class StandardROIHeads(nn.Module):
    """Pool features for each proposal, classify and refine the boxes, and optionally segment.

    Args:
        num_classes: foreground classes ``K``; the background class is ``K``.
        box_in_features: names of the feature maps the box pooler reads, finest first (in the
            order of ``box_pooler``'s scales).
        box_pooler: pools ``Tensor[R, C, 7, 7]`` features for the box head.
        box_head: e.g. :class:`~detforge.modeling.roi_heads.box_head.FastRCNNConvFCHead`.
        box_predictor: the class and box-delta layers, with their losses and inference.
        proposal_matcher: labels proposals from their IoU with the ground truth.
        batch_size_per_image: proposals sampled per image in training.
        positive_fraction: largest fraction of foreground among the sampled proposals.
        proposal_append_gt: append the ground-truth boxes to the proposals in training.
        mask_in_features: feature maps read by the mask pooler (with ``mask_pooler`` and
            ``mask_head``: all three or none).
        mask_pooler: pools ``Tensor[R, C, 14, 14]`` features for the mask head.
        mask_head: e.g. :class:`~detforge.modeling.roi_heads.mask_head.MaskRCNNConvUpsampleHead`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        box_in_features: Sequence[str],
        box_pooler: MultiLevelRoIPooler,
        box_head: nn.Module,
        box_predictor: FastRCNNOutputLayers,
        proposal_matcher: Matcher,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        proposal_append_gt: bool = True,
        mask_in_features: Sequence[str] | None = None,
        mask_pooler: MultiLevelRoIPooler | None = None,
        mask_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        fn = "StandardROIHeads"
        check_int(num_classes, "num_classes", fn, low=1)
        if box_predictor.num_classes != num_classes:
            raise ValueError(
                f"{fn}: `box_predictor` has {box_predictor.num_classes} classes, "
                f"`num_classes` is {num_classes}"
            )
        check_int(batch_size_per_image, "batch_size_per_image", fn, low=1)
        check_float(positive_fraction, "positive_fraction", fn, low=0, high=1)
        self.box_in_features = _check_in_features(fn, "box", box_in_features, box_pooler)
        given = [x is not None for x in (mask_in_features, mask_pooler, mask_head)]
        if any(given) and not all(given):
            raise ValueError(
                f"{fn}: give all of `mask_in_features`, `mask_pooler` and `mask_head`, or none"
            )
        self.mask_in_features: list[str] | None = None
        if mask_in_features is not None and mask_pooler is not None:
            self.mask_in_features = _check_in_features(fn, "mask", mask_in_features, mask_pooler)
        self.num_classes = num_classes
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.proposal_matcher = proposal_matcher
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.proposal_append_gt = bool(proposal_append_gt)
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head

    def forward(
        self,
        image_sizes: Sequence[tuple[int, int]],
        features: dict[str, Tensor],
        proposals: Sequence[Instances],
        targets: Sequence[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Train on sampled proposals, or detect.

        Args:
            image_sizes: ``(height, width)`` of each image (before padding), ``B`` in all.
            features: named feature maps ``Tensor[B, C, H_l, W_l]``.
            proposals: per image, ``Instances`` with ``boxes`` (and ``scores``, the objectness
                logits); their ``image_size`` must equal ``image_sizes``.
            targets: per image, ground truth ``Instances(boxes, labels, masks)`` (``masks`` only
                with a mask head); required in training.

        Returns:
            In training, the sampled proposals (see :meth:`label_and_sample_proposals`) and
            ``{"loss_cls", "loss_box"}`` (+ ``"loss_mask"``). In eval, per image the detections
            ``Instances(boxes, scores, labels)`` (+ ``masks``: Tensor[N, 1, M, M]
            probabilities in each box) and an empty dict.
        """
        self._check_inputs(image_sizes, features, proposals, targets)
        if self.training:
            assert targets is not None  # checked above
            sampled = self.label_and_sample_proposals(proposals, targets)
            losses = self._box_losses(features, sampled)
            if self.mask_head is not None:
                losses["loss_mask"] = self._mask_loss(features, sampled)
            return sampled, losses
        scores, deltas = self._box_predictions(features, [p.boxes for p in proposals])
        detections, _ = self.box_predictor.inference(scores, deltas, proposals)
        if self.mask_head is not None:
            detections = self._predict_masks(features, detections)
        return detections, {}

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: Sequence[Instances], targets: Sequence[Instances]
    ) -> list[Instances]:
        """Match the proposals (with the ground truth appended) to the ground truth and sample.

        Args:
            proposals: per image, ``Instances`` with ``boxes`` (and optionally ``scores``).
            targets: per image, ``Instances`` with ``boxes`` (Tensor[G, 4]), ``labels``
                (Tensor[G] in ``[0, K)``) and optionally ``masks`` / ``keypoints``.

        Returns:
            Per image, the ``S <= batch_size_per_image`` sampled proposals, foreground first:
            ``boxes`` the proposal boxes, ``scores`` their objectness logits, ``labels`` their
            class in ``[0, K]`` (``K`` background), ``masks``/``keypoints`` those of the matched
            ground truth (when the targets have them and the image has ground truth), and
            ``extras["matched_boxes"]`` (Tensor[S, 4]) the matched ground-truth box (the proposal
            itself when the image has none) and ``extras["matched_indices"]`` (Tensor[S]) the
            index of the matched ground truth (-1 when the image has none).
        """
        return [self._sample_image(p, t) for p, t in zip(proposals, targets, strict=True)]

    def _sample_image(self, proposals: Instances, targets: Instances) -> Instances:
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(proposals, targets)
        boxes = proposals.boxes.detach()
        gt_boxes = targets.boxes.to(boxes)
        assert targets.labels is not None  # checked in forward
        has_gt = len(targets) > 0
        matched, match_labels = self.proposal_matcher(box_iou(gt_boxes, boxes))  # [R], [R]
        if has_gt:
            labels = targets.labels.to(boxes.device, torch.int64)[matched]  # [R]
            labels[match_labels == 0] = self.num_classes
            labels[match_labels == -1] = -1
        else:
            labels = torch.full_like(matched, self.num_classes)
        pos, neg = subsample_labels(
            labels, self.batch_size_per_image, self.positive_fraction, self.num_classes
        )
        idx = torch.cat([pos, neg])  # [S]
        gt_idx = matched[idx]
        masks = targets.masks[gt_idx] if has_gt and targets.masks is not None else None
        keypoints = targets.keypoints[gt_idx] if has_gt and targets.keypoints is not None else None
        extras = {
            "matched_boxes": gt_boxes[gt_idx] if has_gt else boxes[idx],
            "matched_indices": gt_idx if has_gt else torch.full_like(gt_idx, -1),
        }
        return Instances(
            proposals.image_size,
            boxes=boxes[idx],
            labels=labels[idx],
            scores=None if proposals.scores is None else proposals.scores[idx].detach(),
            masks=masks,
            keypoints=keypoints,
            extras=extras,
        )

    def _box_predictions(
        self, features: dict[str, Tensor], boxes: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        feats = [features[f] for f in self.box_in_features]
        pooled = self.box_pooler(feats, boxes)  # [R, C, 7, 7]
        scores, deltas = self.box_predictor(self.box_head(pooled))  # [R, K + 1], [R, K * 4]
        return scores, deltas

    def _box_losses(
        self, features: dict[str, Tensor], sampled: list[Instances]
    ) -> dict[str, Tensor]:
        scores, deltas = self._box_predictions(features, [p.boxes for p in sampled])
        labels = torch.cat([p.labels for p in sampled if p.labels is not None])
        matched = torch.cat([p.extras["matched_boxes"] for p in sampled])
        boxes = torch.cat([p.boxes for p in sampled])
        return self.box_predictor.losses(scores, deltas, boxes, labels, matched)

    def _mask_loss(self, features: dict[str, Tensor], sampled: list[Instances]) -> Tensor:
        assert self.mask_pooler is not None and self.mask_head is not None
        assert self.mask_in_features is not None
        foreground = []
        for p in sampled:
            assert p.labels is not None
            foreground.append(p[(p.labels >= 0) & (p.labels < self.num_classes)])
        feats = [features[f] for f in self.mask_in_features]
        pooled = self.mask_pooler(feats, [p.boxes for p in foreground])  # [F, C, 14, 14]
        return mask_rcnn_loss(self.mask_head(pooled), foreground)

    def _predict_masks(
        self, features: dict[str, Tensor], detections: list[Instances]
    ) -> list[Instances]:
        assert self.mask_pooler is not None and self.mask_head is not None
        assert self.mask_in_features is not None
        feats = [features[f] for f in self.mask_in_features]
        pooled = self.mask_pooler(feats, [d.boxes for d in detections])  # [N, C, 14, 14]
        return mask_rcnn_inference(self.mask_head(pooled), detections)

    def _check_inputs(
        self,
        image_sizes: Sequence[tuple[int, int]],
        features: dict[str, Tensor],
        proposals: Sequence[Instances],
        targets: Sequence[Instances] | None,
    ) -> None:
        fn = "StandardROIHeads.forward"
        if not isinstance(features, dict):
            raise TypeError(f"{fn}: `features` must be a dict of named maps, got {type(features)}")
        needed = list(dict.fromkeys([*self.box_in_features, *(self.mask_in_features or [])]))
        missing = [f for f in needed if f not in features]
        if missing:
            raise ValueError(
                f"{fn}: feature maps {missing} are missing from `features`, which has "
                f"{sorted(features)}"
            )
        if len(proposals) != len(image_sizes):
            raise ValueError(f"{fn}: {len(proposals)} proposal sets for {len(image_sizes)} images")
        for i, (p, size) in enumerate(zip(proposals, image_sizes, strict=True)):
            if not isinstance(p, Instances):
                raise TypeError(f"{fn}: proposals[{i}] must be Instances, got {type(p).__name__}")
            if tuple(p.image_size) != tuple(size):
                raise ValueError(
                    f"{fn}: proposals[{i}] have image_size {p.image_size} but image_sizes[{i}] "
                    f"is {tuple(size)}"
                )
        if not self.training:
            return
        if targets is None:
            raise ValueError(f"{fn}: `targets` are required in training mode")
        if len(targets) != len(image_sizes):
            raise ValueError(f"{fn}: {len(targets)} targets for {len(image_sizes)} images")
        for i, t in enumerate(targets):
            _check_target(fn, i, t, need_masks=self.mask_head is not None)
