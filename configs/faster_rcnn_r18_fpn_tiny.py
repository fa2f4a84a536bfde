"""A small Faster R-CNN for CPU training from scratch: the zoo model `faster_rcnn_r18_fpn_tiny`.

ResNet-18 with GroupNorm (trainable from scratch, unlike FrozenBN), a 64-channel FPN, GroupNorm
heads and RGB ImageNet pixel statistics; 3 classes, as the synthetic dataset used by tests.
"""

from detforge.config import LazyCall as L
from detforge.modeling.zoo import faster_rcnn_r18_fpn_tiny

from .common.data.small_cpu import dataloader  # noqa: F401
from .common.train_cpu import train  # noqa: F401

model = L(faster_rcnn_r18_fpn_tiny)(num_classes=3)
