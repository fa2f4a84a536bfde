"""A small RetinaNet for CPU training from scratch: `zoo.MODELS["retinanet_r18_fpn_tiny"]`.

ResNet-18 with GroupNorm, a 64-channel P3-P7 FPN, GroupNorm heads and RGB ImageNet pixel
statistics; 3 classes, as the synthetic dataset used by tests.
"""

from .common.data.small_cpu import dataloader  # noqa: F401
from .common.models.retinanet_fpn import model
from .common.train_cpu import train  # noqa: F401

model.num_classes = 3
model.backbone.depth = 18
model.backbone.norm = "GN"
model.backbone.freeze_at = 0
model.backbone.stride_in_1x1 = False
model.backbone.out_channels = 64
model.backbone.fpn_norm = "GN"
model.head_norm = "GN"
model.pixel_mean = (123.675, 116.28, 103.53)
model.pixel_std = (58.395, 57.12, 57.375)
model.input_format = "RGB"
