"""COCO-format JSON (instances and person keypoints) to detforge records.

:func:`load_coco_json` returns the records described in ``detforge/data/__init__.py``:

* ``bbox`` xywh becomes xyxy and is clipped to the image (see ``errors.check_xyxy_box``);
* ``category_id`` becomes the contiguous label: the file's category ids, sorted, map to
  ``0 .. K-1`` (:attr:`CocoCategories.dataset_id_to_contiguous`);
* ``segmentation`` is kept as the file has it: a list of polygons or an RLE dict, compressed
  (``counts`` a string, decoded here to check that its runs cover the image) or uncompressed
  (``counts`` a list of run lengths); an empty list (box-only annotation) is omitted from the
  record. Polygons with fewer than 3 points, an odd number of coordinates, non-finite values or
  a vertex more than one image side outside the image are dropped and counted, and so are
  polygons that lie entirely outside the image (``polygon_outside_image``). An annotation left
  with no polygon, or whose RLE has no foreground pixel, is dropped and counted as
  ``empty_segmentation``: its mask would be empty;
* ``keypoints`` become continuous coordinates: ``+0.5`` to ``x`` and ``y`` of every labelled
  point (``v > 0``); unlabelled points (``v == 0``) are kept as the file has them (``0, 0, 0``);
* ``iscrowd`` (default 0), ``area`` (as the file states it) and the annotation ``id`` are kept;
* images without annotations are kept; image ids are used as they are (they may start at 0).

Problems are reported through :class:`detforge.data.errors.DataReport` (see that module for
``strict``). A syntax error in the JSON, a missing ``images`` or ``categories`` key and an invalid
category list (an empty one included: a detector needs at least one class) are always fatal. An
``image_id`` or ``category_id`` that is missing or not a scalar id (a list, a dict, a bool) drops
its annotation (``invalid_id``); an annotation ``id`` of that kind is reported the same way and
the annotation is kept without it. A missing ``annotations`` key is allowed (COCO's test-set
``image_info`` files have none) and gives records without annotations; a file that yields no
annotation at all (no key, an empty list, or every annotation dropped) is loaded but logged as a
warning with the image count, since nothing can be trained on it. Annotation positions in
messages are indices into the file's ``annotations`` list.
"""

from __future__ import annotations

import json
import logging
import math
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detforge.data.errors import DataError, DataReport, check_image_file, check_xyxy_box

__all__ = ["CocoCategories", "coco_categories", "load_coco_json", "load_coco_metadata"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoCategories:
    """Category metadata read from a COCO file.

    Attributes:
        class_names: names of the K classes in contiguous-label order.
        dataset_id_to_contiguous: the file's category id -> contiguous label in ``[0, K)``.
        keypoint_names: names of the P keypoints (empty when the categories define none).
        skeleton: keypoint index pairs, **0-based** (COCO's file is 1-based).
    """

    class_names: tuple[str, ...]
    dataset_id_to_contiguous: dict[int, int] = field(default_factory=dict)
    keypoint_names: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()


def _read_json(path: Path) -> dict[str, Any]:
    """Parse a COCO file; syntax errors and a missing ``images``/``categories`` are fatal."""
    if not path.is_file():
        raise FileNotFoundError(f"load_coco_json: annotation file {path} does not exist")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON: {exc.msg}",
            kind="json_syntax",
            path=path,
            line=exc.lineno,
            column=exc.colno,
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc}", kind="json_syntax", path=path) from exc
    except ValueError as exc:  # e.g. an integer literal over Python's 4300-digit limit
        raise DataError(f"malformed JSON: {exc}", kind="json_syntax", path=path) from exc
    except RecursionError as exc:
        msg = "malformed JSON: containers nested too deeply"
        raise DataError(msg, kind="json_syntax", path=path) from exc
    if not isinstance(data, dict):
        msg = f"top level must be a JSON object, got {type(data).__name__}"
        raise DataError(msg, kind="missing_key", path=path)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            msg = (
                "missing" if key not in data else f"must be a list, got {type(data[key]).__name__}"
            )
            raise DataError(f"top-level key is {msg}", kind="missing_key", path=path, field=key)
    if "annotations" in data and not isinstance(data["annotations"], list):
        msg = f"must be a list, got {type(data['annotations']).__name__}"
        raise DataError(msg, kind="missing_key", path=path, field="annotations")
    return data


def coco_categories(data: dict[str, Any], path: str | Path = "<memory>") -> CocoCategories:
    """Category metadata from a parsed COCO dict.

    Args:
        data: the parsed JSON, with a ``categories`` list of ``{"id": int, "name": str, ...}``
            (optionally ``keypoints`` and ``skeleton``).
        path: file name used in error messages.

    Returns:
        CocoCategories: contiguous labels follow the sorted category ids.

    Raises:
        DataError: no category, a category without an int ``id`` or a str ``name``, duplicate
            ids, ``keypoints`` that are not a list of names, a ``skeleton`` that is not a list
            of int pairs, or categories that define different keypoint lists.
    """
    cats = data.get("categories")
    if not isinstance(cats, list):
        raise DataError(
            "top-level key is missing", kind="missing_key", path=path, field="categories"
        )
    if not cats:
        msg = "is empty: a detector needs at least one category"
        raise DataError(msg, kind="invalid_category", path=path, field="categories")
    by_id: dict[int, dict[str, Any]] = {}
    for k, cat in enumerate(cats):
        ok = isinstance(cat, dict) and isinstance(cat.get("name"), str)
        if not ok or isinstance(cat.get("id"), bool) or not isinstance(cat.get("id"), int):
            msg = f"category {k} needs an int `id` and a str `name`, got {cat!r}"
            raise DataError(msg, kind="invalid_category", path=path, field="categories")
        if cat["id"] in by_id:
            msg = f"category id {cat['id']} appears twice"
            raise DataError(msg, kind="invalid_category", path=path, field="categories")
        by_id[cat["id"]] = cat
        _check_keypoint_fields(cat, k, path)
    ids = sorted(by_id)
    kp_lists = {tuple(c["keypoints"]) for c in cats if c.get("keypoints")}
    if len(kp_lists) > 1:
        msg = "categories define different keypoint lists; one list per file is supported"
        raise DataError(msg, kind="invalid_category", path=path, field="keypoints")
    kp_names = kp_lists.pop() if kp_lists else ()
    skeleton: tuple[tuple[int, int], ...] = ()
    for c in cats:
        if c.get("keypoints") and c.get("skeleton"):
            skeleton = tuple((int(a) - 1, int(b) - 1) for a, b in c["skeleton"])
            break
    return CocoCategories(
        class_names=tuple(by_id[i]["name"] for i in ids),
        dataset_id_to_contiguous={cid: label for label, cid in enumerate(ids)},
        keypoint_names=tuple(str(n) for n in kp_names),
        skeleton=skeleton,
    )


def _check_keypoint_fields(cat: dict[str, Any], k: int, path: str | Path) -> None:
    """Raise unless the category's ``keypoints`` are names and its ``skeleton`` int pairs."""
    kps, skeleton = cat.get("keypoints"), cat.get("skeleton")
    if kps and (not isinstance(kps, list) or not all(isinstance(n, str) for n in kps)):
        msg = f"category {k}: must be a list of keypoint names, got {reprlib.repr(kps)}"
        raise DataError(msg, kind="invalid_category", path=path, field="keypoints")
    pairs = isinstance(skeleton, list) and all(
        isinstance(p, list) and len(p) == 2 and all(_is_int(v) for v in p) for p in skeleton
    )
    if skeleton and not pairs:
        msg = f"category {k}: must be a list of [int, int] pairs, got {reprlib.repr(skeleton)}"
        raise DataError(msg, kind="invalid_category", path=path, field="skeleton")


def load_coco_metadata(json_file: str | Path) -> CocoCategories:
    """Read only the category metadata of a COCO file (the whole file is parsed).

    Args:
        json_file: path of the COCO JSON.

    Returns:
        CocoCategories: class names, ``dataset_id_to_contiguous``, keypoint names, skeleton.
    """
    path = Path(json_file)
    return coco_categories(_read_json(path), path)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float; ints too large for a float (``1e400`` written out) are not."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _id_problem(value: Any, what: str, *, allow_str: bool) -> str | None:
    """Why ``value`` cannot be an id, or ``None``; a float passes (``5.0`` finds id 5)."""
    if value is None:
        return "is missing"
    scalars: tuple[type, ...] = (int, float, str) if allow_str else (int, float)
    if isinstance(value, bool) or not isinstance(value, scalars):
        kind = "an int or str" if allow_str else "an int"
        return f"must be {kind} {what} id, got {type(value).__name__} {reprlib.repr(value)}"
    return None


def _rle_string_counts(s: str) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string; ``None`` when it is malformed.

    pycocotools' ``rleFrString`` format: each run is a little-endian base-32 number written as
    characters ``'0' + c`` (``c & 0x20``: more follow; ``c & 0x10`` on the last: negative); runs
    after the third are deltas from the run two places before. Decoded here because pycocotools
    checks none of it: runs short of ``H * W`` decode to uninitialised memory, and a truncated
    string is read past its end. Runs over 7 characters (2**34 pixels) count as malformed.
    """
    if not s.isascii():
        return None
    c = np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return []
    if ((c < 0) | (c > 63)).any() or c[-1] & 0x20:
        return None
    ends = np.flatnonzero((c & 0x20) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 7:
        return None
    shift = 5 * (np.arange(c.size) - np.repeat(starts, lengths))  # 5 * position in the number
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])  # run 3 adds run 1, run 5 adds run 3, ...
    counts[2::2] = np.cumsum(values[2::2])  # run 4 adds run 2, ...; run 0 stands alone
    return [int(v) for v in counts]


class _CocoParser:
    """Turns the parsed JSON into records, reporting problems; one instance per file."""

    def __init__(
        self,
        *,
        path: Path,
        image_root: Path,
        strict: bool,
        report: DataReport,
        tolerance: float,
        extra_keys: tuple[str, ...],
    ) -> None:
        self.path = path
        self.image_root = image_root
        self.strict = strict
        self.report = report
        self.tolerance = tolerance
        self.extra_keys = extra_keys

    def problem(self, kind: str, message: str, **where: Any) -> None:
        self.report.handle(
            DataError(message, kind=kind, path=self.path, **where), strict=self.strict
        )

    def images(self, images: list[Any]) -> dict[Any, dict[str, Any]]:
        """``image id -> record`` in file order; invalid and duplicate images are dropped."""
        records: dict[Any, dict[str, Any]] = {}
        for k, img in enumerate(images):
            iid = img.get("id") if isinstance(img, dict) else None
            if not isinstance(iid, (int, str)) or isinstance(iid, bool):
                self.problem("invalid_image", f"image entry {k} has no int/str `id`", field="id")
                continue
            if iid in records:
                self.problem("duplicate_image_id", f"image id repeated at entry {k}", record=iid)
                continue
            bad = [f for f in ("height", "width") if not _positive_int(img.get(f))]
            if not isinstance(img.get("file_name"), str):
                bad.insert(0, "file_name")
            if bad:
                self.problem(
                    "invalid_image", f"missing or invalid ({img!r})", record=iid, field=bad[0]
                )
                continue
            records[iid] = {
                "file_name": str(self.image_root / img["file_name"]),
                "height": img["height"],
                "width": img["width"],
                "image_id": iid,
                "annotations": [],
            }
        return records

    def annotations(
        self, anns: list[Any], records: dict[Any, dict[str, Any]], cats: CocoCategories
    ) -> None:
        """Append each valid annotation to its image's record."""
        kp_len = 3 * len(cats.keypoint_names)
        seen_ids: set[Any] = set()
        for k, ann in enumerate(anns):
            if not isinstance(ann, dict):
                msg = f"must be a JSON object, got {type(ann).__name__} {reprlib.repr(ann)}"
                self.problem("invalid_annotation", msg, annotation=k)
                continue
            iid = ann.get("image_id")
            bad = _id_problem(iid, "image", allow_str=True)
            if bad is not None:
                self.problem("invalid_id", bad, annotation=k, field="image_id")
                continue
            if iid not in records:
                msg = f"refers to unknown image id {reprlib.repr(iid)}"
                self.problem("unknown_image", msg, annotation=k, field="image_id")
                continue
            where = {"record": iid, "annotation": k}
            cid = ann.get("category_id")
            bad = _id_problem(cid, "category", allow_str=False)
            if bad is not None:
                self.problem("invalid_id", bad, field="category_id", **where)
                continue
            if cid not in cats.dataset_id_to_contiguous:
                msg = f"unknown category id {reprlib.repr(cid)}"
                self.problem("unknown_category", msg, field="category_id", **where)
                continue
            if "id" in ann:
                bad = _id_problem(ann["id"], "annotation", allow_str=True)
                if bad is not None:
                    msg = f"{bad} (annotation kept without it)"
                    self.problem("invalid_id", msg, field="id", **where)
                    ann = {key: v for key, v in ann.items() if key != "id"}
                else:
                    if ann["id"] in seen_ids:
                        aid = reprlib.repr(ann["id"])
                        msg = f"annotation id {aid} is not unique (annotation kept)"
                        self.problem("duplicate_annotation_id", msg, field="id", **where)
                    seen_ids.add(ann["id"])
            out = self.annotation(ann, records[iid], cats, kp_len, where)
            if out is not None:
                records[iid]["annotations"].append(out)

    def annotation(
        self,
        ann: dict[str, Any],
        record: dict[str, Any],
        cats: CocoCategories,
        kp_len: int,
        where: dict[str, Any],
    ) -> dict[str, Any] | None:
        """One record annotation, or ``None`` when it must be dropped."""
        box = self.bbox(ann.get("bbox"), record["height"], record["width"], where)
        if box is None:
            return None
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            self.problem(
                "invalid_iscrowd", f"must be 0 or 1, got {crowd!r}", field="iscrowd", **where
            )
            return None
        out: dict[str, Any] = {
            "bbox": box,
            "category_id": cats.dataset_id_to_contiguous[ann["category_id"]],
            "iscrowd": int(crowd),
        }
        if "segmentation" in ann:
            segm = self.segmentation(ann["segmentation"], record, where)
            if segm is False:
                return None
            if segm is not None:
                out["segmentation"] = segm
        if "keypoints" in ann:
            kps = self.keypoints(ann["keypoints"], kp_len, where)
            if kps is None:
                return None
            out["keypoints"] = kps
        if _is_number(ann.get("area")):
            out["area"] = float(ann["area"])
        if "id" in ann:
            out["id"] = ann["id"]
        for key in self.extra_keys:
            if key in ann:
                out[key] = ann[key]
        return out

    def bbox(self, bbox: Any, height: int, width: int, where: dict[str, Any]) -> list[float] | None:
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            msg = f"must be 4 finite numbers [x, y, w, h], got {bbox!r}"
            self.problem("invalid_bbox", msg, field="bbox", **where)
            return None
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            msg = f"width {w:g} or height {h:g} is negative in [x, y, w, h] = {bbox}"
            self.problem("invalid_bbox", msg, field="bbox", **where)
            return None
        box, problem = check_xyxy_box([x, y, x + w, y + h], height, width, tolerance=self.tolerance)
        if problem is not None:
            self.problem(problem[0], problem[1], field="bbox", **where)
        return box

    def segmentation(self, segm: Any, record: dict[str, Any], where: dict[str, Any]) -> Any:
        """Checked segmentation; ``None`` to omit the field, ``False`` to drop the annotation."""
        height, width = record["height"], record["width"]
        if isinstance(segm, dict):
            return self.rle(segm, height, width, where)
        if not isinstance(segm, list):
            msg = f"must be a list of polygons or an RLE dict, got {type(segm).__name__}"
            self.problem("invalid_segmentation", msg, field="segmentation", **where)
            return False
        if not segm:
            return None
        polygons = []
        for j, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(map(_is_number, poly)) or len(poly) % 2:
                msg = f"polygon {j} must be an even-length list of finite numbers"
                self.problem("invalid_polygon", msg, field="segmentation", **where)
            elif len(poly) < 6:
                msg = f"polygon {j} has {len(poly)} coordinates (< 6, fewer than 3 points); dropped"
                self.problem("short_polygon", msg, field="segmentation", **where)
            elif _far_outside(poly[0::2], width) or _far_outside(poly[1::2], height):
                msg = f"polygon {j} has a vertex more than one image side outside the "
                msg += f"{width}x{height} image; dropped"
                self.problem("invalid_polygon", msg, field="segmentation", **where)
            elif _outside(poly[0::2], width) or _outside(poly[1::2], height):
                msg = f"polygon {j} lies entirely outside the {width}x{height} image; dropped"
                self.problem("polygon_outside_image", msg, field="segmentation", **where)
            else:
                polygons.append([float(v) for v in poly])
        if not polygons:
            msg = "no valid polygon left; annotation dropped"
            self.problem("empty_segmentation", msg, field="segmentation", **where)
            return False
        return polygons

    def rle(self, rle: dict[str, Any], height: int, width: int, where: dict[str, Any]) -> Any:
        """Checked RLE (its runs must cover the image); ``False`` to drop the annotation."""
        size, counts = rle.get("size"), rle.get("counts")
        runs: list[int] | None = None
        problem = None
        if size != [height, width]:
            shown = reprlib.repr(size)
            problem = f"RLE size {shown} differs from the image's [height, width] {[height, width]}"
        elif isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts):
                problem = "uncompressed RLE counts must be non-negative ints"
            elif sum(counts) != height * width:
                problem = f"uncompressed RLE counts sum to {sum(counts)}, not {height * width}"
            runs = counts
        elif isinstance(counts, str):
            runs = _rle_string_counts(counts)
            if runs is None:
                problem = f"compressed RLE counts {reprlib.repr(counts)} are not a COCO RLE string"
            elif any(r < 0 for r in runs):
                problem = f"compressed RLE has a negative run: {reprlib.repr(runs)}"
            elif sum(runs) != height * width:
                problem = f"compressed RLE runs sum to {sum(runs)}, not {height * width}"
        else:
            problem = f"RLE counts must be a str or a list, got {type(counts).__name__}"
        if problem is not None:
            self.problem("invalid_segmentation", problem, field="segmentation", **where)
            return False
        if runs is not None and not any(runs[1::2]):
            msg = "the RLE has no foreground pixel; annotation dropped"
            self.problem("empty_segmentation", msg, field="segmentation", **where)
            return False
        return {"size": [height, width], "counts": counts}

    def keypoints(self, kps: Any, kp_len: int, where: dict[str, Any]) -> list[float] | None:
        want = f"{kp_len}" if kp_len else "a multiple of 3"
        ok_len = isinstance(kps, list) and (len(kps) == kp_len if kp_len else len(kps) % 3 == 0)
        if not ok_len:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            msg = f"has length {got}, expected {want} (3 per keypoint)"
            self.problem("keypoints_length", msg, field="keypoints", **where)
            return None
        if not all(map(_is_number, kps)) or any(v not in (0, 1, 2) for v in kps[2::3]):
            msg = "values must be finite numbers with visibility 0, 1 or 2"
            self.problem("invalid_keypoints", msg, field="keypoints", **where)
            return None
        out = [float(v) for v in kps]
        for i in range(0, len(out), 3):
            if out[i + 2] > 0:
                out[i] += 0.5
                out[i + 1] += 0.5
        return out

    def check_images(self, records: list[dict[str, Any]], sizes: bool) -> list[dict[str, Any]]:
        kept = []
        for rec in records:
            hw = (rec["height"], rec["width"]) if sizes else (None, None)
            problem = check_image_file(rec["file_name"], height=hw[0], width=hw[1])
            if problem is None:
                kept.append(rec)
            else:
                self.problem(problem[0], problem[1], record=rec["image_id"], field="file_name")
        return kept


def _outside(coords: list[float], limit: int) -> bool:
    """Whether the coordinates all lie at or below 0, or all at or above ``limit``."""
    return max(coords) <= 0 or min(coords) >= limit


def _far_outside(coords: list[float], limit: int) -> bool:
    """Whether a coordinate lies more than ``limit`` outside ``[0, limit]``: no annotation has
    cause to, and pycocotools' rasteriser takes seconds from about 1e6 and crashes from 1e8."""
    return min(coords) < -limit or max(coords) > 2 * limit


_MAX_SIDE = 2**31 - 1  # image sides beyond int32 are no image: refused as invalid


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_SIDE


def _warn_no_annotations(source: str, data: dict[str, Any], n_images: int) -> None:
    n_file = len(data.get("annotations", []))
    if "annotations" not in data:
        why = "the file has no `annotations` key"
    elif n_file == 0:
        why = "its `annotations` list is empty"
    else:
        why = f"all {n_file} of its annotations were dropped (see the data problems above)"
    msg = "%s: no annotations in %d image(s): %s; fine to predict on, nothing to train on"
    logger.warning(msg, source, n_images, why)


def load_coco_json(
    json_file: str | Path,
    image_root: str | Path,
    *,
    dataset_name: str | None = None,
    strict: bool = False,
    report: DataReport | None = None,
    extra_annotation_keys: Sequence[str] | Iterable[str] = (),
    check_images: bool = False,
    check_image_sizes: bool = False,
    bbox_tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """Load a COCO instances / person-keypoints JSON as a list of records.

    Args:
        json_file: the COCO JSON file.
        image_root: folder the images' ``file_name`` entries are relative to; records hold
            absolute paths (``Path.absolute``, symlinks kept).
        dataset_name: name used in the log messages (defaults to the file name).
        strict: raise :class:`DataError` at the first problem instead of dropping and counting.
        report: when given, every problem found is also added to this report.
        extra_annotation_keys: further annotation keys to copy into the records unchanged.
        check_images: check that every image file exists (one ``stat`` per image; off by default
            because it is slow on network file systems with 100k images). Images without a file
            are dropped.
        check_image_sizes: also read each image header (PIL, no decoding; EXIF rotations
            applied, as the image reader does) and drop images whose size differs from the
            file's ``height``/``width``. Implies ``check_images``.
        bbox_tolerance: pixels a box may stick out of the image before it is reported (it is
            clipped either way).

    Returns:
        list[dict]: one record per image, in the file's image order (see
        ``detforge/data/__init__.py`` for the fields); ``bbox`` is xyxy, absolute pixels. When
        the records hold no annotation at all (no ``annotations`` key, an empty list, or every
        annotation dropped), they are still returned and a warning says so with the image
        count; it is not a data problem (``strict=True`` does not raise), since test-set image
        lists have no annotations.

    Raises:
        FileNotFoundError: ``json_file`` does not exist.
        DataError: malformed JSON (with line and column), missing top-level keys or invalid
            categories (an empty list included); with ``strict=True``, any problem. Bad data
            never raises anything else.
    """
    path = Path(json_file)
    local = DataReport()
    data = _read_json(path)
    cats = coco_categories(data, path)
    parser = _CocoParser(
        path=path,
        image_root=Path(image_root).absolute(),
        strict=strict,
        report=local,
        tolerance=float(bbox_tolerance),
        extra_keys=tuple(extra_annotation_keys),
    )
    by_id = parser.images(data["images"])
    parser.annotations(data.get("annotations", []), by_id, cats)
    records = list(by_id.values())
    if check_images or check_image_sizes:
        records = parser.check_images(records, sizes=check_image_sizes)
    n_anns = sum(len(r["annotations"]) for r in records)
    source = dataset_name or str(path)
    logger.info("%s: loaded %d images, %d annotations", source, len(records), n_anns)
    local.log(source, logger)
    if n_anns == 0:
        _warn_no_annotations(source, data, len(records))
    if report is not None:
        report.merge(local)
    return records
