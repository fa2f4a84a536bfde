"""The RetinaNet head (Lin et al., 2017): two small conv subnets shared by every pyramid level.

A *classification subnet* and a *box subnet* with the same structure and separate weights each
apply ``num_convs`` 3x3 convs (optionally followed by a norm) with ReLUs to a level's features;
a last 3x3 conv then predicts ``A * K`` class logits (``cls_score``) or ``A * 4`` box deltas
(``bbox_pred``) at every location. The same modules run on every level.

Module names and initialisation follow detectron2's ``RetinaNetHead`` so its checkpoints load
after dropping the ``head.`` prefix: ``cls_subnet.{0,2,4,6}`` are the convs of the default head
(with a norm, every conv is followed by the norm, then the ReLU, as ``nn.Sequential`` entries),
``bbox_subnet`` likewise, then ``cls_score`` and ``bbox_pred``. Every conv weight is drawn from
``N(0, 0.01)`` with zero bias, except that ``cls_score``'s bias is
``-log((1 - prior_prob) / prior_prob)``, so that every class starts with probability
``prior_prob`` and the many easy negatives do not swamp the first iterations.

Output channel ``c`` of ``cls_score`` at location ``(y, x)`` is anchor ``c // K``, class
``c % K``; of ``bbox_pred``, anchor ``c // 4``, delta ``c % 4``. The detector reorders them to
``[B, H * W * A, K]`` to match the anchor order of ``detforge.modeling.anchors``.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence

from torch import Tensor, nn

from detforge.layers.norms import NormKind, get_norm
from detforge.utils.checks import check_float, check_int

__all__ = ["RetinaNetHead"]

logger = logging.getLogger(__name__)

_FN = "RetinaNetHead"


def _subnet_dims(
    in_channels: int, num_convs: int, conv_dims: int | Sequence[int] | None
) -> list[int]:
    """Output channels of each subnet conv: ``num_convs`` entries."""
    if conv_dims is None:
        return [in_channels] * num_convs
    if isinstance(conv_dims, numbers.Integral) and not isinstance(conv_dims, bool):
        return [check_int(conv_dims, "conv_dims", _FN, low=1)] * num_convs
    if isinstance(conv_dims, (str, bytes)) or not isinstance(conv_dims, Sequence):
        raise TypeError(f"{_FN}: `conv_dims` must be an int or a list of ints, got {conv_dims!r}")
    dims = [check_int(d, "conv_dims", _FN, low=1) for d in conv_dims]
    if len(dims) != num_convs:
        raise ValueError(
            f"{_FN}: `conv_dims` has {len(dims)} entries but `num_convs` is {num_convs}"
        )
    return dims


class RetinaNetHead(nn.Module):
    """Classification and box-regression subnets of RetinaNet, shared by all levels.

    Args:
        in_channels: channels ``C`` of every input level (256 for an FPN).
        num_anchors: anchors per location ``A``, the same on every level (9 in the paper).
        num_classes: number of object classes ``K``, without background.
        num_convs: 3x3 conv + ReLU blocks in each subnet (4 in the paper).
        conv_dims: output channels of the subnet convs: one int for all, a list of
            ``num_convs`` ints, or None for ``in_channels``.
        norm: norm after each subnet conv (see ``detforge.layers.norms.get_norm``); ``""``
            for none. The same norm module serves every level, which suits ``"GN"``; batch
            norm statistics would be shared across levels (detectron2 warns about it, so do we).
        prior_prob: initial foreground probability of every class logit, in ``(0, 1)``.

    Shape:
        forward: ``list[Tensor[B, C, H_l, W_l]]`` to ``(list[Tensor[B, A * K, H_l, W_l]],
        list[Tensor[B, A * 4, H_l, W_l]])``.
    """

    cls_subnet: nn.Sequential
    bbox_subnet: nn.Sequential
    cls_score: nn.Conv2d
    bbox_pred: nn.Conv2d

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        conv_dims: int | Sequence[int] | None = None,
        norm: NormKind = "",
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", _FN, low=1)
        self.num_anchors = check_int(num_anchors, "num_anchors", _FN, low=1)
        self.num_classes = check_int(num_classes, "num_classes", _FN, low=1)
        num_convs = check_int(num_convs, "num_convs", _FN, low=0)
        dims = _subnet_dims(self.in_channels, num_convs, conv_dims)
        prior_prob = check_float(
            prior_prob, "prior_prob", _FN, low=0, high=1, low_open=True, high_open=True
        )
        if norm in ("BN", "SyncBN"):
            logger.warning("RetinaNetHead: batch norm shared across levels works poorly")

        self.cls_subnet = self._subnet(dims, norm)
        self.bbox_subnet = self._subnet(dims, norm)
        last = dims[-1] if dims else self.in_channels
        self.cls_score = nn.Conv2d(last, self.num_anchors * self.num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(last, self.num_anchors * 4, 3, padding=1)

        for module in (self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    assert layer.bias is not None  # every conv here has a bias
                    nn.init.normal_(layer.weight, mean=0.0, std=0.01)
                    nn.init.zeros_(layer.bias)
        assert self.cls_score.bias is not None
        bias = -math.log((1 - float(prior_prob)) / float(prior_prob))
        nn.init.constant_(self.cls_score.bias, bias)

    def _subnet(self, dims: list[int], norm: NormKind) -> nn.Sequential:
        """``[conv3x3, (norm), ReLU] * len(dims)`` as one flat ``nn.Sequential``."""
        layers: list[nn.Module] = []
        for c_in, c_out in zip([self.in_channels, *dims], dims, strict=False):
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if norm:
                layers.append(get_norm(norm, c_out))
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Predict class logits and box deltas on every level.

        Args:
            features (list[Tensor[B, C, H_l, W_l]]): one map per level, any order (usually
                finest first); ``C`` must be ``in_channels``.

        Returns:
            logits (list[Tensor[B, A * K, H_l, W_l]]): class logits; channel ``a * K + k`` is
            anchor ``a``, class ``k``. deltas (list[Tensor[B, A * 4, H_l, W_l]]): box deltas
            ``(dx, dy, dw, dh)``; channel ``a * 4 + j`` is anchor ``a``, delta ``j``.
        """
        if isinstance(features, Tensor) or not isinstance(features, Sequence) or not features:
            raise TypeError(f"{_FN}.forward: `features` must be a non-empty list of tensors")
        for i, x in enumerate(features):
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
                got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"{_FN}.forward: `features[{i}]` must have shape "
                    f"[B, {self.in_channels}, H, W], got {got}"
                )
        logits = [self.cls_score(self.cls_subnet(x)) for x in features]
        deltas = [self.bbox_pred(self.bbox_subnet(x)) for x in features]
        return logits, deltas

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return f"num_anchors={self.num_anchors}, num_classes={self.num_classes}"
