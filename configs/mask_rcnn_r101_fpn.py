"""Mask R-CNN, R101-FPN, COCO (80 classes): `zoo.MODELS["mask_rcnn_r101_fpn"]`."""

from .common.data.coco import dataloader  # noqa: F401
from .common.models.mask_rcnn_fpn import model
from .common.train import train  # noqa: F401

model.backbone.depth = 101
