"""Mask R-CNN, R50-FPN, COCO (80 classes): `zoo.MODELS["mask_rcnn_r50_fpn"]`."""

from .common.data.coco import dataloader  # noqa: F401
from .common.models.mask_rcnn_fpn import model  # noqa: F401
from .common.train import train  # noqa: F401
