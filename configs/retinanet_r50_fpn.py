"""RetinaNet, R50-FPN, COCO (80 classes): `zoo.MODELS["retinanet_r50_fpn"]`."""

from .common.data.coco import dataloader  # noqa: F401
from .common.models.retinanet_fpn import model  # noqa: F401
from .common.train import train  # noqa: F401
