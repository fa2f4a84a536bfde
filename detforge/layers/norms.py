"""Normalisation layers for detection backbones and heads.

* :class:`FrozenBatchNorm2d` is batch norm reduced to a fixed per-channel affine map. Detection
  batches are small (often 1-2 images per GPU), too small for useful batch statistics, so
  ImageNet-pretrained backbones keep their statistics and affine terms fixed.
* :class:`SyncBatchNorm2d` is ``torch.nn.SyncBatchNorm`` that behaves exactly like
  ``BatchNorm2d`` when there is nothing to synchronise with (``torch.distributed`` not
  initialised, or a world of one process), so the same model runs on a CPU laptop.
* :func:`get_norm` builds any of them, or group norm, from a short name.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "FrozenBatchNorm2d",
    "NormKind",
    "SyncBatchNorm2d",
    "convert_frozen_batchnorm",
    "get_norm",
]

logger = logging.getLogger(__name__)

NormKind = Literal["", "FrozenBN", "BN", "SyncBN", "GN"]
_NORM_KINDS = ("", "FrozenBN", "BN", "SyncBN", "GN")


def _check_nchw(x: Tensor, channels: int, owner: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}.forward: `x` must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{owner}.forward: `x` must have shape [B, {channels}, H, W], got {list(x.shape)}"
        )


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms: ``y = x * scale + shift``.

    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale`` are
    computed from four *buffers* (``weight``, ``bias``, ``running_mean``, ``running_var``), so the
    module has no parameters, ``train()`` and ``eval()`` compute the same thing, and nothing is
    updated by training. The buffer names match ``BatchNorm2d``'s, so a ``BatchNorm2d`` state
    dict loads as is (``num_batches_tracked`` is ignored). A state dict without running
    statistics (as in old caffe2-converted checkpoints, where the affine terms already contain
    them) loads with ``running_mean = 0`` and ``running_var = 1 - eps``, so that ``scale`` is
    exactly ``weight`` and ``shift`` exactly ``bias``; a fresh module starts the same way (the
    identity map).

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance; a plain attribute, not saved in the state dict.

    Shape:
        forward: ``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"FrozenBatchNorm2d: `num_features` must be > 0, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the frozen affine map.

        Args:
            x (Tensor[B, C, H, W]): input features.

        Returns:
            Tensor[B, C, H, W]: ``x * scale + shift``, in ``x``'s dtype.
        """
        _check_nchw(x, self.num_features, type(self).__name__)
        scale, shift = self.scale_and_shift()
        scale = scale.to(x.dtype).view(1, -1, 1, 1)
        shift = shift.to(x.dtype).view(1, -1, 1, 1)
        return x * scale + shift

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """The affine map as two ``Tensor[C]``: ``y = x * scale + shift``.

        A convolution followed by this norm can fold them into its own weight and bias
        (``Conv2dNormAct`` does), saving a full pass over the feature map.
        """
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        mean_key, var_key = prefix + "running_mean", prefix + "running_var"
        if mean_key not in state_dict and var_key not in state_dict:
            # Caffe2-era checkpoints fold the statistics into weight and bias.
            logger.debug("FrozenBatchNorm2d %s: no running statistics; identity stats", prefix)
            state_dict[mean_key] = torch.zeros_like(self.running_mean)
            state_dict[var_key] = torch.ones_like(self.running_var) - self.eps
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        """Shown by ``repr``: channels and eps."""
        return f"{self.num_features}, eps={self.eps}"


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d``/``SyncBatchNorm`` in ``module`` by a ``FrozenBatchNorm2d``.

    Statistics, affine terms (ones and zeros when the norm has ``affine=False``), ``eps``,
    device and dtype are copied. Conversion happens in place on the children; when ``module``
    itself is a batch norm the new module is returned, so always use the return value.

    Args:
        module: a batch norm or any module containing batch norms.

    Returns:
        nn.Module: ``module`` (converted in place) or its frozen replacement.

    Raises:
        ValueError: when a batch norm has no running statistics (``track_running_stats=False``);
            nothing is converted then.
    """
    targets = (nn.BatchNorm2d, nn.SyncBatchNorm)
    for name, sub in module.named_modules():
        if isinstance(sub, targets) and (sub.running_mean is None or sub.running_var is None):
            raise ValueError(
                "convert_frozen_batchnorm: batch norm "
                f"{name or type(sub).__name__!r} has no running statistics to freeze"
            )
    return _convert(module, targets)


def _convert(module: nn.Module, targets: tuple[type[nn.Module], ...]) -> nn.Module:
    if isinstance(module, targets):
        assert isinstance(module, _BatchNorm)
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        ref = module.running_mean
        assert ref is not None and module.running_var is not None
        frozen.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(ref)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = _convert(child, targets)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


class SyncBatchNorm2d(nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` for 4-D inputs that falls back to ``BatchNorm2d`` semantics.

    Statistics are synchronised across processes only in training mode when
    ``torch.distributed`` is initialised and the process group has more than one member.
    Otherwise (a single process, with or without an initialised group, on any device) the
    forward is exactly ``BatchNorm2d``'s, running-statistics updates included. Plain
    ``nn.SyncBatchNorm`` raises on CPU inputs once a process group exists, even of size one.

    Args:
        num_features: number of channels ``C``.
        eps, momentum, affine, track_running_stats, process_group: as in ``nn.SyncBatchNorm``.

    Shape:
        forward: ``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        _check_nchw(input, self.num_features, type(self).__name__)

    def _needs_sync(self) -> bool:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return dist.get_world_size(group) > 1

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` (Tensor[B, C, H, W]); see the class docstring for when it syncs."""
        if self._needs_sync():
            return super().forward(input)
        return _BatchNorm.forward(self, input)


def get_norm(kind: NormKind, channels: int, *, num_groups: int = 32) -> nn.Module:
    """Build a 2-D normalisation layer from its short name.

    Args:
        kind: ``""`` (no norm: ``nn.Identity``), ``"FrozenBN"``, ``"BN"`` (``nn.BatchNorm2d``),
            ``"SyncBN"`` (:class:`SyncBatchNorm2d`) or ``"GN"`` (``nn.GroupNorm``).
        channels: number of channels ``C`` the layer normalises.
        num_groups: groups for ``"GN"``; must divide ``channels``. Ignored otherwise.

    Returns:
        nn.Module: maps ``Tensor[B, C, H, W]`` to ``Tensor[B, C, H, W]``.
    """
    if kind not in _NORM_KINDS:
        raise ValueError(f"get_norm: `kind` must be one of {_NORM_KINDS}, got {kind!r}")
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"get_norm: `channels` must be a positive int, got {channels!r}")
    if kind == "":
        return nn.Identity()
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "SyncBN":
        return SyncBatchNorm2d(channels)
    if num_groups <= 0 or channels % num_groups != 0:
        raise ValueError(
            f"get_norm: GN needs `num_groups` ({num_groups}) to divide `channels` ({channels})"
        )
    return nn.GroupNorm(num_groups, channels)
