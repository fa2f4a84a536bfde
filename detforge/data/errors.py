"""Bad-data reporting shared by the dataset loaders: ``DataError``, ``DataReport`` and the checks.

Every loader takes ``strict: bool = False`` and ``report: DataReport | None = None``:

* ``strict=True`` raises a :class:`DataError` at the first problem;
* ``strict=False`` drops the bad annotation (or image), or repairs it where the repair is exact
  (clipping a box to the image), counts the problem in a :class:`DataReport` and goes on. Each
  loader call logs a summary of what it found (``logging`` warning), and when the caller passes
  ``report=`` the problems are also added to that object, so that nothing is skipped silently.

A :class:`DataError` names where the problem is, from the outside in::

    data/train.json: image 17: annotation 3: field `bbox`: width -4.0 is negative

The box and image-file checks used by both the COCO and the VOC loaders live here too, so the two
formats report the same problem with the same *kind* (the key of :attr:`DataReport.counts`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = [
    "DataError",
    "DataReport",
    "check_image_file",
    "check_xyxy_box",
    "read_image_size",
]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem in a dataset file, located by file, image, annotation and field.

    Args:
        message: what is wrong.
        kind: short machine-readable category of the problem (``"empty_bbox"``,
            ``"unknown_category"``, ...); the key under which :class:`DataReport` counts it.
        path: the file that holds the problem.
        record: the image id (COCO ``id``, VOC file stem) or the record's index.
        annotation: position of the annotation within its image (or within the file).
        field: the offending field (``"bbox"``, ``"segmentation"``, ...).
        line: line in the file, for syntax errors.
        column: column in the file, for syntax errors.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "other",
        path: str | Path | None = None,
        record: int | str | None = None,
        annotation: int | None = None,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.kind = kind
        self.path = None if path is None else str(path)
        self.record = record
        self.annotation = annotation
        self.field = field
        self.line = line
        self.column = column
        super().__init__(self._format())

    def _format(self) -> str:
        parts: list[str] = []
        if self.path is not None:
            parts.append(self.path)
        if self.line is not None:
            parts.append(
                f"line {self.line}" + ("" if self.column is None else f", column {self.column}")
            )
        if self.record is not None:
            parts.append(f"image {self.record}")
        if self.annotation is not None:
            parts.append(f"annotation {self.annotation}")
        if self.field is not None:
            parts.append(f"field `{self.field}`")
        parts.append(self.message)
        return ": ".join(parts)


@dataclass
class _Kind:
    count: int
    examples: list[DataError]


class DataReport:
    """Counts the problems a lenient loader found, with the first few examples of each kind.

    Args:
        max_examples: how many examples to keep per kind.

    Example::

        report = DataReport()
        records = load_coco_json("train.json", "images/", report=report)
        print(report.summary())     # or report.counts["empty_bbox"]
    """

    def __init__(self, max_examples: int = 5) -> None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
            raise ValueError(
                f"DataReport: `max_examples` must be an int >= 0, got {max_examples!r}"
            )
        self.max_examples = max_examples
        self._kinds: dict[str, _Kind] = {}

    def add(self, error: DataError) -> None:
        """Count ``error`` under ``error.kind`` (and keep it if it is one of the first few)."""
        if not isinstance(error, DataError):
            raise TypeError(f"DataReport.add: expected a DataError, got {type(error).__name__}")
        entry = self._kinds.setdefault(error.kind, _Kind(0, []))
        entry.count += 1
        if len(entry.examples) < self.max_examples:
            entry.examples.append(error)

    def handle(self, error: DataError, *, strict: bool) -> None:
        """Raise ``error`` when ``strict``; otherwise :meth:`add` it."""
        if strict:
            raise error
        self.add(error)

    def merge(self, other: DataReport) -> None:
        """Add the counts and examples of ``other`` to this report."""
        for kind, entry in other._kinds.items():
            mine = self._kinds.setdefault(kind, _Kind(0, []))
            mine.count += entry.count
            room = self.max_examples - len(mine.examples)
            mine.examples.extend(entry.examples[: max(room, 0)])

    @property
    def counts(self) -> dict[str, int]:
        """Number of problems per kind, e.g. ``{"empty_bbox": 2}``."""
        return {kind: entry.count for kind, entry in sorted(self._kinds.items())}

    def examples(self, kind: str) -> list[DataError]:
        """The first ``max_examples`` errors of ``kind`` (empty for an unseen kind)."""
        entry = self._kinds.get(kind)
        return [] if entry is None else list(entry.examples)

    def __len__(self) -> int:
        """Total number of problems."""
        return sum(entry.count for entry in self._kinds.values())

    def __bool__(self) -> bool:
        return len(self) > 0

    def summary(self) -> str:
        """A multi-line human-readable summary: one line per kind and its examples."""
        if not self._kinds:
            return "no data problems found"
        lines = [f"{len(self)} data problem(s) found:"]
        for kind, entry in sorted(self._kinds.items()):
            lines.append(f"  {kind}: {entry.count}")
            lines.extend(f"    e.g. {error}" for error in entry.examples)
            hidden = entry.count - len(entry.examples)
            if hidden > 0:
                lines.append(f"    ... and {hidden} more")
        return "\n".join(lines)

    def log(self, source: str, log: logging.Logger | None = None) -> None:
        """Log :meth:`summary` as a warning (an info line when there is nothing to report)."""
        target = logger if log is None else log
        if self:
            target.warning("%s: %s", source, self.summary())
        else:
            target.info("%s: no data problems found", source)


def check_xyxy_box(
    box: Sequence[float], height: int, width: int, *, tolerance: float = 1.0
) -> tuple[list[float] | None, tuple[str, str] | None]:
    """Validate one xyxy box against its image, clipping it when it sticks out.

    Args:
        box: ``(x1, y1, x2, y2)``, absolute pixels (already converted from the file's format).
        height: image height ``H``.
        width: image width ``W``.
        tolerance: a box may stick out of ``[0, W] x [0, H]`` by this many pixels before it is
            reported; it is clipped to the image either way.

    Returns:
        ``(box, problem)``. ``box`` is the (clipped) box as 4 floats, or ``None`` when it must be
        dropped; ``problem`` is ``None`` or ``(kind, message)`` with kind ``"invalid_bbox"``
        (non-finite, or x2 < x1 / y2 < y1; dropped), ``"empty_bbox"`` (zero width or height, also
        after clipping; dropped) or ``"bbox_outside_image"`` (clipped and kept).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, ("invalid_bbox", f"non-finite coordinates {[x1, y1, x2, y2]}")
    if x2 < x1 or y2 < y1:
        return None, ("invalid_bbox", f"width {x2 - x1:g} or height {y2 - y1:g} is negative")
    if x2 == x1 or y2 == y1:
        return None, ("empty_bbox", f"zero-area box {[x1, y1, x2, y2]}")
    w, h = float(width), float(height)  # the box stays 4 floats when clipped to the border
    clipped = [
        min(max(x1, 0.0), w),
        min(max(y1, 0.0), h),
        min(max(x2, 0.0), w),
        min(max(y2, 0.0), h),
    ]
    outside = x1 < -tolerance or y1 < -tolerance
    outside = outside or x2 > width + tolerance or y2 > height + tolerance
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        msg = f"box {[x1, y1, x2, y2]} lies outside the {width}x{height} image"
        return None, ("empty_bbox", msg)
    if outside:
        msg = f"box {[x1, y1, x2, y2]} extends outside the {width}x{height} image; clipped"
        return clipped, ("bbox_outside_image", msg)
    return clipped, None


_EXIF_ORIENTATION = 0x0112


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image after its EXIF orientation, from the header only.

    PIL opens files lazily, so no pixel is decoded. EXIF orientations 5-8 (the rotations by 90
    degrees) swap height and width, as the image reader applies them.

    Args:
        path: the image file.

    Returns:
        ``(height, width)`` in pixels.

    Raises:
        OSError: the file is missing, not an image PIL can identify, or one PIL refuses to open
            (a header claiming more than ``PIL.Image.MAX_IMAGE_PIXELS``, a decompression bomb;
            a malformed header): PIL's other errors are re-raised as ``OSError`` with the same
            message, so callers catch one type.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def check_image_file(
    path: str | Path, *, height: int | None = None, width: int | None = None
) -> tuple[str, str] | None:
    """Check that an image file exists and, when ``height``/``width`` are given, its size.

    The size is :func:`read_image_size`'s (header only, after EXIF orientation), so the check is
    cheap and agrees with what the image reader will decode.

    Args:
        path: the image file.
        height: expected height, or ``None`` to skip the size check.
        width: expected width, or ``None`` to skip the size check.

    Returns:
        ``None`` when the file is fine, else ``(kind, message)`` with kind ``"missing_image"``,
        ``"unreadable_image"`` or ``"image_size_mismatch"``.
    """
    p = Path(path)
    try:
        exists = p.is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        return "missing_image", f"image file {p} cannot be looked up: {exc}"
    if not exists:
        return "missing_image", f"image file {p} does not exist"
    if height is None or width is None:
        return None
    try:
        h, w = read_image_size(p)
    except OSError as exc:
        return "unreadable_image", f"cannot read image file {p}: {exc}"
    if (h, w) != (height, width):
        hint = " (swapped: EXIF orientation?)" if (w, h) == (height, width) else ""
        msg = f"image file {p} is {w}x{h} (WxH) but the annotation says {width}x{height}{hint}"
        return "image_size_mismatch", msg
    return None
