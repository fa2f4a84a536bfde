"""Faster R-CNN, R101-FPN, COCO (80 classes), detectron2's 1x schedule.

The zoo model `faster_rcnn_r101_fpn`: its builder is the one definition of the model.
"""

from detforge.config import LazyCall as L
from detforge.modeling.zoo import faster_rcnn_r101_fpn

from .common.data.coco import dataloader  # noqa: F401
from .common.train import train  # noqa: F401

model = L(faster_rcnn_r101_fpn)(num_classes=80)
