"""The Fast R-CNN box head: a few convs and fully connected layers over each pooled RoI feature.

Layout, names and initialisation are those of detectron2's ``FastRCNNConvFCHead`` so that its
checkpoints load with a near-identity mapping of names: ``conv1 .. convN`` are 3x3 convs (each
followed by the optional norm and a ReLU; detectron2's "MSRA" init, i.e. Kaiming-normal with
``fan_out``, zero bias), then the feature is flattened and ``fc1 .. fcM`` are linear layers each
followed by a ReLU (Caffe2 "Xavier" init, i.e. Kaiming-uniform with ``a = 1``, zero bias). The
standard FPN model ("2fc") has no conv and two 1024-d fully connected layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detforge.layers.conv import Conv2dNormAct
from detforge.layers.norms import NormKind, get_norm
from detforge.utils.checks import as_tuple2, check_int, check_tensor

__all__ = ["FastRCNNConvFCHead"]


class FastRCNNConvFCHead(nn.Module):
    """Convs then fully connected layers, applied to each pooled RoI feature.

    Args:
        in_channels: channels ``C`` of the pooled features.
        in_size: spatial size of the pooled features, ``S`` or ``(PH, PW)`` (the pooler's
            ``output_size``, 7 in the standard models).
        num_conv: number of 3x3 conv layers (``conv1 ..``), each with ``conv_dim`` channels.
        conv_dim: output channels of every conv.
        num_fc: number of fully connected layers (``fc1 ..``), each with ``fc_dim`` outputs.
        fc_dim: output size of every fully connected layer.
        norm: norm after each conv (see :func:`detforge.layers.norms.get_norm`); ``""`` for
            none, in which case the convs have a bias.

    Attributes:
        output_size (int): size of the flattened output feature of one RoI, ``fc_dim`` when
            ``num_fc > 0``, else ``C' * PH * PW`` with ``C'`` the channels after the convs.

    Shape:
        forward: ``Tensor[R, C, PH, PW] -> Tensor[R, fc_dim]`` when ``num_fc > 0``, else
        ``Tensor[R, C', PH, PW]`` (the predictor flattens it).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        in_size: int | tuple[int, int] = 7,
        num_conv: int = 0,
        conv_dim: int = 256,
        num_fc: int = 2,
        fc_dim: int = 1024,
        norm: NormKind = "",
    ) -> None:
        super().__init__()
        fn = "FastRCNNConvFCHead"
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("num_conv", num_conv, 0),
            ("num_fc", num_fc, 0),
            ("conv_dim", conv_dim, 1),
            ("fc_dim", fc_dim, 1),
        ):
            check_int(value, name, fn, low=low)
        if num_conv + num_fc == 0:
            raise ValueError(f"{fn}: need at least one conv or fully connected layer")
        self.in_channels = in_channels
        self.in_size = as_tuple2(in_size, "in_size", fn)
        # Plain lists keep the call order; the layers are registered by name below.
        self._convs: list[nn.Module] = []
        self._fcs: list[nn.Linear] = []

        channels = in_channels
        for k in range(num_conv):
            conv = Conv2dNormAct(
                channels,
                conv_dim,
                3,
                norm=get_norm(norm, conv_dim),
                activation=nn.ReLU(),
            )
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            self.add_module(f"conv{k + 1}", conv)
            self._convs.append(conv)
            channels = conv_dim
        size = channels * self.in_size[0] * self.in_size[1]
        for k in range(num_fc):
            fc = nn.Linear(size, fc_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
            self.add_module(f"fc{k + 1}", fc)
            self._fcs.append(fc)
            size = fc_dim
        self.output_size: int = size

    def forward(self, x: Tensor) -> Tensor:
        """Run the convs and the fully connected layers.

        Args:
            x (Tensor[R, C, PH, PW]): pooled RoI features.

        Returns:
            Tensor[R, fc_dim] when the head has fully connected layers, else
            Tensor[R, conv_dim, PH, PW].
        """
        fn = "FastRCNNConvFCHead.forward"
        check_tensor(x, "x", fn)
        expected = (self.in_channels, *self.in_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{fn}: `x` must have shape [R, {expected[0]}, {expected[1]}, {expected[2]}], "
                f"got {list(x.shape)}"
            )
        for conv in self._convs:
            x = conv(x)  # [R, conv_dim, PH, PW]
        if self._fcs:
            x = torch.flatten(x, start_dim=1)  # [R, C' * PH * PW]
            for fc in self._fcs:
                x = torch.relu(fc(x))  # [R, fc_dim]
        return x
