"""RetinaNet (Lin et al., 2017): one-stage detection with anchors on a pyramid and focal loss.

Computation (detectron2's ``RetinaNet`` wherever results depend on it, so that converted
detectron2 checkpoints give the same detections):

1. **Preprocess** (:class:`~detforge.modeling.detectors.detector_io.DetectorIO`): check the
   inputs, cast each image to the buffers' dtype, ``(x - pixel_mean) / pixel_std``, pad with
   zeros (bottom/right) to a multiple of ``size_divisibility`` (32, as detectron2 pads RetinaNet
   inputs: its FPN's bottom-up stride).
2. **Predict**: ``backbone`` (then ``neck``) gives named maps; the head sees ``in_features``,
   finest first, and its ``[B, A * K, H, W]`` logits / ``[B, A * 4, H, W]`` deltas are reordered
   to ``[B, H * W * A, K]`` / ``[B, H * W * A, 4]``, the anchor order
   (:func:`~detforge.modeling.dense_heads.dense_anchors.permute_to_n_hwa_k`).
3. **Train** / **infer**: anchor labels, focal and box losses over an EMA of the foreground
   count, or per-level candidates and class-wise NMS, in
   :class:`~detforge.modeling.dense_heads.retina_outputs.RetinaNetOutputs` (``self.outputs``;
   its module docstring has the details, DDP included).
4. **Postprocess** (detectron2's ``detector_postprocess``): scale boxes by ``out / in`` per axis
   to ``original_sizes`` (default: the input sizes), clip, drop zero-width/height boxes.

The loss keys are ``loss_cls``/``loss_box`` (detectron2: ``loss_box_reg``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from detforge.modeling.anchors import AnchorGenerator
from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.dense_anchors import permute_to_n_hwa_k
from detforge.modeling.dense_heads.retina_outputs import RetinaNetOutputs
from detforge.modeling.detectors.detector_io import DetectorIO
from detforge.modeling.matcher import Matcher
from detforge.structures.instances import Instances

__all__ = ["RetinaNet"]


class RetinaNet(DetectorIO):
    """RetinaNet: backbone (+ neck), a dense head on every level, focal loss, class-wise NMS.

    See the module docstring for the computation. The settings of the losses and of inference
    live on ``outputs`` (e.g. ``model.outputs.test_nms_thresh``); ``test_score_thresh``,
    ``loss_normalizer`` and ``loss_normalizer_momentum`` are also attributes of the model.

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
        focal_loss_alpha, focal_loss_gamma, smooth_l1_beta, box_reg_loss_type,
            test_score_thresh, test_topk_candidates, test_nms_thresh, max_detections_per_image,
            loss_normalizer_momentum, loss_normalizer_init: see ``RetinaNetOutputs``.
        pixel_mean, pixel_std, input_format, size_divisibility, channels_last: see
            ``DetectorIO`` (buffers ``pixel_mean``/``pixel_std``; padding to 32 as detectron2).

    Inputs and outputs (the detector contract of STYLE.md section 5):
        ``forward(images, targets=None, *, original_sizes=None)`` takes ``Tensor[C, H_i, W_i]``
        images (uint8 or float, in ``input_format`` order). In training mode, with one
        ``Instances`` of ``boxes`` (xyxy, the image's pixels) and int64 ``labels`` in
        ``[0, K)`` per image, it returns ``{"loss_cls", "loss_box"}`` scalars; in eval mode one
        ``Instances`` per image with ``boxes``, ``scores`` and ``labels``, by decreasing score,
        at most ``max_detections_per_image``, in the coordinates of ``original_sizes`` when
        given, else of the input images.
    """

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
        super().__init__(
            num_classes=num_classes,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            input_format=input_format,
            size_divisibility=size_divisibility,
            channels_last=channels_last,
        )
        if isinstance(in_features, str) or len(in_features) != anchor_generator.num_levels:
            raise ValueError(
                f"RetinaNet: `in_features` {in_features!r} must name one map per anchor level "
                f"({anchor_generator.num_levels})"
            )
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator
        self.in_features = list(in_features)
        self.outputs = RetinaNetOutputs(
            box_coder=box_coder,
            anchor_matcher=anchor_matcher,
            num_classes=num_classes,
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
            smooth_l1_beta=smooth_l1_beta,
            box_reg_loss_type=box_reg_loss_type,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
            loss_normalizer_momentum=loss_normalizer_momentum,
            loss_normalizer_init=loss_normalizer_init,
        )

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Instances] | None = None,
        *,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode, detections in eval mode (see the class docstring)."""
        batch, gt, output_sizes = self.prepare_inputs(images, targets, original_sizes)
        features = self.extract_features(batch.tensor)
        anchors = self.anchor_generator(features)  # list of [N_l, 4]
        logits, deltas = self.predict(features)  # lists of [B, N_l, K] and [B, N_l, 4]
        if self.training:
            assert gt is not None  # checked by prepare_inputs
            return self.outputs.losses(anchors, logits, deltas, gt)
        detections = self.outputs.inference(anchors, logits, deltas, batch.image_sizes)
        return self.postprocess(detections, output_sizes)

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
            raise TypeError("RetinaNet: the backbone/neck must return a dict of feature maps")
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise ValueError(
                f"RetinaNet: `in_features` {missing} not produced by the backbone/neck, which "
                f"returns {list(features)}"
            )
        return [features[f] for f in self.in_features]

    def predict(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Run the head, check its output shapes, and reorder to the anchor order.

        Returns:
            logits (list[Tensor[B, N_l, K]]) and deltas (list[Tensor[B, N_l, 4]]) per level,
            ``N_l = H_l * W_l * A``.
        """
        logits, deltas = self.head(features)
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(logits) != len(features) or len(deltas) != len(features):
            raise ValueError("RetinaNet: the head must return one output per level")
        k = self.num_classes
        for lvl, (x, lg, dl, a) in enumerate(
            zip(features, logits, deltas, num_anchors, strict=True)
        ):
            b, _, h, w = x.shape
            want_lg, want_dl = [b, a * k, h, w], [b, a * 4, h, w]
            if list(lg.shape) != want_lg or list(dl.shape) != want_dl:
                raise ValueError(
                    f"RetinaNet: head output of level {lvl} ({self.in_features[lvl]}) has logits "
                    f"{list(lg.shape)} and deltas {list(dl.shape)}; expected {want_lg} and "
                    f"{want_dl} ({a} anchors, {k} classes)"
                )
        return [permute_to_n_hwa_k(x, k) for x in logits], [
            permute_to_n_hwa_k(x, 4) for x in deltas
        ]

    @property
    def test_score_thresh(self) -> float:
        """``outputs.test_score_thresh``: inference keeps class scores strictly above it."""
        return self.outputs.test_score_thresh

    @test_score_thresh.setter
    def test_score_thresh(self, value: float) -> None:
        self.outputs.test_score_thresh = value

    @property
    def loss_normalizer(self) -> float:
        """``outputs.loss_normalizer``: the EMA foreground count the losses are divided by."""
        return self.outputs.loss_normalizer

    @loss_normalizer.setter
    def loss_normalizer(self, value: float) -> None:
        self.outputs.loss_normalizer = value

    @property
    def loss_normalizer_momentum(self) -> float:
        """``outputs.loss_normalizer_momentum``: the momentum of that EMA."""
        return self.outputs.loss_normalizer_momentum

    @loss_normalizer_momentum.setter
    def loss_normalizer_momentum(self, value: float) -> None:
        self.outputs.loss_normalizer_momentum = value
