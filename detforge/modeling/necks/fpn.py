"""Feature Pyramid Network (Lin et al., 2017) with the usual extra top levels.

Each input map gets a 1x1 lateral conv to ``out_channels``. Starting from the coarsest level,
the running top-down map is upsampled by nearest neighbour to the exact size of the next finer
lateral and added to it (sizes need not divide: for a lateral of size ``n`` above a coarser map
of size ``ceil(n / 2)``, resizing to ``n`` equals a 2x repeat cropped to ``n``). A 3x3 output
conv then smooths every level. Outputs are named by stride: ``p{log2(stride)}``, so a stride-4
input gives ``p2``.

A :class:`TopBlock` adds coarser levels: :class:`LastLevelMaxPool` (P6 by subsampling P5, for
R-CNN's RPN) or :class:`LastLevelP6P7` (two stride-2 convs, for RetinaNet).

Module names mirror detectron2's FPN (``fpn_lateral{level}``, ``fpn_output{level}``,
``top_block.p6``, ``top_block.p7``) so that its checkpoints convert by dropping a prefix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from detforge.layers.conv import Conv2dNormAct, ShapeSpec
from detforge.layers.norms import NormKind, get_norm

__all__ = ["FPN", "BackboneWithFPN", "LastLevelMaxPool", "LastLevelP6P7", "TopBlock"]


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's XavierFill as detectron2 reproduces it: kaiming uniform with ``a=1``, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class TopBlock(nn.Module):
    """Base of the blocks that add pyramid levels above the coarsest FPN level.

    Attributes:
        in_feature: name of the map the block reads: an FPN output (``"p5"``) or a backbone
            feature (``"res5"``).
        num_levels: how many levels ``forward`` returns, each at twice the previous stride.
        in_channels: channels the block expects, or None when it accepts any.
        out_channels: channels of every returned level, or None when equal to the input's.
    """

    in_feature: str
    num_levels: int
    in_channels: int | None = None
    out_channels: int | None = None

    def forward(self, x: Tensor) -> list[Tensor]:
        """Map ``x`` (Tensor[B, C, H, W]) to ``num_levels`` coarser maps, finest first."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")


class LastLevelMaxPool(TopBlock):
    """P6 = ``max_pool2d(P5, kernel_size=1, stride=2)``, i.e. P5 subsampled (Faster/Mask R-CNN).

    Args:
        in_feature: map to subsample, ``"p5"`` by default.

    Shape:
        forward: ``Tensor[B, C, H, W] -> [Tensor[B, C, ceil(H / 2), ceil(W / 2)]]``.
    """

    def __init__(self, in_feature: str = "p5") -> None:
        super().__init__()
        self.in_feature = in_feature
        self.num_levels = 1

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return ``[P6]``; see the class docstring."""
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(TopBlock):
    """P6 = conv3x3/s2(x), P7 = conv3x3/s2(relu(P6)) (RetinaNet; FCOS reads ``"p5"``).

    Args:
        in_channels: channels of the input map (2048 for ResNet-50's res5).
        out_channels: channels of P6 and P7; must equal the FPN's ``out_channels``.
        in_feature: ``"res5"`` (RetinaNet paper, detectron2) or ``"p5"``.

    Shape:
        forward: ``Tensor[B, in_channels, H, W] -> [Tensor[B, out_channels, H6, W6],
        Tensor[B, out_channels, H7, W7]]`` with ``H6 = ceil(H / 2)`` and ``H7 = ceil(H6 / 2)``.
    """

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5") -> None:
        super().__init__()
        self.in_feature = in_feature
        self.num_levels = 2
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            _c2_xavier_fill(conv)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return ``[P6, P7]``; see the class docstring."""
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


def _levels(in_shapes: Mapping[str, ShapeSpec], in_features: Sequence[str]) -> list[int]:
    """``log2(stride)`` of each input, checked to be consecutive powers of two."""
    if isinstance(in_features, str) or not in_features:
        raise ValueError(f"FPN: `in_features` must be a non-empty sequence, got {in_features!r}")
    missing = [f for f in in_features if f not in in_shapes]
    if missing:
        raise ValueError(f"FPN: `in_features` {missing} not in `in_shapes` {list(in_shapes)}")
    strides = [in_shapes[f].stride for f in in_features]
    levels = [int(math.log2(s)) for s in strides]
    if any(2**lvl != s for lvl, s in zip(levels, strides, strict=True)) or any(
        b != a + 1 for a, b in zip(levels, levels[1:], strict=False)
    ):
        raise ValueError(
            "FPN: `in_features` must have power-of-two strides, each twice the previous; got "
            f"strides {dict(zip(in_features, strides, strict=True))}"
        )
    return levels


class FPN(nn.Module):
    """Feature pyramid over backbone maps (see the module docstring for the computation).

    Args:
        in_shapes: shape of every backbone output, e.g. ``backbone.output_shape()``.
        in_features: backbone maps to use, finest first, with strides doubling
            (e.g. ``("res2", "res3", "res4", "res5")``).
        out_channels: channels ``C`` of every pyramid level.
        norm: norm after each lateral and output conv; convs have a bias only without one.
        top_block: adds coarser levels after the last one, or None.
        fuse: ``"sum"`` adds lateral and upsampled map; ``"avg"`` also halves the sum.

    Shape:
        forward: ``dict[str, Tensor[B, C_in, H_s, W_s]] -> dict[str, Tensor[B, C, H_s, W_s]]``,
        keyed ``p{log2(s)}``, finest first (``output_shape()`` gives the strides); the maps from
        the top block have sizes ``ceil(H_prev / 2)``.
    """

    def __init__(
        self,
        in_shapes: Mapping[str, ShapeSpec],
        in_features: Sequence[str],
        out_channels: int,
        *,
        norm: NormKind = "",
        top_block: TopBlock | None = None,
        fuse: Literal["sum", "avg"] = "sum",
    ) -> None:
        super().__init__()
        levels = _levels(in_shapes, in_features)
        if not isinstance(out_channels, int) or out_channels <= 0:
            raise ValueError(f"FPN: `out_channels` must be a positive int, got {out_channels!r}")
        if fuse not in ("sum", "avg"):
            raise ValueError(f"FPN: `fuse` must be 'sum' or 'avg', got {fuse!r}")
        self.in_features = tuple(in_features)
        self.in_channels = {f: in_shapes[f].channels for f in in_features}
        self.fuse = fuse
        self._levels = levels
        self._shapes = {f"p{lvl}": ShapeSpec(out_channels, 2**lvl) for lvl in levels}
        for feature, lvl in zip(self.in_features, levels, strict=True):
            lateral = Conv2dNormAct(
                self.in_channels[feature], out_channels, 1, norm=get_norm(norm, out_channels)
            )
            output = Conv2dNormAct(out_channels, out_channels, 3, norm=get_norm(norm, out_channels))
            _c2_xavier_fill(lateral)
            _c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{lvl}", lateral)
            self.add_module(f"fpn_output{lvl}", output)
        self.top_block = top_block
        if top_block is not None:
            self._add_top_levels(top_block, in_shapes, out_channels)

    def _add_top_levels(
        self, top_block: TopBlock, in_shapes: Mapping[str, ShapeSpec], out_channels: int
    ) -> None:
        """Check ``top_block`` against the pyramid and record the shapes of its levels."""
        if not isinstance(top_block, TopBlock):
            raise TypeError(f"FPN: `top_block` must be a TopBlock, got {type(top_block).__name__}")
        src = top_block.in_feature
        shape = self._shapes.get(src) or in_shapes.get(src)
        if shape is None:
            raise ValueError(
                f"FPN: top block input {src!r} is neither an FPN output {list(self._shapes)} "
                f"nor a backbone feature {list(in_shapes)}"
            )
        top = 2 ** self._levels[-1]
        expect_in = top_block.in_channels
        got_out = top_block.out_channels if top_block.out_channels is not None else shape.channels
        if (
            shape.stride != top
            or expect_in not in (None, shape.channels)
            or got_out != out_channels
        ):
            raise ValueError(
                f"FPN: top block input {src!r} is {shape}; it needs stride {top} (the coarsest "
                f"level), channels {expect_in} (or any if None), and the block must output "
                f"{out_channels} channels, got {got_out}"
            )
        for k in range(1, top_block.num_levels + 1):
            lvl = self._levels[-1] + k
            self._shapes[f"p{lvl}"] = ShapeSpec(out_channels, 2**lvl)

    @property
    def size_divisibility(self) -> int:
        """Stride of the coarsest *input* level (32 for res5): inputs are padded to a multiple.

        This is detectron2's choice: the extra top-block levels (P6, P7) use ceil-mode stride-2
        ops and do not need it, and padding to their stride (64 or 128) would change results.
        """
        return 2 ** self._levels[-1]

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output, keyed and ordered like ``forward``'s output."""
        return dict(self._shapes)

    def _check_inputs(self, features: Mapping[str, Tensor]) -> None:
        needed = list(self.in_features)
        if self.top_block is not None and self.top_block.in_feature not in self._shapes:
            needed.append(self.top_block.in_feature)
        missing = [f for f in needed if f not in features]
        if missing:
            raise ValueError(f"FPN.forward: `features` lacks {missing}; got {list(features)}")
        for f in self.in_features:
            x = features[f]
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels[f]:
                got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"FPN.forward: `features[{f!r}]` must have shape "
                    f"[B, {self.in_channels[f]}, H, W], got {got}"
                )

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Build the pyramid.

        Args:
            features: backbone maps (Tensor[B, C_in, H_s, W_s]) holding at least
                ``in_features`` (and the top block's input when that is a backbone map).

        Returns:
            dict[str, Tensor[B, C, H_s, W_s]]: ``p{level}`` maps, finest first, sized like their
            inputs.
        """
        self._check_inputs(features)
        outputs: dict[str, Tensor] = {}
        prev: Tensor | None = None
        for feature, lvl in reversed(list(zip(self.in_features, self._levels, strict=True))):
            lateral = getattr(self, f"fpn_lateral{lvl}")(features[feature])  # [B, C, H_s, W_s]
            if prev is not None:
                lateral = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
                if self.fuse == "avg":
                    lateral = lateral / 2
            prev = lateral
            outputs[f"p{lvl}"] = getattr(self, f"fpn_output{lvl}")(lateral)
        outputs = dict(reversed(outputs.items()))
        if self.top_block is not None:
            src = self.top_block.in_feature
            x = outputs[src] if src in outputs else features[src]
            for k, level_map in enumerate(self.top_block(x), start=1):
                outputs[f"p{self._levels[-1] + k}"] = level_map
        return outputs


class BackboneWithFPN(nn.Module):
    """A bottom-up backbone followed by an FPN: ``image -> dict of pyramid levels``.

    Checkpoint names are ``bottom_up.*`` and ``fpn.*``; detectron2's FPN backbone keeps its
    FPN layers at the top (``fpn_lateral2``), which a converter maps by inserting ``fpn.``.

    Args:
        bottom_up: returns ``dict[str, Tensor]`` and has ``output_shape()`` (e.g. ``ResNet``).
        fpn: an :class:`FPN` built on ``bottom_up.output_shape()``.
    """

    def __init__(self, bottom_up: nn.Module, fpn: FPN) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        self.fpn = fpn

    @property
    def size_divisibility(self) -> int:
        """Input sizes should be multiples of this (the coarsest output stride)."""
        return self.fpn.size_divisibility

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output level."""
        return self.fpn.output_shape()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``Tensor[B, 3, H, W]`` -> ``{"p2": ..., ...}``."""
        return self.fpn(self.bottom_up(x))
