"""Instance masks: polygon rasterisation, COCO RLE, and the ``BitMasks``/``PolygonMasks`` types.

Pixel model (see ``structures/boxes.py``): pixel ``(row i, column j)`` is the unit square
``[j, j + 1) x [i, i + 1)``. Polygon vertices are continuous coordinates in that plane, and
rasterisation is delegated to pycocotools (``frPyObjects`` + ``merge`` + ``decode``) so that masks
agree bit for bit with COCO's tools and evaluation: the square with corners ``(0, 0)`` and
``(4, 4)`` sets exactly rows and columns ``0..3``. We never rewrite rasterisation or RLE coding.
Both containers hold the masks of one image; indexing them (int, slice, bool mask or integer index
tensor) always gives a container of the same type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pycocotools.mask as mask_utils
import torch
from torch import Tensor

from detforge.utils.checks import check_boxes, check_int, check_shape, check_tensor

__all__ = [
    "BitMasks",
    "PolygonMasks",
    "polygons_to_bitmask",
    "rle_area",
    "rle_decode",
    "rle_encode",
]

Polygon = npt.NDArray[np.float64]
PolygonLike = npt.NDArray[Any] | Sequence[float]


def _check_crop_args(boxes: Tensor, mask_size: int, n: int, fn: str) -> None:
    check_boxes(boxes, "boxes", fn)
    check_int(mask_size, "mask_size", fn, low=1)
    if boxes.shape[0] != n:
        raise ValueError(f"{fn}: got {boxes.shape[0]} boxes for {n} masks")


def _check_masks(masks: Tensor, name: str, fn: str) -> None:
    check_tensor(masks, name, fn)
    check_shape(masks, name, fn, (None, None, None))
    if masks.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"{fn}: `{name}` must be bool or uint8, got {masks.dtype}")


def _shoelace(p: Polygon) -> float:
    x, y = p[0::2], p[1::2]
    return float(0.5 * abs(x @ np.roll(y, 1) - y @ np.roll(x, 1)))


def _as_polygon(polygon: PolygonLike, where: str, fn: str) -> Polygon:
    """Turn one polygon into a float64 vector ``[x0, y0, x1, y1, ...]`` after checking it."""
    if isinstance(polygon, Tensor):
        polygon = polygon.detach().cpu().numpy()
    try:
        arr = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{fn}: {where} is not a sequence of numbers ({e})") from None
    if arr.ndim != 1 or arr.size < 6 or arr.size % 2 != 0:
        raise ValueError(f"{fn}: {where} must have an even length >= 6, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{fn}: {where} has non-finite coordinates")
    return arr


def _as_instance(polygons: Any, i: int, fn: str) -> list[Polygon]:
    if not isinstance(polygons, (list, tuple)):
        raise TypeError(f"{fn}: instance {i} must be a list, got {type(polygons).__name__}")
    return [_as_polygon(p, f"polygon {j} of instance {i}", fn) for j, p in enumerate(polygons)]


def _rasterize(polygons: Sequence[Polygon], height: int, width: int) -> npt.NDArray[np.bool_]:
    """Union of checked polygons as a C-ordered bool ``[H, W]`` array (all False if none)."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(list(polygons), height, width)
    mask = mask_utils.decode(mask_utils.merge(rles))  # [H, W] uint8, Fortran order
    return np.ascontiguousarray(mask, dtype=bool)


def polygons_to_bitmask(polygons: Sequence[PolygonLike], height: int, width: int) -> Tensor:
    """Rasterise the polygons of one instance (their union) with pycocotools.

    Args:
        polygons: each a flat ``[x0, y0, x1, y1, ...]`` vector of at least 3 finite vertices,
            continuous pixel coordinates. An empty list gives an empty mask.
        height: image height ``H``.
        width: image width ``W``; vertices outside the image are clipped by pycocotools.

    Returns:
        Tensor[H, W] (bool): the instance mask, on the CPU.
    """
    fn = "polygons_to_bitmask"
    check_int(height, "height", fn, low=1)
    check_int(width, "width", fn, low=1)
    checked = [_as_polygon(p, f"polygon {i}", fn) for i, p in enumerate(polygons)]
    return torch.from_numpy(_rasterize(checked, height, width))


def _compressed_rle(rle: Any, i: int, fn: str) -> dict[str, Any]:
    """A pycocotools-ready RLE (``counts`` as bytes) from a compressed or uncompressed one."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{fn}: RLE {i} must be a dict with 'size' and 'counts'")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"{fn}: uncompressed RLE {i} counts must be >= 0 and sum to {h} * {w}")
    out: dict[str, Any] = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return out


def rle_encode(masks: Tensor) -> list[dict[str, Any]]:
    """Encode masks as COCO compressed RLE.

    Args:
        masks (Tensor[N, H, W]): bool or uint8 (any non-zero value is foreground), any device.

    Returns:
        list[dict]: N JSON-serialisable dicts ``{"size": [H, W], "counts": str}``, as in COCO.
    """
    _check_masks(masks, "masks", "rle_encode")
    h, w = masks.shape[1:]
    # pycocotools wants a Fortran-ordered uint8 [H, W, N] array.
    arr = np.asfortranarray((masks != 0).permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    rles = mask_utils.encode(arr)
    return [{"size": [int(h), int(w)], "counts": r["counts"].decode("ascii")} for r in rles]


def rle_decode(rles: Sequence[dict[str, Any]], image_size: tuple[int, int] | None = None) -> Tensor:
    """Decode COCO RLEs (compressed ``str``/``bytes`` counts or uncompressed ``list`` counts).

    Args:
        rles: N dicts with ``size = [H, W]`` and ``counts``; all of the same size.
        image_size: expected ``(H, W)``; required when ``rles`` is empty.

    Returns:
        Tensor[N, H, W] (bool): the masks, on the CPU.
    """
    fn = "rle_decode"
    compressed = [_compressed_rle(r, i, fn) for i, r in enumerate(rles)]
    sizes = {(int(r["size"][0]), int(r["size"][1])) for r in compressed}
    if image_size is not None:
        check_int(image_size[0], "height", fn, low=1)
        check_int(image_size[1], "width", fn, low=1)
        sizes.add((image_size[0], image_size[1]))
    if len(sizes) != 1:
        raise ValueError(f"{fn}: RLEs and `image_size` must give one size, got {sorted(sizes)}")
    h, w = sizes.pop()
    if not compressed:
        return torch.zeros((0, h, w), dtype=torch.bool)
    arr = mask_utils.decode(compressed)  # [H, W, N] uint8
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=bool))


def rle_area(rles: Sequence[dict[str, Any]]) -> Tensor:
    """Tensor[N] (int64, CPU): foreground pixel count of each RLE (compressed or not)."""
    compressed = [_compressed_rle(r, i, "rle_area") for i, r in enumerate(rles)]
    return torch.as_tensor(mask_utils.area(compressed).astype(np.int64))


def _check_index(item: Any, n: int, fn: str) -> None:
    """Accept an int, a slice, a 1-D bool mask of length ``n`` or a 1-D integer tensor."""
    if isinstance(item, bool) or not isinstance(item, (int, slice, Tensor)):
        raise TypeError(f"{fn}: index must be an int, a slice or a tensor, got {type(item)}")
    if isinstance(item, int) and not -n <= item < n:
        raise IndexError(f"{fn}: index {item} out of range for {n} masks")
    if isinstance(item, Tensor):
        if item.dim() != 1:
            raise IndexError(f"{fn}: index tensor must be 1-D, got shape {list(item.shape)}")
        if item.dtype == torch.bool and item.shape[0] != n:
            raise IndexError(f"{fn}: bool mask has {item.shape[0]} entries, expected {n}")
        if item.dtype != torch.bool and (item.is_floating_point() or item.is_complex()):
            raise IndexError(f"{fn}: index tensor must be bool or integer, got {item.dtype}")


class BitMasks:
    """Masks of one image as a dense bool tensor.

    Attributes:
        tensor (Tensor[N, H, W]): bool, one mask per instance.
    """

    def __init__(self, tensor: Tensor) -> None:
        """Wrap ``tensor`` (Tensor[N, H, W], bool or uint8; uint8 is turned into ``!= 0``)."""
        _check_masks(tensor, "tensor", "BitMasks")
        self.tensor = tensor if tensor.dtype == torch.bool else tensor != 0

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the masks."""
        return int(self.tensor.shape[1]), int(self.tensor.shape[2])

    @property
    def device(self) -> torch.device:
        """Device of the mask tensor."""
        return self.tensor.device

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __getitem__(self, item: int | slice | Tensor) -> BitMasks:
        """Select masks; an int gives a ``BitMasks`` of length one. May share storage."""
        _check_index(item, len(self), "BitMasks.__getitem__")
        if isinstance(item, int):
            return BitMasks(self.tensor[item].unsqueeze(0))
        if isinstance(item, Tensor):
            item = item.to(self.device)
        return BitMasks(self.tensor[item])

    def to(self, device: torch.device | str) -> BitMasks:
        """The masks on ``device``."""
        return BitMasks(self.tensor.to(device))

    @classmethod
    def cat(cls, masks_list: Sequence[BitMasks]) -> BitMasks:
        """Concatenate ``BitMasks`` of the same image size (and device)."""
        if len(masks_list) == 0 or not all(isinstance(m, BitMasks) for m in masks_list):
            raise ValueError("BitMasks.cat: need a non-empty list of BitMasks")
        sizes = {m.image_size for m in masks_list}
        if len(sizes) > 1:
            raise ValueError(f"BitMasks.cat: all masks must have one image size, got {sizes}")
        return cls(torch.cat([m.tensor for m in masks_list]))

    def area(self) -> Tensor:
        """Tensor[N] (float32): number of foreground pixels per mask."""
        return self.tensor.flatten(1).sum(1).to(torch.float32)

    def nonempty(self) -> Tensor:
        """Tensor[N] (bool): masks with at least one foreground pixel."""
        return self.tensor.flatten(1).any(1)

    def bounding_boxes(self) -> Tensor:
        """Tensor[N, 4] (float32): tight xyxy boxes of the foreground; zeros for an empty mask.

        Pixel ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``: a lone pixel at row 2, column 3 gives
        ``(3, 2, 4, 3)``.
        """
        n, h, w = self.tensor.shape
        boxes = torch.zeros((n, 4), dtype=torch.float32, device=self.device)
        if self.tensor.numel() == 0:
            return boxes
        cols = self.tensor.any(dim=1)  # [N, W]
        rows = self.tensor.any(dim=2)  # [N, H]
        xs = torch.arange(w, device=self.device)
        ys = torch.arange(h, device=self.device)
        boxes[:, 0] = torch.where(cols, xs, w).amin(1)
        boxes[:, 1] = torch.where(rows, ys, h).amin(1)
        boxes[:, 2] = torch.where(cols, xs + 1, 0).amax(1)
        boxes[:, 3] = torch.where(rows, ys + 1, 0).amax(1)
        return torch.where(cols.any(1)[:, None], boxes, 0.0)

    def to_bitmasks(self, height: int, width: int) -> BitMasks:
        """Return ``self``; ``(height, width)`` must equal ``image_size`` (no resizing)."""
        if (height, width) != self.image_size:
            raise ValueError(
                f"BitMasks.to_bitmasks: size is {self.image_size}, not {height, width}"
            )
        return self

    def crop_and_resize(self, boxes: Tensor, mask_size: int) -> Tensor:
        """Mask-head targets: each mask sampled inside its box on an ``M x M`` grid.

        Bilinear RoIAlign of the float mask (``aligned=True``, adaptive sampling ratio), so bin
        centres sit at ``x1 + (k + 0.5) * box_w / M`` in the pixel model of ``boxes.py``: the
        result is the bilinear average of the mask over each bin. Thresholding (``>= 0.5`` gives
        detectron2's bool target) or using it as a soft target is the caller's choice.

        Args:
            boxes (Tensor[N, 4]): xyxy, absolute pixels; row ``i`` belongs to mask ``i``.
            mask_size: output side ``M``.

        Returns:
            Tensor[N, M, M] (float32): values in ``[0, 1]`` on the masks' device.
        """
        n = len(self)
        _check_crop_args(boxes, mask_size, n, "BitMasks.crop_and_resize")
        if n == 0:
            return torch.zeros((0, mask_size, mask_size), device=self.device)
        from detforge.ops.roi_align import roi_align

        masks = self.tensor.to(torch.float32)[:, None]  # [N, 1, H, W]
        rows = torch.arange(n, device=self.device, dtype=torch.float32)[:, None]
        rois = torch.cat([rows, boxes.detach().to(self.device, torch.float32)], dim=1)
        out: Tensor = roi_align(
            masks, rois, (mask_size, mask_size), spatial_scale=1.0, sampling_ratio=0, aligned=True
        )  # [N, 1, M, M]
        return out[:, 0]


class PolygonMasks:
    """Masks of one image as COCO polygons, always kept on the CPU.

    Attributes:
        polygons: N instances, each a list of float64 vectors ``[x0, y0, x1, y1, ...]`` (at least
            3 vertices each, continuous pixel coordinates). An instance may have no polygon.
    """

    def __init__(self, polygons: Sequence[Sequence[PolygonLike]]) -> None:
        """Check and convert ``polygons`` (arrays already float64 are not copied)."""
        if not isinstance(polygons, (list, tuple)):
            raise TypeError(f"PolygonMasks: expected a list, got {type(polygons).__name__}")
        self.polygons = [_as_instance(inst, i, "PolygonMasks") for i, inst in enumerate(polygons)]

    @classmethod
    def _from_checked(cls, polygons: list[list[Polygon]]) -> PolygonMasks:
        out = cls.__new__(cls)
        out.polygons = polygons
        return out

    def __len__(self) -> int:
        return len(self.polygons)

    def __getitem__(self, item: int | slice | Tensor) -> PolygonMasks:
        """Select instances; an int gives a ``PolygonMasks`` of length one. Arrays are shared."""
        _check_index(item, len(self), "PolygonMasks.__getitem__")
        if isinstance(item, int):
            return self._from_checked([self.polygons[item]])
        if isinstance(item, slice):
            return self._from_checked(self.polygons[item])
        if item.dtype == torch.bool:
            item = item.nonzero().squeeze(1)
        return self._from_checked([self.polygons[i] for i in item.tolist()])

    def to(self, device: torch.device | str) -> PolygonMasks:
        """No-op: polygons stay on the CPU (targets made from them go to the boxes' device)."""
        return self

    @classmethod
    def cat(cls, masks_list: Sequence[PolygonMasks]) -> PolygonMasks:
        """Concatenate ``PolygonMasks``."""
        if len(masks_list) == 0 or not all(isinstance(m, PolygonMasks) for m in masks_list):
            raise ValueError("PolygonMasks.cat: need a non-empty list of PolygonMasks")
        return cls._from_checked([inst for m in masks_list for inst in m.polygons])

    def area(self) -> Tensor:
        """Tensor[N] (float32): polygon area, as detectron2 and COCO's ``area`` field compute it.

        The shoelace area of each polygon, summed over the instance's polygons: overlapping
        polygons count twice, unlike in the rasterised mask (their union).
        """
        areas = [sum(_shoelace(p) for p in inst) for inst in self.polygons]
        return torch.tensor(areas, dtype=torch.float32)

    def nonempty(self) -> Tensor:
        """Tensor[N] (bool): instances with at least one polygon."""
        return torch.tensor([len(inst) > 0 for inst in self.polygons], dtype=torch.bool)

    def bounding_boxes(self) -> Tensor:
        """Tensor[N, 4] (float32): xyxy min/max of the vertices; zeros for an instance with none."""
        boxes = torch.zeros((len(self), 4), dtype=torch.float32)
        for i, inst in enumerate(self.polygons):
            if inst:
                xy = np.concatenate(inst).reshape(-1, 2)
                boxes[i] = torch.from_numpy(np.concatenate([xy.min(0), xy.max(0)]))
        return boxes

    def to_bitmasks(self, height: int, width: int) -> BitMasks:
        """Rasterise every instance (see :func:`polygons_to_bitmask`) into ``BitMasks``."""
        check_int(height, "height", "PolygonMasks.to_bitmasks", low=1)
        check_int(width, "width", "PolygonMasks.to_bitmasks", low=1)
        out = np.zeros((len(self), height, width), dtype=bool)
        for i, inst in enumerate(self.polygons):
            out[i] = _rasterize(inst, height, width)
        return BitMasks(torch.from_numpy(out))

    def crop_and_resize(self, boxes: Tensor, mask_size: int) -> Tensor:
        """Mask-head targets: each instance rasterised inside its box at ``M x M``.

        As detectron2's polygon path: polygons are shifted by ``(-x1, -y1)``, scaled by
        ``(M / box_w, M / box_h)`` (box sides below 0.1 px count as 0.1) and rasterised exactly
        by pycocotools, so a polygon equal to its box gives all ones.

        Args:
            boxes (Tensor[N, 4]): xyxy, absolute pixels; row ``i`` belongs to instance ``i``.
            mask_size: output side ``M``.

        Returns:
            Tensor[N, M, M] (float32): 0/1 values on ``boxes.device``.
        """
        m = mask_size
        _check_crop_args(boxes, m, len(self), "PolygonMasks.crop_and_resize")
        out = np.zeros((len(self), m, m), dtype=np.float32)
        for i, (x1, y1, x2, y2) in enumerate(boxes.detach().cpu().double().tolist()):
            sx, sy = m / max(x2 - x1, 0.1), m / max(y2 - y1, 0.1)
            scaled = [((p.reshape(-1, 2) - (x1, y1)) * (sx, sy)).ravel() for p in self.polygons[i]]
            out[i] = _rasterize(scaled, m, m)
        return torch.from_numpy(out).to(boxes.device)
