"""Mask R-CNN, R101-FPN, COCO (80 classes), detectron2's 1x schedule.

The zoo model `mask_rcnn_r101_fpn`: its builder is the one definition of the model.
"""

from detforge.config import LazyCall as L
from detforge.modeling.zoo import mask_rcnn_r101_fpn

from .common.data.coco import dataloader  # noqa: F401
from .common.train import train  # noqa: F401

model = L(mask_rcnn_r101_fpn)(num_classes=80)
