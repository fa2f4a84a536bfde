"""Two-stage detectors: backbone -> RPN -> RoI heads (Faster R-CNN, Mask R-CNN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from detforge.modeling.dense_heads.rpn import RPN
from detforge.modeling.postprocess import (
    check_original_sizes,
    check_targets,
    detector_postprocess,
    preprocess_images,
)
from detforge.structures.instances import Instances

__all__ = ["GeneralizedRCNN"]

_FN = "GeneralizedRCNN"


class GeneralizedRCNN(nn.Module):
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
        channels_last: run the network on a channels-last (NHWC) batch, faster on CPU and GPU
            (see ``preprocess_images``); results are the same up to float rounding.
        mask_threshold: threshold of the masks pasted into the original images.

    Inputs and outputs (the detector contract of STYLE.md section 5):
        ``forward(images, targets=None, *, original_sizes=None)`` takes ``Tensor[C, H, W]``
        images (uint8 or float, any sizes). In training mode it returns the losses
        ``{"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"(, "loss_mask")}``; in eval
        mode a list of ``Instances`` with ``boxes``, ``scores``, ``labels`` (and ``masks``:
        bool ``[N, H, W]``), in the coordinates of ``original_sizes`` when given (the sizes
        of the images before the data pipeline resized them), else of the input images.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

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
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError("GeneralizedRCNN: `pixel_mean` and `pixel_std` differ in length")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"GeneralizedRCNN: unknown input_format {input_format!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.input_format = input_format
        self.size_divisibility = size_divisibility
        self.channels_last = channels_last
        self.mask_threshold = mask_threshold

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Instances] | None = None,
        *,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses in training mode, detections in eval mode (see the class docstring)."""
        batch = preprocess_images(
            images,
            self.pixel_mean,
            self.pixel_std,
            size_divisibility=self.size_divisibility,
            owner=_FN,
            channels_last=self.channels_last,
        )
        if self.training:
            checked = check_targets(
                targets, batch.image_sizes, num_classes=self.num_classes, owner=_FN
            )
            targets = [t.to(batch.tensor.device) for t in checked]
        features = self.backbone(batch.tensor)
        proposals, rpn_losses = self.rpn(batch.image_sizes, features, targets)
        results, head_losses = self.roi_heads(batch.image_sizes, features, proposals, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        sizes = batch.image_sizes
        if original_sizes is not None:
            sizes = check_original_sizes(original_sizes, len(results), owner=_FN)
        return [
            detector_postprocess(r, (int(h), int(w)), mask_threshold=self.mask_threshold)
            for r, (h, w) in zip(results, sizes, strict=True)
        ]
