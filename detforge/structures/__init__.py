"""Tensor containers and geometry with no model logic: boxes, instances, image batches, masks,
keypoints. Import from the submodules, e.g. ``from detforge.structures.boxes import box_iou``."""
