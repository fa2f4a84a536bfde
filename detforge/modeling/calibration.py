"""Data-dependent statistics for the frozen batch norms of a randomly initialised model.

A ResNet with random convolution weights behind identity ``FrozenBatchNorm2d`` layers (what
the zoo builders give without pretrained weights) blows activations up layer after layer, to
~1e4 at res5 on a photo, and the heads then decode degenerate boxes. Trained weights keep
activations near unit scale. :func:`calibrate_frozen_batchnorm` gives a random model that scale:
one forward pass sets each frozen norm's mean and variance to those of its input, in network
order (as LSUV-style initialisations do). Benchmarks use it so that random-weight timings do
the work a trained model does (realistic proposal and detection counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.layers.conv import Conv2dNormAct
from detforge.layers.norms import FrozenBatchNorm2d

__all__ = ["calibrate_frozen_batchnorm"]


@torch.no_grad()
def calibrate_frozen_batchnorm(model: nn.Module, images: Sequence[Tensor]) -> int:
    """Set every ``Conv2dNormAct``'s FrozenBN statistics from one eval forward of ``images``.

    Args:
        model: a detector (or any module) called as ``model(images)``.
        images: its inputs, e.g. ``[Tensor[3, H, W] uint8]``.

    Returns:
        int: the number of frozen norms calibrated. The model's train/eval mode is restored.
    """

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> Tensor:
        assert isinstance(module, Conv2dNormAct) and isinstance(module.norm, FrozenBatchNorm2d)
        norm = module.norm
        # The statistics of the conv's own output (before the norm and the activation).
        raw = module._conv_forward(inputs[0], module.weight, module.bias)
        dims = (0, 2, 3)
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        norm.running_mean.copy_(raw.mean(dims))
        norm.running_var.copy_(raw.var(dims, unbiased=False))
        out = norm(raw)
        return module.activation(out) if module.activation is not None else out

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, Conv2dNormAct) and isinstance(m.norm, FrozenBatchNorm2d)
    ]
    was_training = model.training
    model.eval()
    try:
        model(list(images))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return len(handles)
