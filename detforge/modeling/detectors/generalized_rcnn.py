"""Two-stage detectors: backbone -> RPN -> RoI heads (Faster R-CNN, Mask R-CNN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from detforge.modeling.dense_heads.rpn import RPN
from detforge.modeling.detectors.detector_io import DetectorIO
from detforge.structures.instances import Instances

__all__ = ["GeneralizedRCNN"]


class GeneralizedRCNN(DetectorIO):
    """Faster / Mask R-CNN: a backbone (with FPN), a region proposal network and RoI heads.

    Args:
        backbone: returns ``dict[str, Tensor]`` of feature maps (e.g. ``BackboneWithFPN``).
        num_classes: number of object classes ``K`` (for target checks).
        rpn: proposes boxes from the features.
        roi_heads: classifies and refines the proposals (``StandardROIHeads``); called as
            ``roi_heads(image_sizes, features, proposals, targets)`` and returning
            ``(detections or sampled proposals, losses)``.
        pixel_mean: per-channel mean, in the order of ``input_format``.
        pixel_std: per-channel std.
        input_format: channel order the images come in (and the weights expect).
        size_divisibility: images are padded to a multiple of it (the largest stride, 32).
        channels_last: run the network on a channels-last (NHWC) batch, faster on CPU and GPU;
            results are the same up to float rounding.
        mask_threshold: threshold of the masks pasted into the original images.

    Inputs and outputs (the detector contract of STYLE.md section 5):
        ``forward(images, targets=None, *, original_sizes=None)`` takes ``Tensor[C, H, W]``
        images (uint8 or float, any sizes). In training mode it returns the losses
        ``{"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"(, "loss_mask")}``; in eval
        mode a list of ``Instances`` with ``boxes``, ``scores``, ``labels`` (and ``masks``:
        bool ``[N, H, W]``), in the coordinates of ``original_sizes`` when given (the sizes
        of the images before the data pipeline resized them), else of the input images.
        Inputs are checked, normalised and padded, and results mapped back, by
        :class:`~detforge.modeling.detectors.detector_io.DetectorIO`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        num_classes: int,
        rpn: RPN,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Literal["BGR", "RGB"] = "BGR",
        size_divisibility: int = 32,
        channels_last: bool = True,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            input_format=input_format,
            size_divisibility=size_divisibility,
            channels_last=channels_last,
        )
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.mask_threshold = mask_threshold

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Instances] | None = None,
        *,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode, detections in eval mode (see the class docstring)."""
        batch, gt, output_sizes = self.prepare_inputs(images, targets, original_sizes)
        features = self.backbone(batch.tensor)
        proposals, rpn_losses = self.rpn(batch.image_sizes, features, gt)
        results, head_losses = self.roi_heads(batch.image_sizes, features, proposals, gt)
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.postprocess(results, output_sizes, mask_threshold=self.mask_threshold)
