"""Precomputed proposals (Fast R-CNN style) read from pickle-free files and attached to records.

Proposal files map image ids to boxes and scores. Boxes are always **xyxy in absolute pixels of
the original image** (there is no box-mode field). Three formats, chosen by the file extension:

``.npz`` (numpy, loaded with ``allow_pickle=False``)
    ``ids`` ``[N]`` int64 or unicode strings; ``boxes`` ``[T, 4]`` float, the proposals of all
    images concatenated in ``ids`` order; ``scores`` ``[T]`` float; ``lengths`` ``[N]`` int64,
    the number of proposals of each image (``sum(lengths) == T``). A ragged list cannot be stored
    in an ``.npz`` without pickle, hence the concatenation.
``.json``
    ``{"ids": [...], "boxes": [[[x1, y1, x2, y2], ...], ...], "scores": [[s, ...], ...]}``: one
    list of boxes and one list of scores per image.
``.pt`` (``torch.load(weights_only=True)``)
    ``{"ids": list[int | str] or Tensor[N], "boxes": list[Tensor[P, 4]],
    "scores": list[Tensor[P]]}``.

Nothing here ever unpickles arbitrary objects. :func:`save_proposals` writes all three formats.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from detforge.data.errors import DataError, DataReport

__all__ = ["load_proposals", "load_proposals_into_records", "save_proposals"]

logger = logging.getLogger(__name__)

Proposals = dict[Any, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]
_FORMATS = (".npz", ".json", ".pt")


def _fail(path: Path, message: str, **where: Any) -> DataError:
    return DataError(message, kind="invalid_proposals", path=path, **where)


def _read_raw(path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """``(ids, boxes per image, scores per image)`` as stored, before validation."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            missing = {"ids", "boxes", "scores", "lengths"} - set(data.files)
            if missing:
                raise _fail(path, f"missing arrays {sorted(missing)}", field=sorted(missing)[0])
            try:
                ids, boxes, scores = data["ids"].tolist(), data["boxes"], data["scores"]
            except ValueError as exc:  # object arrays need pickle, which is never allowed
                raise _fail(path, f"arrays must not need pickle: {exc}") from exc
            lengths = data["lengths"].astype(np.int64)
        if lengths.ndim != 1 or len(lengths) != len(ids) or (lengths < 0).any():
            raise _fail(path, "must be N non-negative counts, one per id", field="lengths")
        if int(lengths.sum()) != len(boxes) or len(scores) != len(boxes):
            msg = f"sum(lengths) = {int(lengths.sum())}, {len(boxes)} boxes, {len(scores)} scores"
            raise _fail(path, msg, field="lengths")
        if len(ids) == 0:
            return [], [], []
        cuts = np.cumsum(lengths)[:-1]
        return ids, np.split(boxes, cuts), np.split(scores, cuts)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(
                f"malformed JSON: {exc.msg}", kind="json_syntax", path=path, line=exc.lineno,
                column=exc.colno,
            ) from exc  # fmt: skip
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # refused: the file holds arbitrary objects
            raise _fail(path, f"not loadable with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(data, dict):
        raise _fail(path, f"top level must be a dict, got {type(data).__name__}")
    for key in ("ids", "boxes", "scores"):
        if key not in data:
            raise _fail(path, "missing key", field=key)
    ids = data["ids"].tolist() if isinstance(data["ids"], torch.Tensor) else list(data["ids"])
    return ids, list(data["boxes"]), list(data["scores"])


def _as_array(x: Any) -> npt.NDArray[np.float32]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def load_proposals(proposal_file: str | Path) -> Proposals:
    """Read a proposal file (see the module docstring for the formats).

    Args:
        proposal_file: a ``.npz``, ``.json`` or ``.pt`` file.

    Returns:
        dict: image id -> ``(boxes, scores)``: float32 ndarrays ``[P, 4]`` (xyxy, absolute
        pixels) and ``[P]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension.
        DataError: missing keys, ids and box lists of different lengths, boxes not ``[P, 4]``,
            non-finite or unordered (x2 < x1) boxes, or a repeated id.
    """
    path = Path(proposal_file)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"load_proposals: {path} must end with one of {_FORMATS}")
    if not path.is_file():
        raise FileNotFoundError(f"load_proposals: proposal file {path} does not exist")
    ids, boxes, scores = _read_raw(path)
    if not len(ids) == len(boxes) == len(scores):
        msg = f"{len(ids)} ids, {len(boxes)} box lists and {len(scores)} score lists"
        raise _fail(path, msg, field="ids")
    out: Proposals = {}
    for iid, b, s in zip(ids, boxes, scores, strict=True):
        if iid in out:
            raise _fail(path, "image id appears twice", record=iid, field="ids")
        b, s = _as_array(b), _as_array(s)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4 or s.shape != (len(b),):
            msg = f"boxes {list(b.shape)} and scores {list(s.shape)} must be [P, 4] and [P]"
            raise _fail(path, msg, record=iid, field="boxes")
        if not (np.isfinite(b).all() and np.isfinite(s).all()):
            raise _fail(path, "non-finite values", record=iid, field="boxes")
        if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            raise _fail(
                path, "boxes must be xyxy with x2 >= x1 and y2 >= y1", record=iid, field="boxes"
            )
        out[iid] = (b, s)
    return out


def load_proposals_into_records(
    records: Sequence[dict[str, Any]],
    proposal_file: str | Path,
    *,
    strict: bool = False,
    report: DataReport | None = None,
) -> list[dict[str, Any]]:
    """Attach precomputed proposals to records, matched by ``image_id``.

    Args:
        records: dataset records (see ``detforge/data/__init__.py``); not modified.
        proposal_file: a ``.npz``, ``.json`` or ``.pt`` proposal file.
        strict: raise :class:`DataError` for the first image without proposals; otherwise it gets
            empty proposals and the problem is counted as ``missing_proposals``.
        report: when given, every problem found is also added to this report.

    Returns:
        list[dict]: shallow copies of ``records``, each with ``proposals = {"boxes": float32
        ndarray [P, 4] (xyxy, absolute pixels), "scores": float32 ndarray [P]}``. Ids in the file
        that match no record are ignored (and counted in the log).
    """
    path = Path(proposal_file)
    proposals = load_proposals(path)
    local = DataReport()
    out = []
    for rec in records:
        iid = rec["image_id"]
        found = proposals.get(iid)
        if found is None:
            err = DataError(
                "no proposals for this image", kind="missing_proposals", path=path, record=iid
            )
            local.handle(err, strict=strict)
            found = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        out.append({**rec, "proposals": {"boxes": found[0], "scores": found[1]}})
    unused = len(set(proposals) - {rec["image_id"] for rec in records})
    logger.info("%s: proposals for %d of %d ids unused", path, unused, len(proposals))
    local.log(str(path), logger)
    if report is not None:
        report.merge(local)
    return out


def save_proposals(
    path: str | Path,
    ids: Sequence[int | str],
    boxes: Sequence[npt.ArrayLike | torch.Tensor],
    scores: Sequence[npt.ArrayLike | torch.Tensor],
) -> None:
    """Write proposals in the format given by ``path``'s extension (``.npz``, ``.json``, ``.pt``).

    Args:
        path: output file.
        ids: N image ids (all ints or all strings).
        boxes: N arrays ``[P_i, 4]``, xyxy in absolute pixels.
        scores: N arrays ``[P_i]``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"save_proposals: {p} must end with one of {_FORMATS}")
    if not len(ids) == len(boxes) == len(scores):
        msg = f"{len(ids)} ids, {len(boxes)} box lists and {len(scores)} score lists"
        raise ValueError(f"save_proposals: need one box and score list per id, got {msg}")
    b = [_as_array(x).reshape(-1, 4) for x in boxes]
    s = [_as_array(x).reshape(-1) for x in scores]
    if suffix == ".npz":
        np.savez(
            p,
            ids=np.asarray(list(ids)),
            boxes=np.concatenate(b) if b else np.zeros((0, 4), np.float32),
            scores=np.concatenate(s) if s else np.zeros((0,), np.float32),
            lengths=np.asarray([len(x) for x in b], dtype=np.int64),
        )
    elif suffix == ".json":
        data = {
            "ids": list(ids),
            "boxes": [x.tolist() for x in b],
            "scores": [x.tolist() for x in s],
        }
        p.write_text(json.dumps(data))
    else:
        tensors = {
            "boxes": [torch.from_numpy(x) for x in b],
            "scores": [torch.from_numpy(x) for x in s],
        }
        torch.save({"ids": list(ids), **tensors}, p)
