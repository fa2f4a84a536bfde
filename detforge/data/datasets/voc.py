"""Pascal VOC XML (VOCdevkit and labelImg layouts) to detforge records.

Two layouts are read by :func:`load_voc`:

* **VOCdevkit**: ``root/Annotations/<id>.xml``, ``root/JPEGImages/<id>.jpg`` and
  ``root/ImageSets/Main/<split>.txt`` (one image id per line);
* **labelImg-style** folders: a folder of XML files beside (or mixed with) a folder of images,
  with any folder names (``annotations_dir=`` / ``images_dir=``) and no split files
  (``split=None`` reads every ``*.xml``; :func:`split_records` makes a seeded train/val split).

The image of an XML file is looked up by its ``<filename>``, then by the XML's stem (and the
``<filename>``'s stem) with the common image extensions, in ``images_dir`` (default:
``root/JPEGImages`` when it exists, then the annotations folder).

VOC boxes are 1-based inclusive integer corners; a record's ``bbox`` is
``(xmin - 1, ymin - 1, xmax, ymax)`` in the continuous pixel model of ``structures/boxes.py``.
A box with ``xmax == xmin`` or ``ymax == ymin`` in the file is reported as ``empty_bbox`` and
dropped: it is a click without a drag in the annotation tool, not a 1-pixel object.
``difficult`` and ``truncated`` are kept per annotation (``False`` when absent); ``iscrowd`` is 0.
Class names default to the sorted set of names found in the data; when ``class_names`` is given,
objects with other names are reported (``unknown_class``) and dropped.

Problems (see ``detforge.data.errors``): malformed XML (``xml_syntax``, with the line and column;
the image is dropped), missing or invalid ``<size>`` (``missing_size``; the size is then read from
the image header, and the image is dropped only when that fails too), missing image files
(``missing_image``), ids listed in the split without an XML (``missing_annotation_file``) and the
box problems of :func:`detforge.data.errors.check_xyxy_box`.
"""

from __future__ import annotations

import logging
import random
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detforge.data.errors import DataError, DataReport, check_xyxy_box, read_image_size

__all__ = ["IMAGE_EXTENSIONS", "VOC_CLASSES", "load_voc", "split_records"]

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""The 20 Pascal VOC classes in their standard order."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Extensions tried (lower and upper case) when an image is found by stem."""


@dataclass
class _Object:
    name: str
    corners: list[str | None]
    difficult: bool
    truncated: bool


@dataclass
class _Parsed:
    xml: Path
    image_id: str
    filename: str | None
    size: tuple[int, int] | None  # (height, width)
    objects: list[_Object] = field(default_factory=list)


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


_MAX_SIDE = 2**31 - 1  # image sides beyond int32 are no image: treated as a missing size


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(float(text)) if text is not None else 0
    except (ValueError, OverflowError):  # "abc", "nan"; "inf", "1e400"
        return None
    return value if 0 < value <= _MAX_SIDE else None


def _flag(text: str | None) -> bool:
    return text is not None and text.lower() in ("1", "true", "yes")


class _VocReader:
    """Parses XML files and turns them into records, reporting problems."""

    def __init__(self, *, strict: bool, report: DataReport, tolerance: float) -> None:
        self.strict = strict
        self.report = report
        self.tolerance = tolerance

    def problem(self, kind: str, message: str, path: Path, **where: Any) -> None:
        self.report.handle(DataError(message, kind=kind, path=path, **where), strict=self.strict)

    def parse(self, xml: Path) -> _Parsed | None:
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            line, column = exc.position
            msg = f"malformed XML: {exc}"
            self.problem("xml_syntax", msg, xml, line=line, column=column)
            return None
        h, w = _positive_int(_text(root, "size/height")), _positive_int(_text(root, "size/width"))
        parsed = _Parsed(xml, xml.stem, _text(root, "filename"), None if not (h and w) else (h, w))
        for obj in root.findall("object"):
            parsed.objects.append(
                _Object(
                    name=_text(obj, "name") or "",
                    corners=[_text(obj, f"bndbox/{c}") for c in ("xmin", "ymin", "xmax", "ymax")],
                    difficult=_flag(_text(obj, "difficult")),
                    truncated=_flag(_text(obj, "truncated")),
                )
            )
        return parsed

    def record(
        self, parsed: _Parsed, image_dirs: Sequence[Path], label_of: dict[str, int]
    ) -> dict[str, Any] | None:
        xml, iid = parsed.xml, parsed.image_id
        image = _find_image(parsed, image_dirs)
        if image is None:
            dirs = ", ".join(str(d) for d in image_dirs)
            msg = f"no image file for <filename> {parsed.filename!r} or stem {iid!r} in {dirs}"
            self.problem("missing_image", msg, xml, record=iid, field="filename")
            return None
        size = parsed.size
        if size is None:
            msg = "missing or non-positive <size>/<height>, <width>; read from the image header"
            self.problem("missing_size", msg, xml, record=iid, field="size")
            try:
                size = read_image_size(image)
            except OSError as exc:
                msg = f"cannot read image {image} for its size: {exc}"
                self.problem("unreadable_image", msg, xml, record=iid, field="size")
                return None
        anns = []
        for k, obj in enumerate(parsed.objects):
            ann = self.annotation(obj, size, label_of, xml, {"record": iid, "annotation": k})
            if ann is not None:
                anns.append(ann)
        return {
            "file_name": str(image),
            "height": size[0],
            "width": size[1],
            "image_id": iid,
            "annotations": anns,
        }

    def annotation(
        self,
        obj: _Object,
        size: tuple[int, int],
        label_of: dict[str, int],
        xml: Path,
        where: dict[str, Any],
    ) -> dict[str, Any] | None:
        if obj.name not in label_of:
            msg = f"class {obj.name!r} is not in class_names {sorted(label_of)}"
            self.problem("unknown_class", msg, xml, field="name", **where)
            return None
        try:
            x1, y1, x2, y2 = (float(c) for c in obj.corners)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            msg = f"<bndbox> needs numeric xmin, ymin, xmax, ymax, got {obj.corners}"
            self.problem("invalid_bbox", msg, xml, field="bndbox", **where)
            return None
        if x2 == x1 or y2 == y1:
            msg = f"zero-area box in the file: xmin, ymin, xmax, ymax = {obj.corners}"
            self.problem("empty_bbox", msg, xml, field="bndbox", **where)
            return None
        box, problem = check_xyxy_box([x1 - 1, y1 - 1, x2, y2], *size, tolerance=self.tolerance)
        if problem is not None:
            self.problem(problem[0], problem[1], xml, field="bndbox", **where)
        if box is None:
            return None
        return {
            "bbox": box,
            "category_id": label_of[obj.name],
            "iscrowd": 0,
            "difficult": obj.difficult,
            "truncated": obj.truncated,
        }


def _find_image(parsed: _Parsed, image_dirs: Sequence[Path]) -> Path | None:
    names = [parsed.filename] if parsed.filename else []
    stems = dict.fromkeys([parsed.image_id] + [Path(n).stem for n in names])
    exts = [e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]
    names += [stem + ext for stem in stems for ext in exts]
    for folder in image_dirs:
        for name in names:
            candidate = folder / name
            if _is_file(candidate):
                return candidate
    return None


def _is_file(path: Path) -> bool:
    """``path.is_file()``, false also for names the file system refuses (too long, ...)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _xml_files(root: Path, ann_dir: Path, split: str | None, reader: _VocReader) -> list[Path]:
    if split is None:
        files = sorted(ann_dir.glob("*.xml"))
        if not files:
            raise ValueError(f"load_voc: no *.xml files in annotations folder {ann_dir}")
        return files
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"load_voc: split file {split_file} does not exist")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    files = []
    for i, iid in enumerate(ids):
        xml = ann_dir / f"{iid}.xml"
        if xml.is_file():
            files.append(xml)
        else:
            msg = f"line {i + 1} lists image {iid!r} but {xml} does not exist"
            reader.problem("missing_annotation_file", msg, split_file, record=iid)
    return files


def _resolve(root: Path, folder: str | Path | None, default: str) -> Path | None:
    if folder is not None:
        return root / folder  # an absolute `folder` replaces `root`
    return root / default if (root / default).is_dir() else None


def load_voc(
    root: str | Path,
    split: str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    annotations_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    strict: bool = False,
    report: DataReport | None = None,
    bbox_tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """Load Pascal VOC XML annotations as a list of records.

    Args:
        root: the dataset folder (``VOC2007/`` in a VOCdevkit, or a labelImg project folder).
        split: name of ``root/ImageSets/Main/<split>.txt``; ``None`` reads every ``*.xml`` in
            the annotations folder, sorted by name.
        class_names: the classes, in contiguous-label order; ``None`` takes the sorted set of
            names in the data (``VOC_CLASSES`` is the standard list).
        annotations_dir: folder of the XML files, absolute or relative to ``root``; default
            ``root/Annotations`` when it exists, else ``root`` itself.
        images_dir: folder of the images, absolute or relative to ``root``; default
            ``root/JPEGImages`` when it exists, then the annotations folder.
        strict: raise :class:`DataError` at the first problem instead of dropping and counting.
        report: when given, every problem found is also added to this report.
        bbox_tolerance: pixels a box may stick out of the image before it is reported (it is
            clipped either way).

    Returns:
        list[dict]: one record per image (``image_id`` is the XML file's stem), each annotation
        with ``bbox`` (xyxy, absolute pixels), ``category_id``, ``iscrowd``, ``difficult`` and
        ``truncated``.

    Raises:
        FileNotFoundError: ``root``, a given folder or the split file does not exist.
        ValueError: no XML file found, or an empty ``class_names``.
        DataError: with ``strict=True``, the first data problem.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"load_voc: dataset folder {root} does not exist")
    if class_names is not None and (isinstance(class_names, str) or len(class_names) == 0):
        raise ValueError(
            f"load_voc: `class_names` must be a non-empty sequence, got {class_names!r}"
        )
    ann_dir = _resolve(root, annotations_dir, "Annotations") or root
    img_dir = _resolve(root, images_dir, "JPEGImages")
    for name, folder in (("annotations_dir", ann_dir), ("images_dir", img_dir)):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"load_voc: `{name}` folder {folder} does not exist")
    local = DataReport()
    reader = _VocReader(strict=strict, report=local, tolerance=float(bbox_tolerance))
    files = _xml_files(root, ann_dir, split, reader)
    parsed = [p for p in map(reader.parse, files) if p is not None]
    if class_names is None:
        class_names = sorted({o.name for p in parsed for o in p.objects})
    label_of = {name: i for i, name in enumerate(class_names)}
    dirs = [d for d in (img_dir, ann_dir if images_dir is None else None) if d is not None]
    records = [r for p in parsed if (r := reader.record(p, dirs, label_of)) is not None]
    source = f"{root} ({split or 'all xml'})"
    n_anns = sum(len(r["annotations"]) for r in records)
    logger.info("%s: loaded %d images, %d annotations", source, len(records), n_anns)
    local.log(source, logger)
    if report is not None:
        report.merge(local)
    return records


def split_records(
    records: Sequence[dict[str, Any]], val_fraction: float, *, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into train and val at random, reproducibly, for data that has no splits.

    Args:
        records: the records to split.
        val_fraction: fraction of records that go to val, in ``[0, 1]``; the val size is
            ``round(len(records) * val_fraction)``.
        seed: seed of the shuffle; the same seed and records always give the same split.

    Returns:
        ``(train, val)``: two lists that partition ``records``, each in the input order.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"split_records: `val_fraction` must be a float, got {val_fraction!r}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"split_records: `val_fraction` must be in [0, 1], got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"split_records: `seed` must be an int, got {seed!r}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[: round(len(records) * val_fraction)])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val
