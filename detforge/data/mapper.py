"""``DatasetMapper``: a dataset record (see ``detforge.data``) -> the dict a detector takes.

Per record it reads the image (EXIF orientation applied, converted to RGB), checks its size
against the record, draws and applies the augmentations (on the RGB ``uint8`` image), applies the
same transforms to the annotations, and builds the model input::

    {"image": Tensor[C, H, W] uint8 in `image_format`, "instances": Instances (when the record has
     "annotations"), "height": int, "width": int (original size), "image_id", "file_name",
     "transforms": TransformList (its inverse() maps predictions back to the original image)}

Annotation rules:

* Training (``is_train=True``): crowd annotations are dropped before anything else; after the
  transforms, boxes are clipped to the image and instances whose box has a side ``<=
  min_box_size``, or (with masks) whose mask became empty, are dropped.
* Evaluation (``is_train=False``): nothing is dropped (detectron2 removes annotations at test
  time; we keep them when the record has them, for evaluators and validation losses), and each
  instance's ``iscrowd`` flag is kept in ``instances.extras["iscrowd"]`` (int64).
* Masks: polygons are transformed as polygons (a crop clips them), then kept as
  ``PolygonMasks`` or rasterised at the final size into ``BitMasks``. COCO RLEs (crowd regions)
  are decoded at the original size and transformed as bitmasks, so they need
  ``mask_format="bitmask"``.
* Keypoints: transformed (flips swap the ``keypoint_flip_pairs``); points outside the final image
  become unlabelled and, as in COCO and detectron2, unlabelled points get ``x = y = 0``. An
  annotation without keypoints gets all-unlabelled ones.

Bad data raises ``detforge.data.errors.DataError`` (a ``ValueError``) naming the file, the image
and, for annotations, the annotation index and field; the data loader can then skip the sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from detforge.data.augmentation import Augmentation, AugmentationList
from detforge.data.errors import DataError
from detforge.data.transforms import TransformList, flip_permutation
from detforge.structures.instances import Instances
from detforge.structures.masks import BitMasks, PolygonMasks, polygons_to_bitmask, rle_decode

__all__ = ["DatasetMapper", "read_image"]

logger = logging.getLogger(__name__)

_UNSUPPORTED_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image(file_name: str) -> np.ndarray:
    """Decode an image file as RGB, with its EXIF orientation applied.

    Grayscale, palette, CMYK and RGBA images are converted to RGB (the alpha channel is dropped,
    as detectron2 does); 16-bit and floating-point images are refused rather than clipped.

    Args:
        file_name: path of the image.

    Returns:
        np.ndarray[H, W, 3] (uint8): the image, ``H x W`` after EXIF rotation.

    Raises:
        DataError: the file is missing (kind ``"missing_image"``), unreadable or truncated
            (``"unreadable_image"``).
    """
    try:
        with Image.open(file_name) as img:
            img.load()  # decode now, so truncated files fail here
            oriented = ImageOps.exif_transpose(img)
            if oriented.mode in _UNSUPPORTED_MODES:
                raise DataError(
                    f"image mode {oriented.mode!r} (16-bit or float) is not supported",
                    kind="unreadable_image",
                    path=file_name,
                )
            if oriented.mode == "P":
                oriented = oriented.convert("RGBA")
            rgb = oriented.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except FileNotFoundError as e:
        msg = f"image file does not exist ({e})"
        raise DataError(msg, kind="missing_image", path=file_name) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        msg = f"cannot decode the image file ({type(e).__name__}: {e})"
        raise DataError(msg, kind="unreadable_image", path=file_name) from e


def _positive_int(record: dict, key: str, file_name: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DataError(
            f"must be a positive int, got {value!r}",
            kind="invalid_record",
            path=file_name,
            record=record.get("image_id"),
            field=key,
        )
    return int(value)


class DatasetMapper:
    """Turn a dataset record into a model input dict (see the module docstring).

    Args:
        augmentations: policies applied in order to the RGB uint8 image (e.g.
            ``[ResizeShortestEdge(...), RandomFlip()]``); empty for none.
        is_train: training rules (drop crowd and empty instances) or evaluation rules (keep all).
        image_format: channel order of the output image, ``"BGR"`` (detectron2's weights) or
            ``"RGB"``.
        use_masks: build ``instances.masks`` from the ``segmentation`` fields.
        mask_format: ``"polygon"`` (``PolygonMasks``) or ``"bitmask"`` (``BitMasks``).
        use_keypoints: build ``instances.keypoints`` from the ``keypoints`` fields.
        keypoint_flip_pairs: ``(left, right)`` keypoint index pairs swapped by flips.
        min_box_size: in training, boxes with a side ``<=`` this (in output pixels) are dropped.
        recompute_boxes: with masks, replace each box by the tight box of its transformed mask
            (useful after crops, which clip boxes but cannot shrink them to the object).
    """

    def __init__(
        self,
        augmentations: Sequence[Augmentation],
        *,
        is_train: bool,
        image_format: Literal["RGB", "BGR"] = "BGR",
        use_masks: bool = False,
        mask_format: Literal["polygon", "bitmask"] = "polygon",
        use_keypoints: bool = False,
        keypoint_flip_pairs: Sequence[tuple[int, int]] = (),
        min_box_size: float = 1e-5,
        recompute_boxes: bool = False,
    ) -> None:
        fn = "DatasetMapper"
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"{fn}: `image_format` must be 'RGB' or 'BGR', got {image_format!r}")
        if mask_format not in ("polygon", "bitmask"):
            raise ValueError(
                f"{fn}: `mask_format` must be 'polygon' or 'bitmask', got {mask_format!r}"
            )
        if not isinstance(min_box_size, (int, float)) or not min_box_size >= 0:
            raise ValueError(f"{fn}: `min_box_size` must be a number >= 0, got {min_box_size!r}")
        if recompute_boxes and not use_masks:
            raise ValueError(f"{fn}: `recompute_boxes=True` needs `use_masks=True`")
        if any(len(p) != 2 for p in keypoint_flip_pairs):
            msg = f"must be (left, right) pairs, got {keypoint_flip_pairs}"
            raise ValueError(f"{fn}: `keypoint_flip_pairs` {msg}")
        pairs = [(int(a), int(b)) for a, b in keypoint_flip_pairs]
        self.augmentations = AugmentationList(list(augmentations))
        self.is_train, self.image_format = bool(is_train), image_format
        self.use_masks, self.mask_format = bool(use_masks), mask_format
        self.use_keypoints = bool(use_keypoints)
        self.keypoint_flip_pairs = pairs
        self.min_box_size, self.recompute_boxes = float(min_box_size), bool(recompute_boxes)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict[str, Any]:
        """Map one record.

        Args:
            record: a dataset record (``file_name``, ``height``, ``width``, ``image_id``,
                optional ``annotations``); it is not modified.
            rng: the only source of randomness of the augmentations.

        Returns:
            dict: the model input described in the module docstring.
        """
        if not isinstance(record, dict):
            raise TypeError(f"DatasetMapper: `record` must be a dict, got {type(record).__name__}")
        file_name = record.get("file_name")
        if not isinstance(file_name, str):
            raise DataError(
                f"must be a str, got {file_name!r}",
                kind="invalid_record",
                record=record.get("image_id"),
                field="file_name",
            )
        height = _positive_int(record, "height", file_name)
        width = _positive_int(record, "width", file_name)
        image = read_image(file_name)
        if image.shape[:2] != (height, width):
            h, w = image.shape[:2]
            hint = " (swapped: EXIF orientation?)" if (w, h) == (height, width) else ""
            raise DataError(
                f"the image is {w}x{h} (WxH) after EXIF orientation but the record says "
                f"{width}x{height}{hint}",
                kind="image_size_mismatch",
                path=file_name,
                record=record.get("image_id"),
            )
        tensor, transforms = self.image_tensor(image, rng)
        out: dict[str, Any] = {
            "image": tensor,
            "height": height,
            "width": width,
            "image_id": record.get("image_id"),
            "file_name": file_name,
            "transforms": transforms,
        }
        if "annotations" in record:
            size = (int(tensor.shape[1]), int(tensor.shape[2]))
            out["instances"] = self._instances(record, transforms, size)
        return out

    def image_tensor(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, TransformList]:
        """The model input for an RGB ``uint8 [H, W, 3]`` image: augmented (resized), in
        ``image_format`` channel order, as ``uint8 Tensor[3, H', W']``; and the transforms."""
        image, transforms = self.augmentations(image, rng)
        chw = image.transpose(2, 0, 1)
        if self.image_format == "BGR":
            chw = chw[::-1]
        return torch.from_numpy(np.ascontiguousarray(chw)), transforms

    def _error(
        self, record: dict, message: str, *, annotation: int | None = None, field: str | None = None
    ) -> DataError:
        return DataError(
            message,
            kind="invalid_annotation",
            path=record.get("file_name"),
            record=record.get("image_id"),
            annotation=annotation,
            field=field,
        )

    def _check_box(self, record: dict, index: int, box: Any) -> None:
        """Raise unless ``box`` is 4 finite numbers with ``x2 >= x1`` and ``y2 >= y1``."""
        numbers = isinstance(box, (list, tuple, np.ndarray)) and len(box) == 4
        numbers = numbers and all(
            isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in box
        )
        if not numbers:
            msg = f"must be 4 finite numbers (xyxy), got {box!r}"
            raise self._error(record, msg, annotation=index, field="bbox")
        if box[2] < box[0] or box[3] < box[1]:
            msg = f"xyxy box has x2 < x1 or y2 < y1: {list(box)}"
            raise self._error(record, msg, annotation=index, field="bbox")

    def _annotations(self, record: dict) -> list[tuple[int, dict]]:
        """Checked ``(index in the record, annotation)`` pairs; crowd dropped when training."""
        anns = record["annotations"]
        if not isinstance(anns, (list, tuple)):
            raise self._error(
                record, f"must be a list, got {type(anns).__name__}", field="annotations"
            )
        kept = []
        for i, ann in enumerate(anns):
            if not isinstance(ann, dict):
                raise self._error(record, f"must be a dict, got {type(ann).__name__}", annotation=i)
            self._check_box(record, i, ann.get("bbox"))
            label = ann.get("category_id")
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise self._error(
                    record, f"must be an int >= 0, got {label!r}", annotation=i, field="category_id"
                )
            crowd = ann.get("iscrowd", 0)
            if crowd not in (0, 1):
                raise self._error(
                    record, f"must be 0 or 1, got {crowd!r}", annotation=i, field="iscrowd"
                )
            if not (self.is_train and crowd):
                kept.append((i, ann))
        return kept

    def _instances(
        self, record: dict, transforms: TransformList, size: tuple[int, int]
    ) -> Instances:
        anns = self._annotations(record)
        h, w = size
        boxes = np.array([a["bbox"] for _, a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = transforms.apply_boxes(boxes)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        masks = self._masks(record, anns, transforms, size) if self.use_masks else None
        keypoints = self._keypoints(record, anns, transforms, size) if self.use_keypoints else None
        boxes_t = torch.from_numpy(boxes).to(torch.float32)
        if self.recompute_boxes and masks is not None:
            boxes_t = masks.bounding_boxes()
        extras = {}
        if not self.is_train:
            extras["iscrowd"] = torch.tensor(
                [int(a.get("iscrowd", 0)) for _, a in anns], dtype=torch.int64
            )
        instances = Instances(
            image_size=size,
            boxes=boxes_t,
            labels=torch.tensor([int(a["category_id"]) for _, a in anns], dtype=torch.int64),
            masks=masks,
            keypoints=keypoints,
            extras=extras,
        )
        if not self.is_train:
            return instances
        widths, heights = boxes_t[:, 2] - boxes_t[:, 0], boxes_t[:, 3] - boxes_t[:, 1]
        keep = (widths > self.min_box_size) & (heights > self.min_box_size)
        if masks is not None:
            keep &= masks.nonempty()
        return instances[keep]

    def _segmentation(
        self, record: dict, index: int, ann: dict, transforms: TransformList
    ) -> list[np.ndarray] | np.ndarray:
        """Transformed polygons of one annotation, or its transformed RLE mask ``[H', W']``."""
        seg = ann.get("segmentation")
        if isinstance(seg, (list, tuple)):
            try:
                return transforms.apply_polygons(seg)
            except (TypeError, ValueError) as e:
                raise self._error(record, str(e), annotation=index, field="segmentation") from e
        if isinstance(seg, dict):
            if self.mask_format == "polygon":
                raise self._error(
                    record,
                    "is an RLE, which needs DatasetMapper(mask_format='bitmask')",
                    annotation=index,
                    field="segmentation",
                )
            size = (int(record["height"]), int(record["width"]))
            try:
                mask = rle_decode([seg], image_size=size).numpy()  # [1, H, W]
            except (TypeError, ValueError, KeyError) as e:
                raise self._error(
                    record, f"bad RLE ({e})", annotation=index, field="segmentation"
                ) from e
            return transforms.apply_bitmasks(mask)[0]
        raise self._error(
            record,
            f"must be polygons or an RLE dict, got {type(seg).__name__}",
            annotation=index,
            field="segmentation",
        )

    def _masks(
        self,
        record: dict,
        anns: list[tuple[int, dict]],
        transforms: TransformList,
        size: tuple[int, int],
    ) -> PolygonMasks | BitMasks:
        segs = [self._segmentation(record, i, a, transforms) for i, a in anns]
        if self.mask_format == "polygon":
            return PolygonMasks(segs)  # type: ignore[arg-type]
        h, w = size
        out = torch.zeros((len(segs), h, w), dtype=torch.bool)
        for k, seg in enumerate(segs):
            if isinstance(seg, np.ndarray):
                out[k] = torch.from_numpy(seg)
            else:
                out[k] = polygons_to_bitmask(seg, h, w)
        return BitMasks(out)

    def _keypoints(
        self,
        record: dict,
        anns: list[tuple[int, dict]],
        transforms: TransformList,
        size: tuple[int, int],
    ) -> torch.Tensor:
        rows: list[np.ndarray | None] = []
        num = None
        for i, ann in anns:
            kp = ann.get("keypoints")
            if kp is None:
                rows.append(None)
                continue
            arr = np.asarray(kp, dtype=np.float64) if isinstance(kp, (list, tuple)) else None
            if arr is None or arr.ndim != 1 or arr.size % 3 or not np.isfinite(arr).all():
                raise self._error(
                    record,
                    "must be a flat list [x, y, v] * P of finite numbers",
                    annotation=i,
                    field="keypoints",
                )
            if num is not None and arr.size // 3 != num:
                raise self._error(
                    record,
                    f"has {arr.size // 3} keypoints, earlier ones {num}",
                    annotation=i,
                    field="keypoints",
                )
            num = arr.size // 3
            rows.append(arr.reshape(num, 3))
        num = num or 0
        try:
            flip_permutation(self.keypoint_flip_pairs, num)
        except ValueError as e:
            raise ValueError(f"DatasetMapper: `keypoint_flip_pairs` do not fit ({e})") from e
        kps = (
            np.stack([np.zeros((num, 3)) if r is None else r for r in rows])
            if rows
            else (np.zeros((0, num, 3)))
        )
        kps = transforms.apply_keypoints(kps, self.keypoint_flip_pairs)
        h, w = size
        x, y = kps[..., 0], kps[..., 1]
        kps[..., 2][(x < 0) | (x > w) | (y < 0) | (y > h)] = 0
        kps[kps[..., 2] == 0] = 0  # COCO: unlabelled points have x = y = 0
        return torch.from_numpy(kps).to(torch.float32)
