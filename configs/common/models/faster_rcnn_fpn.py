"""Faster R-CNN, ResNet-50 FPN, detectron2 defaults (see ``detforge.modeling.zoo.faster_rcnn``)."""

from detforge.config import LazyCall as L
from detforge.modeling.zoo import faster_rcnn, resnet_fpn_backbone

model = L(faster_rcnn)(
    num_classes=80,
    backbone=L(resnet_fpn_backbone)(depth=50),
    mask=False,
)
