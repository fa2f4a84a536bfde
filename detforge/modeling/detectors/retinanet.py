"""RetinaNet (Lin et al., 2017): one-stage detection with anchors on a pyramid and focal loss.

Computation (detectron2's ``RetinaNet`` wherever results depend on it, so that converted
detectron2 checkpoints give the same detections):

1. **Preprocess**: cast each image to the buffers' dtype, ``(x - pixel_mean) / pixel_std``, pad
   with zeros (bottom/right) to a multiple of ``size_divisibility``.
2. **Predict**: ``backbone`` (then ``neck``) gives named maps; the head sees ``in_features``,
   finest first, and its ``[B, A * K, H, W]`` logits / ``[B, A * 4, H, W]`` deltas are reordered
   to ``[B, H * W * A, K]`` / ``[B, H * W * A, 4]``, the anchor order.
3. **Train**: ``anchor_matcher`` labels anchors by IoU (background < 0.4 <= ignored < 0.5 <=
   foreground, plus each ground truth's best anchors). ``loss_cls`` is the sigmoid focal loss
   summed over non-ignored anchors and all classes (background: all-zero targets); ``loss_box``
   is smooth-L1 on encoded deltas (or GIoU on decoded boxes) summed over foreground anchors. Both
   are divided by ``loss_normalizer``, an EMA of the number of foreground anchors *per process*
   updated once per training forward: ``new = m * old + (1 - m) * max(num_fg, 1)``, starting at
   ``loss_normalizer_init`` (100). ``num_fg`` counts the foreground anchors of this process's
   images; under DDP (``torch.distributed`` initialised, world size ``P > 1``) it is instead the
   count summed over all processes (an all-reduce) divided by ``P``, as in mmdetection's
   ``reduce_mean`` of the positives, so every process holds the same normaliser. Because DDP
   averages gradients, ``P`` processes of ``n`` images then train exactly like one process of
   ``P * n`` images whose normaliser (and ``loss_normalizer_init``) is ``P`` times larger: the
   EMA is in units of foreground anchors per process's batch, so scale ``loss_normalizer_init``
   with the images per process (detectron2's standard schedules use 100 with 2 images per
   GPU). The all-reduce is a collective: every process must run the same number of training
   forwards.
4. **Infer**, per image and level: sigmoid of the ``[H * W * A, K]`` logits, flattened; keep
   scores ``> test_score_thresh``, then the ``test_topk_candidates`` best; flat index ``i`` is
   anchor ``i // K``, class ``i % K``; decode only those boxes. Concatenate the levels, run
   class-wise NMS (``test_nms_thresh``), keep the top ``max_detections_per_image``. Boxes are
   *not* clipped before NMS.
5. **Postprocess** (detectron2's ``detector_postprocess``): scale boxes by ``out / in`` per axis
   to ``original_sizes`` (default: the input sizes), clip, drop zero-width/height boxes.

Deliberate differences that leave results on clean data unchanged: zero-size ground-truth boxes
are dropped before matching (detectron2's mapper drops them earlier); score ties in the per-level
top-k are broken by index (stable sort) rather than in ``topk``'s unspecified order; the loss
keys are ``loss_cls``/``loss_box`` (detectron2: ``loss_box_reg``). detectron2 pads RetinaNet
inputs to a multiple of 32 (its FPN's bottom-up stride), hence ``size_divisibility=32``.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from detforge.modeling.anchors import AnchorGenerator
from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.dense_inference import dense_detection_inference
from detforge.modeling.matcher import Matcher
from detforge.modeling.postprocess import (
    check_original_sizes,
    check_targets,
    detector_postprocess,
    preprocess_images,
)
from detforge.ops.focal_loss import sigmoid_focal_loss_from_labels
from detforge.ops.losses import giou_loss, smooth_l1_loss
from detforge.structures.boxes import box_iou, nonempty_boxes
from detforge.structures.image_list import ImageList
from detforge.structures.instances import Instances
from detforge.utils.comm import reduce_mean

__all__ = ["RetinaNet"]

logger = logging.getLogger(__name__)

_FN = "RetinaNet"


def _to_n_hwa_k(x: Tensor, k: int) -> Tensor:
    """``Tensor[B, A * k, H, W] -> Tensor[B, H * W * A, k]`` (location-major, then anchor)."""
    b, _, h, w = x.shape
    return x.view(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)


def _number(value: object, name: str, low: float, high: float = math.inf) -> float:
    """Return ``value`` as a float in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_FN}: `{name}` must be a number, got {value!r}")
    if math.isnan(float(value)) or not low <= float(value) <= high:
        raise ValueError(f"{_FN}: `{name}` must be in [{low}, {high}], got {value!r}")
    return float(value)


def _count(value: object, name: str, low: int) -> int:
    """Return ``value`` as an int ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_FN}: `{name}` must be an int, got {value!r}")
    return int(_number(value, name, low))


def _pixel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Validate ``pixel_mean``/``pixel_std`` and return them as ``Tensor[C, 1, 1]``."""
    for name, seq in (("pixel_mean", mean), ("pixel_std", std)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or len(seq) == 0:
            raise TypeError(f"{_FN}: `{name}` must be a non-empty list of floats, got {seq!r}")
    if len(mean) != len(std):
        raise ValueError(f"{_FN}: `pixel_mean` has {len(mean)} channels, `pixel_std` {len(std)}")
    m, s = [float(v) for v in mean], [float(v) for v in std]
    if not (all(math.isfinite(v) for v in m + s) and min(s) > 0):
        raise ValueError(f"{_FN}: `pixel_mean` must be finite and `pixel_std` positive")
    return torch.tensor(m).view(-1, 1, 1), torch.tensor(s).view(-1, 1, 1)


class RetinaNet(nn.Module):
    """RetinaNet: backbone (+ neck), a dense head on every level, focal loss, class-wise NMS.

    See the module docstring for the computation.

    Args:
        backbone: maps a ``Tensor[B, C, H, W]`` batch to ``dict[str, Tensor]`` (e.g. a ResNet,
            or any module that already returns the pyramid).
        head: maps the list of ``in_features`` maps to per-level ``[B, A * K, H, W]`` logits and
            ``[B, A * 4, H, W]`` deltas (e.g. ``RetinaNetHead``).
        anchor_generator: anchors of every level; its levels match ``in_features``.
        box_coder: encodes regression targets and decodes predictions (weights ``(1, 1, 1, 1)``).
        anchor_matcher: labels anchors from their IoU with the ground truth
            (``Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)``).
        num_classes: number of classes ``K`` (no background class).
        neck: optional module applied to the backbone's dict (e.g. an ``FPN``).
        in_features: names of the maps the head uses, finest first.
        focal_loss_alpha: focal loss weight of positives (negative disables it).
        focal_loss_gamma: focal loss focusing exponent.
        smooth_l1_beta: smooth-L1 change point (0 is L1); used with ``"smooth_l1"``.
        box_reg_loss_type: ``"smooth_l1"`` on deltas or ``"giou"`` on decoded boxes.
        test_score_thresh: inference keeps class scores (probabilities) strictly above this.
        test_topk_candidates: at most this many (anchor, class) candidates per level and image.
        test_nms_thresh: IoU threshold of the class-wise NMS.
        max_detections_per_image: detections kept per image after NMS.
        pixel_mean: per-channel mean, in ``input_format`` order (stored as a buffer).
        pixel_std: per-channel std (stored as a buffer).
        input_format: channel order the model expects, ``"BGR"`` or ``"RGB"``; the images must
            already be in it (the data pipeline converts them).
        size_divisibility: inputs are padded to a multiple of this (32 as in detectron2).
        channels_last: run the network on a channels-last (NHWC) batch, faster on CPU and GPU
            (see ``preprocess_images``); results are the same up to float rounding.
        loss_normalizer_momentum: momentum ``m`` of the foreground-count EMA.
        loss_normalizer_init: its starting value.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        anchor_matcher: Matcher,
        num_classes: int,
        neck: nn.Module | None = None,
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.1,
        box_reg_loss_type: Literal["smooth_l1", "giou"] = "smooth_l1",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float] = (103.53, 116.28, 123.675),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        input_format: Literal["BGR", "RGB"] = "BGR",
        size_divisibility: int = 32,
        channels_last: bool = True,
        loss_normalizer_momentum: float = 0.9,
        loss_normalizer_init: float = 100.0,
    ) -> None:
        super().__init__()
        if isinstance(in_features, str) or len(in_features) != anchor_generator.num_levels:
            raise ValueError(
                f"{_FN}: `in_features` {in_features!r} must name one map per anchor level "
                f"({anchor_generator.num_levels})"
            )
        if box_reg_loss_type not in ("smooth_l1", "giou"):
            raise ValueError(f"{_FN}: `box_reg_loss_type` must be 'smooth_l1' or 'giou'")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"{_FN}: `input_format` must be 'BGR' or 'RGB', got {input_format!r}")
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.anchor_matcher = anchor_matcher
        self.in_features = list(in_features)
        self.box_reg_loss_type = box_reg_loss_type
        self.input_format = input_format
        self.num_classes = _count(num_classes, "num_classes", 1)
        self.focal_loss_alpha = _number(focal_loss_alpha, "focal_loss_alpha", -math.inf, 1)
        self.focal_loss_gamma = _number(focal_loss_gamma, "focal_loss_gamma", 0)
        self.smooth_l1_beta = _number(smooth_l1_beta, "smooth_l1_beta", 0)
        self.test_score_thresh = _number(test_score_thresh, "test_score_thresh", -math.inf, 1)
        self.test_nms_thresh = _number(test_nms_thresh, "test_nms_thresh", 0, 1)
        self.test_topk_candidates = _count(test_topk_candidates, "test_topk_candidates", 1)
        self.max_detections_per_image = _count(
            max_detections_per_image, "max_detections_per_image", 1
        )
        self.size_divisibility = _count(size_divisibility, "size_divisibility", 0)
        self.channels_last = channels_last
        m = _number(loss_normalizer_momentum, "loss_normalizer_momentum", 0, 1)
        self.loss_normalizer_momentum = m
        #: EMA of the foreground-anchor count per process (mean over processes under DDP; see
        #: the module docstring); a plain attribute, not saved in the state dict.
        self.loss_normalizer = _number(loss_normalizer_init, "loss_normalizer_init", 1)
        mean, std = _pixel_stats(pixel_mean, pixel_std)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @property
    def device(self) -> torch.device:
        """Device of the model's buffers, where inputs are moved."""
        return self.pixel_mean.device

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Instances] | None = None,
        *,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """Compute the losses (training mode) or the detections (eval mode).

        Args:
            images (list[Tensor[C, H_i, W_i]]): uint8 or float pixels in ``input_format`` order.
            targets: in training, one ``Instances`` per image with ``boxes`` (xyxy, in the
                image's pixels) and int64 ``labels`` in ``[0, K)``; ``image_size`` must be
                the image's ``(H_i, W_i)``. Ignored in eval mode.
            original_sizes: eval only: ``(height, width)`` to rescale each image's detections
                to; defaults to the input sizes.

        Returns:
            Training: ``{"loss_cls", "loss_box"}`` scalar tensors. Eval: one ``Instances`` per
            image with ``boxes`` (Tensor[D, 4]), ``scores`` (Tensor[D]) and ``labels``
            (Tensor[D] int64), sorted by decreasing score, ``D <= max_detections_per_image``.
        """
        batch = self.preprocess(images)
        gt = (
            check_targets(targets, batch.image_sizes, num_classes=self.num_classes, owner=_FN)
            if self.training
            else []
        )
        sizes = batch.image_sizes
        if not self.training and original_sizes is not None:
            sizes = check_original_sizes(original_sizes, len(batch), owner=_FN)
        features = self.extract_features(batch.tensor)
        anchors = self.anchor_generator(features)  # list of [N_l, 4]
        logits, deltas = self._predict(features)  # lists of [B, N_l, K] and [B, N_l, 4]
        if self.training:
            all_anchors = torch.cat(anchors)  # [N, 4]
            labels, matched = self.label_anchors(all_anchors, gt)
            return self.losses(all_anchors, logits, deltas, labels, matched)
        detections = self.inference(anchors, logits, deltas, batch.image_sizes)
        return [detector_postprocess(d, s) for d, s in zip(detections, sizes, strict=True)]

    def preprocess(self, images: Sequence[Tensor]) -> ImageList:
        """Normalise the images and pad them into one batch.

        Args:
            images (list[Tensor[C, H_i, W_i]]): uint8 or float, ``C = len(pixel_mean)``.

        Returns:
            ImageList: ``tensor`` (Tensor[B, C, H, W]) in the buffers' dtype and device, zero
            padded, ``H`` and ``W`` multiples of ``size_divisibility``; ``image_sizes`` the
            ``(H_i, W_i)``.
        """
        return preprocess_images(
            images,
            self.pixel_mean,
            self.pixel_std,
            size_divisibility=self.size_divisibility,
            owner=_FN,
            channels_last=self.channels_last,
        )

    def extract_features(self, batch: Tensor) -> list[Tensor]:
        """Run the backbone (and neck) and pick ``in_features``.

        Args:
            batch (Tensor[B, C, H, W]): normalised, padded images.

        Returns:
            list[Tensor[B, C_l, H_l, W_l]]: the ``in_features`` maps, in that order.
        """
        features = self.backbone(batch)
        if self.neck is not None:
            features = self.neck(features)
        if not isinstance(features, dict):
            raise TypeError(f"{_FN}: the backbone/neck must return a dict of feature maps")
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise ValueError(
                f"{_FN}: `in_features` {missing} not produced by the backbone/neck, which "
                f"returns {list(features)}"
            )
        return [features[f] for f in self.in_features]

    def _predict(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Run the head, check its output shapes, and reorder to the anchor order."""
        logits, deltas = self.head(features)
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(logits) != len(features) or len(deltas) != len(features):
            raise ValueError(f"{_FN}: the head must return one output per level")
        for lvl, (x, lg, dl, a) in enumerate(
            zip(features, logits, deltas, num_anchors, strict=True)
        ):
            b, _, h, w = x.shape
            want_lg, want_dl = [b, a * self.num_classes, h, w], [b, a * 4, h, w]
            if list(lg.shape) != want_lg or list(dl.shape) != want_dl:
                raise ValueError(
                    f"{_FN}: head output of level {lvl} ({self.in_features[lvl]}) has logits "
                    f"{list(lg.shape)} and deltas {list(dl.shape)}; expected {want_lg} and "
                    f"{want_dl} ({a} anchors, {self.num_classes} classes)"
                )
        return (
            [_to_n_hwa_k(x, self.num_classes) for x in logits],
            [_to_n_hwa_k(x, 4) for x in deltas],
        )

    @torch.no_grad()
    def label_anchors(
        self, anchors: Tensor, targets: Sequence[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Assign a class (or background / ignore) and a ground-truth box to every anchor.

        Args:
            anchors (Tensor[N, 4]): anchors of all levels, concatenated.
            targets: ground truth per image (``boxes``, ``labels``), on the anchors' device.

        Returns:
            labels: per image ``Tensor[N]`` int64 with values in ``[0, K)`` (foreground class),
            ``K`` (background) or ``-1`` (ignored). matched: per image ``Tensor[N, 4]``, the
            matched ground-truth box of each anchor (meaningful for foreground anchors only;
            zeros for an image without ground truth).
        """
        labels, matched = [], []
        for t in targets:
            t = t.to(anchors.device)
            t = t[nonempty_boxes(t.boxes)]
            gt_boxes = t.boxes.to(anchors.dtype)
            idx, match_labels = self.anchor_matcher(box_iou(gt_boxes, anchors))  # [N], [N]
            if len(t) > 0:
                assert t.labels is not None
                lab = t.labels.to(torch.int64)[idx]
                lab[match_labels == 0] = self.num_classes
                lab[match_labels == -1] = -1
                matched.append(gt_boxes[idx])
            else:
                lab = torch.full_like(idx, self.num_classes)
                matched.append(torch.zeros_like(anchors))
            labels.append(lab)
        return labels, matched

    def losses(
        self,
        anchors: Tensor,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        labels: Sequence[Tensor],
        matched: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Focal classification loss and box regression loss, over the EMA foreground count.

        Updates ``loss_normalizer`` (see the module docstring); under DDP this all-reduces the
        foreground count, so every process must call it.

        Args:
            anchors (Tensor[N, 4]): anchors of all levels.
            logits (list[Tensor[B, N_l, K]]): class logits per level.
            deltas (list[Tensor[B, N_l, 4]]): box deltas per level.
            labels (list[Tensor[N]]): per image, from :meth:`label_anchors`.
            matched (list[Tensor[N, 4]]): per image, from :meth:`label_anchors`.

        Returns:
            dict[str, Tensor]: ``loss_cls`` and ``loss_box``, scalars.
        """
        gt_labels = torch.stack(list(labels))  # [B, N]
        valid = gt_labels >= 0
        fg = valid & (gt_labels != self.num_classes)
        num_fg = float(reduce_mean(fg.sum()))  # a collective under DDP (see the module doc)
        m = self.loss_normalizer_momentum
        self.loss_normalizer = m * self.loss_normalizer + (1 - m) * max(num_fg, 1.0)

        pred_logits = torch.cat(list(logits), dim=1)  # [B, N, K]
        # Focal loss summed over the valid anchors (label -1 is ignored), fused (see the op).
        loss_cls = sigmoid_focal_loss_from_labels(
            pred_logits.flatten(0, 1),
            gt_labels.flatten(),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
        )
        pred_deltas = torch.cat(list(deltas), dim=1)[fg]  # [F, 4]
        fg_anchors = anchors.expand(gt_labels.shape[0], -1, -1)[fg]  # [F, 4]
        fg_boxes = torch.stack(list(matched))[fg]  # [F, 4]
        if self.box_reg_loss_type == "smooth_l1":
            gt_deltas = self.box_coder.encode(fg_anchors, fg_boxes)
            loss_box = smooth_l1_loss(
                pred_deltas, gt_deltas, beta=self.smooth_l1_beta, reduction="sum"
            )
        else:
            pred_boxes = self.box_coder.decode(pred_deltas, fg_anchors)
            loss_box = giou_loss(pred_boxes, fg_boxes.to(pred_boxes.dtype), reduction="sum")
        return {
            "loss_cls": loss_cls / self.loss_normalizer,
            "loss_box": loss_box / self.loss_normalizer,
        }

    @torch.no_grad()
    def inference(
        self,
        anchors: Sequence[Tensor],
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Detections of every image, in input-image coordinates (before rescaling).

        Args:
            anchors (list[Tensor[N_l, 4]]): anchors per level.
            logits (list[Tensor[B, N_l, K]]): class logits per level.
            deltas (list[Tensor[B, N_l, 4]]): box deltas per level.
            image_sizes: ``(height, width)`` of each image before padding.

        Returns:
            list[Instances]: per image, ``boxes``, ``scores`` and ``labels``, sorted by
            decreasing score; boxes are not clipped.
        """
        return [
            self.inference_single_image(
                anchors, [x[i] for x in logits], [x[i] for x in deltas], size
            )
            for i, size in enumerate(image_sizes)
        ]

    def inference_single_image(
        self,
        anchors: Sequence[Tensor],
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        image_size: tuple[int, int],
    ) -> Instances:
        """Threshold, per-level top-k, decode, class-wise NMS and top detections of one image
        (:func:`~detforge.modeling.dense_heads.dense_inference.dense_detection_inference`).

        Args:
            anchors (list[Tensor[N_l, 4]]): anchors per level.
            logits (list[Tensor[N_l, K]]): class logits per level.
            deltas (list[Tensor[N_l, 4]]): box deltas per level.
            image_size: ``(height, width)`` the coordinates refer to.

        Returns:
            Instances: ``boxes``, ``scores`` (probabilities) and ``labels``, by decreasing score.
        """
        return dense_detection_inference(
            anchors,
            logits,
            deltas,
            image_size,
            box_coder=self.box_coder,
            num_classes=self.num_classes,
            score_thresh=self.test_score_thresh,
            topk_candidates=self.test_topk_candidates,
            nms_thresh=self.test_nms_thresh,
            max_detections=self.max_detections_per_image,
        )
