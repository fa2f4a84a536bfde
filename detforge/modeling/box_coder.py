"""The R-CNN box parameterisation: encode boxes as deltas from reference boxes, and decode them.

A reference box (an anchor or a proposal) with width ``w = x2 - x1``, height ``h = y2 - y1``
(no "+1", see ``detforge.structures.boxes``) and centre ``(x1 + 0.5 w, y1 + 0.5 h)`` is turned
into a target box by four deltas::

    dx = wx * (tx - cx) / w        dy = wy * (ty - cy) / h
    dw = ww * log(tw / w)          dh = wh * log(th / h)

with ``(wx, wy, ww, wh)`` the coder's weights: ``(1, 1, 1, 1)`` for RPN and RetinaNet,
``(10, 10, 5, 5)`` for the Fast R-CNN box head in detectron2's configs.

The formulas and the order of floating-point operations are those of detectron2's
``Box2BoxTransform`` so that decoding a detectron2 checkpoint's outputs gives the same boxes.
Decoding always runs in float32 (float64 when an input is float64): float16 and bfloat16 inputs
are upcast, as in current detectron2, since half precision cannot hold pixel coordinates of large
images to sub-pixel accuracy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from detforge.utils.checks import check_floating, check_shape, check_tensor, values_on_host

__all__ = ["DEFAULT_SCALE_CLAMP", "BoxCoder"]

#: Largest ``dw``/``dh`` used when decoding: enough to turn a 16 px box into a 1000 px one.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode and decode the ``(dx, dy, dw, dh)`` box deltas of R-CNN.

    Args:
        weights: ``(wx, wy, ww, wh)``, positive factors multiplying the deltas on encoding
            (and dividing them on decoding).
        scale_clamp: on decoding, ``dw`` and ``dh`` (after division by the weights) are clamped
            from above at this value before ``exp``, which bounds the growth of a box to a factor
            ``exp(scale_clamp)`` (62.5 by default). Use ``math.inf`` to disable.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        *,
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        if isinstance(weights, (str, bytes, Tensor)) or not isinstance(weights, Sequence):
            raise TypeError(f"BoxCoder: `weights` must be a 4-tuple of floats, got {weights!r}")
        if len(weights) != 4 or not all(
            isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w > 0
            for w in weights
        ):
            raise ValueError(
                f"BoxCoder: `weights` must be 4 positive finite numbers, got {list(weights)}"
            )
        if not isinstance(scale_clamp, numbers.Real) or math.isnan(scale_clamp):
            raise ValueError(f"BoxCoder: `scale_clamp` must be a number, got {scale_clamp!r}")
        wx, wy, ww, wh = (float(w) for w in weights)
        self.weights: tuple[float, float, float, float] = (wx, wy, ww, wh)
        self.scale_clamp: float = float(scale_clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp})"

    def encode(self, proposals: Tensor, targets: Tensor) -> Tensor:
        """Deltas that turn each reference box into its target box.

        ``decode(encode(p, t), p) == t`` up to rounding, unless a ``dw``/``dh`` exceeds the clamp.

        Args:
            proposals (Tensor[N, 4]): reference boxes (anchors or proposals), xyxy; every width
                and height must be positive. That is checked on the CPU only: on an accelerator
                reading the boxes back would synchronise every training step, and there a
                zero-size proposal gives inf/NaN deltas instead of an error.
            targets (Tensor[N, 4]): target boxes, xyxy. A target with zero width or height gives
                ``-inf`` in ``dw``/``dh`` (as in detectron2): select foreground pairs first.

        Returns:
            Tensor[N, 4]: weighted ``(dx, dy, dw, dh)``, in the dtype promoted from both inputs.
        """
        fn = "BoxCoder.encode"
        for name, t in (("proposals", proposals), ("targets", targets)):
            check_tensor(t, name, fn)
            check_shape(t, name, fn, (None, 4))
            check_floating(t, name, fn)
        if proposals.shape[0] != targets.shape[0]:
            raise ValueError(
                f"{fn}: `proposals` and `targets` must have the same length, got "
                f"{proposals.shape[0]} and {targets.shape[0]}"
            )
        if proposals.device != targets.device:
            raise ValueError(
                f"{fn}: `proposals` on {proposals.device}, `targets` on {targets.device}"
            )
        dtype = torch.promote_types(proposals.dtype, targets.dtype)
        proposals, targets = proposals.to(dtype), targets.to(dtype)

        widths = proposals[:, 2] - proposals[:, 0]
        heights = proposals[:, 3] - proposals[:, 1]
        bad = ~((widths > 0) & (heights > 0))
        if values_on_host(proposals) and bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{fn}: every proposal needs a positive width and height; proposal {i} is "
                f"{proposals[i].tolist()} ({int(bad.sum())} invalid in all)"
            )
        ctr_x = proposals[:, 0] + 0.5 * widths
        ctr_y = proposals[:, 1] + 0.5 * heights

        target_widths = targets[:, 2] - targets[:, 0]
        target_heights = targets[:, 3] - targets[:, 1]
        target_ctr_x = targets[:, 0] + 0.5 * target_widths
        target_ctr_y = targets[:, 1] + 0.5 * target_heights

        wx, wy, ww, wh = self.weights
        dx = wx * (target_ctr_x - ctr_x) / widths
        dy = wy * (target_ctr_y - ctr_y) / heights
        dw = ww * torch.log(target_widths / widths)
        dh = wh * torch.log(target_heights / heights)
        return torch.stack((dx, dy, dw, dh), dim=1)  # [N, 4]

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Apply deltas to reference boxes; ``K`` class-specific deltas per box are allowed.

        Args:
            deltas (Tensor[N, K * 4]): weighted ``(dx, dy, dw, dh)`` groups, ``K >= 1``; group
                ``k`` of row ``i`` is applied to ``boxes[i]``.
            boxes (Tensor[N, 4]): reference boxes, xyxy.

        Returns:
            Tensor[N, K * 4]: xyxy boxes (group ``k`` of row ``i`` decodes ``deltas[i, 4k:4k+4]``),
            float32, or float64 when an input is float64. Boxes are not clipped to the image.
        """
        fn = "BoxCoder.decode"
        check_tensor(deltas, "deltas", fn)
        check_tensor(boxes, "boxes", fn)
        check_floating(deltas, "deltas", fn)
        check_floating(boxes, "boxes", fn)
        check_shape(boxes, "boxes", fn, (None, 4))
        if deltas.dim() != 2 or deltas.shape[1] == 0 or deltas.shape[1] % 4 != 0:
            raise ValueError(f"{fn}: `deltas` must have shape [N, K * 4], got {list(deltas.shape)}")
        if deltas.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"{fn}: `deltas` and `boxes` must have the same length, got {deltas.shape[0]} "
                f"and {boxes.shape[0]}"
            )
        if deltas.device != boxes.device:
            raise ValueError(f"{fn}: `deltas` on {deltas.device}, `boxes` on {boxes.device}")
        dtype = torch.promote_types(torch.promote_types(deltas.dtype, boxes.dtype), torch.float32)
        deltas = deltas.to(dtype)
        boxes = boxes.to(dtype)

        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx  # [N, K]
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]

        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)  # [N, K * 4]
