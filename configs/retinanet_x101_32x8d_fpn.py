"""RetinaNet, X101-32x8d-FPN, COCO (80 classes), detectron2's 1x schedule.

The zoo model `retinanet_x101_32x8d_fpn`: its builder is the one definition of the model.
"""

from detforge.config import LazyCall as L
from detforge.modeling.zoo import retinanet_x101_32x8d_fpn

from .common.data.coco import dataloader  # noqa: F401
from .common.train import train  # noqa: F401

model = L(retinanet_x101_32x8d_fpn)(num_classes=80)
