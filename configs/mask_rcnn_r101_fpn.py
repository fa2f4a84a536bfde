"""Mask R-CNN, R101-FPN, COCO (80 classes): `zoo.MODELS["mask_rcnn_r101_fpn"]`."""

from .common.models.mask_rcnn_fpn import model

# Only `model` so far: the engine work will add `dataloader`, `optimizer`, `lr_multiplier` and
# `train` (imported from configs/common/ like `model`).

model.backbone.depth = 101
