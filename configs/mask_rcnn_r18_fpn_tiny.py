"""A small Mask R-CNN for CPU: the tiny Faster R-CNN plus a mask head (`mask_rcnn_r18_fpn_tiny`)."""

from .faster_rcnn_r18_fpn_tiny import model

# Only `model` so far: the engine work will add `dataloader`, `optimizer`, `lr_multiplier` and
# `train` (imported from configs/common/ like `model`).

model.mask = True
