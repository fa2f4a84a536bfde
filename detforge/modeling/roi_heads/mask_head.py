"""The Mask R-CNN mask head, its loss and its inference (He et al., 2017).

Semantics follow detectron2's ``MaskRCNNConvUpsampleHead``, ``mask_rcnn_loss`` and
``mask_rcnn_inference``:

* Head: ``mask_fcn1 .. mask_fcnN`` 3x3 convs (optional norm, ReLU), a 2x2 stride-2 transposed
  conv ``deconv`` (ReLU), then the 1x1 conv ``predictor`` with one channel per class (or one in
  all when class-agnostic). Convs and the deconv use detectron2's "MSRA" init (Kaiming-normal,
  ``fan_out``, zero bias); the predictor is normal with std 0.001 and zero bias. A 14x14 pooled
  feature gives 28x28 mask logits.
* Loss: each foreground proposal's target is the mask of its matched ground truth cropped to the
  proposal box and resampled to ``M x M``: polygons are rasterised in the box
  (``PolygonMasks.crop_and_resize``), bitmasks are RoIAligned and thresholded at ``>= 0.5``.
  The loss is the binary cross-entropy with logits of the channel of the ground-truth class,
  averaged over all ``R * M * M`` pixels.
* Inference: the sigmoid of the channel of each detection's predicted class, shaped
  ``[N, 1, M, M]``; pasting into the image is the detector's job
  (:func:`detforge.ops.paste_masks.paste_masks_in_image`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.layers.conv import Conv2dNormAct
from detforge.layers.norms import NormKind, get_norm
from detforge.structures.instances import Instances
from detforge.structures.masks import BitMasks, PolygonMasks
from detforge.utils.checks import check_int, check_tensor

__all__ = ["MaskRCNNConvUpsampleHead", "mask_rcnn_inference", "mask_rcnn_loss", "mask_targets"]


def _msra_fill(layer: nn.Conv2d | nn.ConvTranspose2d) -> None:
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class MaskRCNNConvUpsampleHead(nn.Module):
    """Convs, a 2x upsampling transposed conv and a per-class 1x1 predictor.

    Args:
        in_channels: channels ``C`` of the pooled features.
        num_classes: foreground classes ``K``.
        num_conv: number of 3x3 convs ``mask_fcn1 ..`` (4 in Mask R-CNN FPN).
        conv_dim: channels of every conv and of the transposed conv.
        norm: norm after each 3x3 conv (see :func:`detforge.layers.norms.get_norm`); ``""``
            for none.
        class_agnostic: predict one mask for all classes instead of ``K``.

    Shape:
        forward: ``Tensor[R, C, S, S] -> Tensor[R, K, 2S, 2S]`` (``K = 1`` when
        class-agnostic): mask logits.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_conv: int = 4,
        conv_dim: int = 256,
        norm: NormKind = "",
        class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        fn = "MaskRCNNConvUpsampleHead"
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("num_classes", num_classes, 1),
            ("num_conv", num_conv, 0),
            ("conv_dim", conv_dim, 1),
        ):
            check_int(value, name, fn, low=low)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.class_agnostic = bool(class_agnostic)
        self._convs: list[nn.Module] = []  # call order; registered by name below
        channels = in_channels
        for k in range(num_conv):
            conv = Conv2dNormAct(
                channels, conv_dim, 3, norm=get_norm(norm, conv_dim), activation=nn.ReLU()
            )
            _msra_fill(conv)
            self.add_module(f"mask_fcn{k + 1}", conv)
            self._convs.append(conv)
            channels = conv_dim
        self.deconv = nn.ConvTranspose2d(channels, conv_dim, kernel_size=2, stride=2)
        _msra_fill(self.deconv)
        self.predictor = nn.Conv2d(conv_dim, 1 if class_agnostic else num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        if self.predictor.bias is not None:
            nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Predict mask logits.

        Args:
            x (Tensor[R, C, S, S]): pooled RoI features.

        Returns:
            Tensor[R, K, 2S, 2S] (or ``[R, 1, 2S, 2S]`` when class-agnostic): mask logits.
        """
        fn = "MaskRCNNConvUpsampleHead.forward"
        check_tensor(x, "x", fn)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{fn}: `x` must have shape [R, {self.in_channels}, S, S], got {list(x.shape)}"
            )
        for conv in self._convs:
            x = conv(x)  # [R, conv_dim, S, S]
        x = F.relu(self.deconv(x))  # [R, conv_dim, 2S, 2S]
        return self.predictor(x)  # [R, K, 2S, 2S]


def mask_targets(masks: object, boxes: Tensor, mask_size: int, *, where: str) -> Tensor:
    """Crop each ground-truth mask to its box and resample it to ``M x M`` binary targets.

    Args:
        masks: ``N`` masks of one image: ``PolygonMasks``, ``BitMasks`` or a bool/uint8
            ``Tensor[N, H, W]``.
        boxes (Tensor[N, 4]): xyxy, absolute pixels; row ``i`` crops mask ``i``.
        mask_size: output side ``M``.
        where: names the caller and image in error messages.

    Returns:
        Tensor[N, M, M] (float32, values 0 or 1) on ``boxes.device``. Polygons are rasterised in
        the box; bitmasks are RoIAligned and set where the value is ``>= 0.5``.
    """
    if isinstance(masks, Tensor):
        masks = BitMasks(masks)
    if isinstance(masks, PolygonMasks):
        return masks.crop_and_resize(boxes, mask_size).to(boxes.device)
    if isinstance(masks, BitMasks):
        soft = masks.crop_and_resize(boxes, mask_size)
        return (soft >= 0.5).to(device=boxes.device, dtype=torch.float32)
    raise TypeError(
        f"{where}: ground-truth `masks` must be PolygonMasks, BitMasks or a bool Tensor[N, H, W], "
        f"got {type(masks).__name__}"
    )


def _check_logits(fn: str, logits: Tensor, num: int) -> None:
    check_tensor(logits, "pred_mask_logits", fn)
    if logits.dim() != 4 or logits.shape[2] != logits.shape[3] or logits.shape[0] != num:
        raise ValueError(
            f"{fn}: `pred_mask_logits` must have shape [{num}, K, M, M] (one row per "
            f"instance), got {list(logits.shape)}"
        )


def mask_rcnn_loss(pred_mask_logits: Tensor, proposals: Sequence[Instances]) -> Tensor:
    """Binary cross-entropy between the predicted masks and their cropped ground truth.

    Args:
        pred_mask_logits (Tensor[R, K, M, M] or Tensor[R, 1, M, M]): mask logits of the
            foreground proposals of all images, in order (class-agnostic when one channel).
        proposals: per image, the foreground proposals (``R_i`` rows, summing to ``R``):
            ``boxes`` the proposal boxes, ``labels`` their ground-truth class in ``[0, K)``,
            ``masks`` the mask of their matched ground truth (``PolygonMasks``, ``BitMasks`` or
            a bool ``Tensor[R_i, H, W]``).

    Returns:
        Scalar tensor: the mean over all ``R * M * M`` target pixels of the channel of each
        proposal's class; 0 (in the graph) when ``R = 0``.
    """
    fn = "mask_rcnn_loss"
    _check_logits(fn, pred_mask_logits, sum(len(p) for p in proposals))
    m = int(pred_mask_logits.shape[2])
    agnostic = pred_mask_logits.shape[1] == 1
    labels, targets = [], []
    for i, p in enumerate(proposals):
        if len(p) == 0:
            continue
        if p.masks is None or p.labels is None:
            raise ValueError(
                f"{fn}: proposals[{i}] need `labels` and `masks` (matched ground truth)"
            )
        targets.append(mask_targets(p.masks, p.boxes, m, where=f"{fn}: proposals[{i}]"))
        labels.append(p.labels)
    if not targets:
        return pred_mask_logits.sum() * 0.0
    target = torch.cat(targets).to(pred_mask_logits.device)  # [R, M, M]
    if agnostic:
        logits = pred_mask_logits[:, 0]  # [R, M, M]
    else:
        cls = torch.cat(labels).to(device=pred_mask_logits.device, dtype=torch.int64)
        rows = torch.arange(cls.shape[0], device=cls.device)
        logits = pred_mask_logits[rows, cls]  # [R, M, M]
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="mean")


def mask_rcnn_inference(
    pred_mask_logits: Tensor, detections: Sequence[Instances]
) -> list[Instances]:
    """Attach mask probabilities of each detection's predicted class to the detections.

    Args:
        pred_mask_logits (Tensor[N, K, M, M] or Tensor[N, 1, M, M]): mask logits of the
            detections of all images, in order.
        detections: per image, ``Instances`` with ``labels`` (``N_i`` rows, summing to ``N``).

    Returns:
        Per image, a copy of the detections with ``masks`` set to ``Tensor[N_i, 1, M, M]``
        probabilities (sigmoid of the logits) in the box of each detection.
    """
    fn = "mask_rcnn_inference"
    _check_logits(fn, pred_mask_logits, sum(len(d) for d in detections))
    if len(detections) == 0:
        return []
    if pred_mask_logits.shape[1] == 1:
        probs = pred_mask_logits.sigmoid()  # [N, 1, M, M]
    else:
        for i, d in enumerate(detections):
            if d.labels is None:
                raise ValueError(f"{fn}: detections[{i}] have no `labels`")
        cls = torch.cat([d.labels for d in detections if d.labels is not None])
        cls = cls.to(device=pred_mask_logits.device, dtype=torch.int64)
        rows = torch.arange(cls.shape[0], device=cls.device)
        probs = pred_mask_logits[rows, cls][:, None].sigmoid()  # [N, 1, M, M]
    out = []
    for d, p in zip(detections, probs.split([len(d) for d in detections]), strict=True):
        out.append(
            Instances(
                d.image_size,
                boxes=d.boxes,
                labels=d.labels,
                scores=d.scores,
                masks=p,
                keypoints=d.keypoints,
                extras=dict(d.extras),
            )
        )
    return out
