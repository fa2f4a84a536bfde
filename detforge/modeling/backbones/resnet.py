"""ResNet and ResNeXt backbones (He et al., 2016; Xie et al., 2017) returning named feature maps.

Stages are named as in detectron2 and their strides are fixed: ``stem`` (stride 4, after the
max pool), ``res2`` (4), ``res3`` (8), ``res4`` (16), ``res5`` (32, or 16 with
``res5_dilation=2``). Parameter names mirror detectron2's so that its checkpoints load after
dropping the ``backbone.bottom_up.`` prefix: ``stem.conv1.weight``, ``stem.conv1.norm.*``,
``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``, ``res2.0.shortcut.weight``,
``res2.0.shortcut.norm.*``, ... A torchvision checkpoint maps by renaming ``conv1 -> stem.conv1``,
``bn1 -> stem.conv1.norm``, ``layer{k}.{i}.conv{j} -> res{k+1}.{i}.conv{j}``,
``layer{k}.{i}.bn{j} -> res{k+1}.{i}.conv{j}.norm``, ``downsample.0 -> shortcut`` and
``downsample.1 -> shortcut.norm`` (torchvision is pytorch style: ``stride_in_1x1=False``).

Freezing (``freeze_at``) sets ``requires_grad=False`` on every parameter of the frozen stages and
turns their ``BatchNorm2d``/``SyncBatchNorm`` layers into ``FrozenBatchNorm2d`` with the same
statistics, so batch statistics are neither used nor accumulated there, in train mode too.
``FrozenBatchNorm2d`` layers are unchanged (they have no parameters); ``GroupNorm`` layers only
lose their gradients, since group norm has no statistics to freeze.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from detforge.layers.conv import Conv2dNormAct, ShapeSpec
from detforge.layers.norms import NormKind, convert_frozen_batchnorm, get_norm

__all__ = [
    "BLOCKS_PER_STAGE",
    "STAGE_NAMES",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
]

#: Number of residual blocks in res2..res5 for each depth.
BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_NAMES = ("stem", "res2", "res3", "res4", "res5")
_STEM_CHANNELS = 64


def _conv(
    in_channels: int,
    out_channels: int,
    k: int,
    norm: NormKind,
    *,
    relu: bool,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> Conv2dNormAct:
    """``k x k`` "same"-padded conv, a norm of kind ``norm`` and, if ``relu``, an in-place ReLU."""
    return Conv2dNormAct(
        in_channels,
        out_channels,
        k,
        stride=stride,
        dilation=dilation,
        groups=groups,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU(inplace=True) if relu else None,
    )


class BasicStem(nn.Module):
    """ResNet stem: 7x7 stride-2 conv, norm, ReLU, then 3x3 stride-2 max pool (padding 1).

    Args:
        in_channels: image channels ``C_in``.
        out_channels: stem channels ``C``.
        norm: norm kind, see ``get_norm``.

    Shape:
        forward: ``Tensor[B, C_in, H, W] -> Tensor[B, C, ceil(ceil(H / 2) / 2), ...]`` (stride 4).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: NormKind = "BN") -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 7, norm, relu=True, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the stem to ``x`` (Tensor[B, C_in, H, W]); returns Tensor[B, C, H/4, W/4]."""
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: NormKind) -> nn.Module | None:
    """1x1 projection when the block changes shape, else None (identity shortcut)."""
    if in_channels == out_channels and stride == 1:
        return None
    return _conv(in_channels, out_channels, 1, norm, relu=False, stride=stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34).

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C``.
        stride: stride of the first 3x3 conv and of the projection shortcut.
        norm: norm kind, see ``get_norm``.
        dilation: dilation of both 3x3 convs.

    Shape:
        forward: ``Tensor[B, C_in, H, W] -> Tensor[B, C, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, norm: NormKind, dilation: int
    ) -> None:
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        c_in, c = in_channels, out_channels
        self.conv1 = _conv(c_in, c, 3, norm, relu=True, stride=stride, dilation=dilation)
        self.conv2 = _conv(c, c, 3, norm, relu=False, dilation=dilation)

    @property
    def last_conv(self) -> Conv2dNormAct:
        """The conv whose output is added to the shortcut."""
        return self.conv2

    def forward(self, x: Tensor) -> Tensor:
        """``relu(conv2(conv1(x)) + shortcut(x))``; see the class docstring for shapes."""
        out = self.conv2(self.conv1(x))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand, with a residual connection.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C``.
        bottleneck_channels: channels of the 3x3 conv.
        stride: block stride, applied in ``conv1`` (``stride_in_1x1=True``, the MSRA/caffe
            layout of the original Detectron weights) or in ``conv2`` (``False``, the pytorch
            layout, "ResNet v1.5"), and in the projection shortcut.
        groups: groups of the 3x3 conv (the ResNeXt cardinality).
        norm: norm kind, see ``get_norm``.
        stride_in_1x1: where the stride goes, see ``stride``.
        dilation: dilation of the 3x3 conv.

    Shape:
        forward: ``Tensor[B, C_in, H, W] -> Tensor[B, C, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int,
        groups: int,
        norm: NormKind,
        stride_in_1x1: bool,
        dilation: int,
    ) -> None:
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        mid = bottleneck_channels
        self.conv1 = _conv(in_channels, mid, 1, norm, relu=True, stride=stride_1x1)
        self.conv2 = _conv(
            mid, mid, 3, norm, relu=True, stride=stride_3x3, dilation=dilation, groups=groups
        )
        self.conv3 = _conv(mid, out_channels, 1, norm, relu=False)

    @property
    def last_conv(self) -> Conv2dNormAct:
        """The conv whose output is added to the shortcut."""
        return self.conv3

    def forward(self, x: Tensor) -> Tensor:
        """``relu(conv3(conv2(conv1(x))) + shortcut(x))``; see the class docstring for shapes."""
        out = self.conv3(self.conv2(self.conv1(x)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


def _make_stage(
    depth: int,
    stage: int,
    in_channels: int,
    *,
    first_stride: int,
    dilation: int,
    norm: NormKind,
    groups: int,
    width_per_group: int,
    stride_in_1x1: bool,
) -> tuple[nn.Sequential, int]:
    """Stage ``res{stage + 2}`` (``BLOCKS_PER_STAGE[depth][stage]`` blocks) and its channels."""
    blocks: list[nn.Module] = []
    for i in range(BLOCKS_PER_STAGE[depth][stage]):
        stride = first_stride if i == 0 else 1
        if depth < 50:
            out = _STEM_CHANNELS * 2**stage
            blocks.append(BasicBlock(in_channels, out, stride=stride, norm=norm, dilation=dilation))
        else:
            out = 4 * _STEM_CHANNELS * 2**stage
            mid = groups * width_per_group * 2**stage
            blocks.append(
                BottleneckBlock(
                    in_channels,
                    out,
                    bottleneck_channels=mid,
                    stride=stride,
                    groups=groups,
                    norm=norm,
                    stride_in_1x1=stride_in_1x1,
                    dilation=dilation,
                )
            )
        in_channels = out
    return nn.Sequential(*blocks), in_channels


def _check_args(
    depth: int, out_features: Sequence[str], freeze_at: int, groups: int, width: int, dil: int
) -> None:
    problems = []
    if depth not in BLOCKS_PER_STAGE:
        problems.append(f"`depth` must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth!r}")
    names = [] if isinstance(out_features, str) else list(out_features)  # "res5" is an error
    if not names or any(f not in STAGE_NAMES for f in names) or len(set(names)) != len(names):
        problems.append(
            f"`out_features` must be a non-empty sequence of distinct names from {STAGE_NAMES}, "
            f"got {out_features!r}"
        )
    if not 0 <= freeze_at <= 5:
        problems.append(f"`freeze_at` must be in 0..5, got {freeze_at!r}")
    if dil not in (1, 2):
        problems.append(f"`res5_dilation` must be 1 or 2, got {dil!r}")
    if groups <= 0 or width <= 0 or (depth < 50 and (groups, width) != (1, 64)):
        problems.append(
            f"`groups`, `width_per_group` must be positive, and 1, 64 for the basic blocks of "
            f"depths 18 and 34; got {groups}, {width} for depth {depth}"
        )
    if problems:
        raise ValueError("ResNet: " + "; ".join(problems))


class ResNet(nn.Module):
    """ResNet/ResNeXt trunk returning the feature maps named in ``out_features``.

    Stages after the last requested one are not built (a C4 detector asking for ``res4`` only
    gets no ``res5`` here). See the module docstring for parameter names and freezing.

    Args:
        depth: 18 or 34 (basic blocks), 50, 101 or 152 (bottleneck blocks).
        out_features: which of ``"stem", "res2", "res3", "res4", "res5"`` to return.
        norm: norm kind of every conv, see ``get_norm`` (GN uses 32 groups).
        freeze_at: 0 freezes nothing, 1 the stem, 2 the stem and res2, ..., 5 everything.
        stride_in_1x1: put each bottleneck block's stride on its first 1x1 conv (MSRA/caffe
            style, original Detectron weights) instead of the 3x3 conv (pytorch style,
            torchvision weights). Ignored by basic blocks.
        groups: ResNeXt cardinality of the 3x3 convs (1 for ResNet).
        width_per_group: channels per group of res2's 3x3 conv (64 for ResNet); the bottleneck
            width is ``groups * width_per_group``, doubled at each later stage.
        res5_dilation: 2 gives res5 stride 1 and dilation 2 in its 3x3 convs (output stride 16).
        zero_init_residual: zero the weight of the last norm of each block, so every block
            starts as the identity (Goyal et al., 2017). Needs a norm.
        in_channels: image channels.

    Shape:
        forward: ``Tensor[B, in_channels, H, W]`` to ``dict[str, Tensor[B, C, H_s, W_s]]`` with
        ``C`` and ``s`` from ``output_shape()`` and ``H_s = ceil(H / s)`` (every conv pads).
    """

    def __init__(
        self,
        *,
        depth: Literal[18, 34, 50, 101, 152],
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        norm: NormKind = "BN",
        freeze_at: int = 0,
        stride_in_1x1: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        res5_dilation: Literal[1, 2] = 1,
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_args(depth, out_features, freeze_at, groups, width_per_group, res5_dilation)
        if zero_init_residual and norm == "":
            raise ValueError("ResNet: `zero_init_residual=True` needs a norm, got norm=''")
        self.depth = depth
        self.in_channels = in_channels
        self.out_features = tuple(f for f in STAGE_NAMES if f in out_features)
        self.stem = BasicStem(in_channels, _STEM_CHANNELS, norm)
        self._shapes = {"stem": ShapeSpec(_STEM_CHANNELS, 4)}
        self.stage_names: list[str] = []
        ch, stride = _STEM_CHANNELS, 4
        for i in range(STAGE_NAMES.index(self.out_features[-1])):
            name = f"res{i + 2}"
            dilation = res5_dilation if name == "res5" else 1
            first_stride = 1 if i == 0 or dilation > 1 else 2
            stage, ch = _make_stage(
                depth,
                i,
                ch,
                first_stride=first_stride,
                dilation=dilation,
                norm=norm,
                groups=groups,
                width_per_group=width_per_group,
                stride_in_1x1=stride_in_1x1,
            )
            stride *= first_stride
            self.add_module(name, stage)
            self.stage_names.append(name)
            self._shapes[name] = ShapeSpec(ch, stride)
        self._init_weights(zero_init_residual)
        self.freeze(freeze_at)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """MSRA fill (kaiming normal, fan_out, ReLU) for convs, zero conv bias, unit norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.SyncBatchNorm | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | BottleneckBlock):
                    last_norm = m.last_conv.norm
                    assert last_norm is not None
                    weight = last_norm.weight
                    assert isinstance(weight, Tensor)
                    nn.init.zeros_(weight)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and stages ``res2..res{freeze_at}``.

        See the module docstring for what freezing does to each norm kind. Freezing is not
        undone by a later call with a smaller ``freeze_at``.

        Args:
            freeze_at: 0..5, as in the constructor.
        """
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"ResNet.freeze: `freeze_at` must be in 0..5, got {freeze_at!r}")
        names = ["stem", *self.stage_names][:freeze_at]
        for name in names:
            module = getattr(self, name)
            for p in module.parameters():
                p.requires_grad_(False)
            self.add_module(name, convert_frozen_batchnorm(module))

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each returned feature map, keyed like ``forward``'s output."""
        return {name: self._shapes[name] for name in self.out_features}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the trunk.

        Args:
            x (Tensor[B, in_channels, H, W]): normalised images.

        Returns:
            dict[str, Tensor[B, C, H_s, W_s]]: the maps in ``out_features``, in stage order.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"ResNet.forward: `x` must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet.forward: `x` must have shape [B, {self.in_channels}, H, W], "
                f"got {list(x.shape)}"
            )
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18; ``kwargs`` are ``ResNet``'s keyword arguments other than ``depth``."""
    return ResNet(depth=18, **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34; ``kwargs`` are ``ResNet``'s keyword arguments other than ``depth``."""
    return ResNet(depth=34, **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50; ``kwargs`` are ``ResNet``'s keyword arguments other than ``depth``."""
    return ResNet(depth=50, **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101; ``kwargs`` are ``ResNet``'s keyword arguments other than ``depth``."""
    return ResNet(depth=101, **kwargs)


def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152; ``kwargs`` are ``ResNet``'s keyword arguments other than ``depth``."""
    return ResNet(depth=152, **kwargs)


def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d; ``kwargs`` as ``ResNet``'s, minus depth, groups, width_per_group."""
    return ResNet(depth=50, groups=32, width_per_group=4, **kwargs)


def resnext101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d; ``kwargs`` as ``ResNet``'s, minus depth, groups, width_per_group."""
    return ResNet(depth=101, groups=32, width_per_group=8, **kwargs)


def resnext101_64x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d; ``kwargs`` as ``ResNet``'s, minus depth, groups, width_per_group."""
    return ResNet(depth=101, groups=64, width_per_group=4, **kwargs)
