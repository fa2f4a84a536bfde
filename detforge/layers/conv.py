"""Convolution building blocks: the conv-norm-activation unit and ``ShapeSpec``.

:class:`Conv2dNormAct` is an ``nn.Conv2d`` that owns its normalisation layer as a child named
``norm``. Its parameter names are therefore ``<name>.weight`` (the conv), ``<name>.bias`` (only
without a norm) and ``<name>.norm.*``, the layout detectron2 checkpoints use, so converting
their weights is a near-identity mapping of names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from detforge.layers.norms import FrozenBatchNorm2d
from detforge.utils.checks import check_int

__all__ = ["Conv2dNormAct", "ShapeSpec"]


@dataclass(frozen=True)
class ShapeSpec:
    """Description of one feature map produced by a backbone or neck.

    Args:
        channels: number of channels ``C`` of the map.
        stride: input pixels per feature cell (the map is about ``H / stride`` by
            ``W / stride``); a power of two for every model here.
    """

    channels: int
    stride: int

    def __post_init__(self) -> None:
        for field in ("channels", "stride"):
            value = getattr(self, field)
            check_int(value, field, "ShapeSpec", low=1)


class Conv2dNormAct(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm and an optional activation.

    The conv has no bias when a norm follows it (the norm's shift makes it redundant), unless
    ``bias`` says otherwise.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: side ``k`` of the square kernel.
        stride: conv stride.
        padding: zero padding; ``None`` gives ``dilation * (k - 1) // 2`` ("same" for odd ``k``
            at stride 1).
        dilation: conv dilation.
        groups: conv groups; must divide both channel counts.
        bias: whether the conv has a bias; ``None`` means "only when ``norm`` is None".
        norm: module applied after the conv (e.g. from ``get_norm``), stored as ``self.norm``;
            an ``nn.Identity`` counts as no norm for the bias default.
        activation: module applied last (e.g. ``nn.ReLU(inplace=True)``), or None.

    Shape:
        forward: ``Tensor[B, C_in, H, W] -> Tensor[B, C_out, H', W']`` with
        ``H' = floor((H + 2 * padding - dilation * (k - 1) - 1) / stride) + 1`` (same for W).
    """

    norm: nn.Module | None
    activation: nn.Module | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm: nn.Module | None = None,
        activation: nn.Module | None = None,
    ) -> None:
        if not isinstance(kernel_size, int) or kernel_size <= 0:
            raise ValueError(
                f"Conv2dNormAct: `kernel_size` must be a positive int, got {kernel_size!r}"
            )
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        has_norm = norm is not None and not isinstance(norm, nn.Identity)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=(not has_norm) if bias is None else bias,
        )
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        """Conv, then norm, then activation.

        Args:
            x (Tensor[B, C_in, H, W]): input features.

        Returns:
            Tensor[B, C_out, H', W']: see the class docstring for ``H'`` and ``W'``.
        """
        if isinstance(self.norm, FrozenBatchNorm2d):
            # Fold the fixed affine map into the conv: conv(x, W * s) + (b * s + t) equals
            # conv(x, W, b) * s + t, with gradients for W and b, and skips a pass over the map.
            scale, shift = self.norm.scale_and_shift()
            weight = self.weight * scale.view(-1, 1, 1, 1)
            bias = shift if self.bias is None else self.bias * scale + shift
            x = self._conv_forward(x, weight, bias)
        else:
            x = self._conv_forward(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
