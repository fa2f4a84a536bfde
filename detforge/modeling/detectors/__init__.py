"""Detectors: short compositions of a backbone, an optional neck and heads (``RetinaNet``, ...).

Every detector takes ``forward(images, targets=None, *, original_sizes=None)`` with ``images`` a
list of ``Tensor[C, H, W]`` (uint8 or float, in the model's channel order); it normalises and pads
them itself, returns a dict of ``loss_*`` tensors in training mode and one ``Instances`` per
image (``boxes``, ``scores``, ``labels``) in eval mode.
"""
