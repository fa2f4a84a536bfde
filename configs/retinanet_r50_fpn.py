"""RetinaNet, R50-FPN, COCO (80 classes): `zoo.MODELS["retinanet_r50_fpn"]`."""

from .common.models.retinanet_fpn import model  # noqa: F401 (this config is that model as is)

# Only `model` so far: the engine work will add `dataloader`, `optimizer`, `lr_multiplier` and
# `train` (imported from configs/common/ like `model`).
