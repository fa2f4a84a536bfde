"""RetinaNet, X-101-32x8d-FPN, COCO (80 classes): `zoo.MODELS["retinanet_x101_32x8d_fpn"]`."""

from detforge.modeling.zoo import X101_STD

from .common.data.coco import dataloader  # noqa: F401
from .common.models.retinanet_fpn import model
from .common.train import train  # noqa: F401

# ResNeXt-101 32x8d in pytorch style (stride in the 3x3 conv), as its Facebook weights expect.
model.backbone.depth = 101
model.backbone.groups = 32
model.backbone.width_per_group = 8
model.backbone.stride_in_1x1 = False
model.pixel_std = X101_STD
