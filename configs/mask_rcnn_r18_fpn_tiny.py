"""A small Mask R-CNN for CPU: the tiny Faster R-CNN plus a mask head (`mask_rcnn_r18_fpn_tiny`)."""

from .faster_rcnn_r18_fpn_tiny import dataloader, model, train  # noqa: F401

model.mask = True
