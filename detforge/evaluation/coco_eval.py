"""COCO evaluation of boxes, masks and keypoints with the official pycocotools ``COCOeval``.

:class:`COCOEvaluator` collects each image's detections as COCO result entries (see
:mod:`detforge.evaluation.coco_format`), and on rank 0 runs ``COCOeval`` once per task. The
ground truth is the COCO file itself when there is one (``json_file``), so the numbers are the
official ones; otherwise it is built in memory from the dataset records
(:func:`~detforge.evaluation.coco_format.records_to_coco`).

Reported per task, as percentages: ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``,
``APl`` (keypoints: no ``APs``), and ``AP-<class name>`` per class. Numbers pycocotools leaves
undefined (``-1``: no ground truth in that area range or class) are NaN.

Result entries follow COCO's submission formats: ``bbox`` results carry a box; ``segm`` results
carry the mask RLE and no box (pycocotools would otherwise replace the mask by the box polygon);
``keypoints`` results carry keypoints and no box (pycocotools then takes the detection's area
from the keypoints' extent, as for a submission to the COCO server).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detforge.data.catalog import DatasetMetadata
from detforge.data.datasets.coco import coco_categories
from detforge.evaluation.coco_format import (
    contiguous_to_dataset_ids,
    instances_to_coco_results,
    records_to_coco,
)
from detforge.structures.instances import Instances
from detforge.utils import comm

__all__ = ["COCOEvaluator", "records_to_coco"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm", "keypoints")
_METRICS = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
}
_RESULT_FIELD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}
RESULTS_FILE = "coco_instances_results.json"


def _quiet(fn: Any, *args: Any) -> Any:
    """Call a pycocotools function, sending what it prints to the debug log."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args)
    if buf.getvalue().strip():
        logger.debug("pycocotools:\n%s", buf.getvalue().rstrip())
    return out


def _coco_from_dict(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    _quiet(coco.createIndex)
    return coco


def _pct(v: float) -> float:
    return float("nan") if v < 0 else float(v) * 100.0


class COCOEvaluator:
    """COCO AP of detections, masks and keypoints (see the module docstring).

    Give either ``json_file`` (the COCO file the records were loaded from) or ``records`` with
    ``metadata`` (the ground truth is then built in memory).

    Args:
        json_file: a COCO annotation file.
        records: dataset records (see ``detforge/data/__init__.py``), instead of ``json_file``.
        metadata: class names and id mapping of ``records``; required with ``records``.
        tasks: tasks to evaluate among ``"bbox"``, ``"segm"``, ``"keypoints"``. A task is
            skipped (with a log line) when the predictions lack its field (no ``masks``, no
            ``keypoints``) or the ground truth lacks it.
        output_dir: where rank 0 writes ``coco_instances_results.json``; ``None`` writes nothing.
        dataset_id_to_contiguous: dataset category id -> contiguous label; default: the
            metadata's, else the loader's rule for ``json_file`` (sorted ids), else the identity.
        kpt_oks_sigmas: per-keypoint OKS sigmas; default COCO's 17 person sigmas, which only
            fit data with 17 keypoints (anything else must give its own).
    """

    def __init__(
        self,
        *,
        json_file: str | Path | None = None,
        records: Sequence[dict[str, Any]] | None = None,
        metadata: DatasetMetadata | None = None,
        tasks: Sequence[str] = _TASKS,
        output_dir: str | Path | None = None,
        dataset_id_to_contiguous: Mapping[int, int] | None = None,
        kpt_oks_sigmas: Sequence[float] | None = None,
    ) -> None:
        fn = "COCOEvaluator"
        if (json_file is None) == (records is None):
            raise ValueError(f"{fn}: give exactly one of `json_file` and `records`")
        bad = [t for t in tasks if t not in _TASKS]
        if isinstance(tasks, str) or bad or not tasks:
            raise ValueError(f"{fn}: `tasks` must be a non-empty subset of {_TASKS}, got {tasks}")
        self.tasks = tuple(tasks)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.kpt_oks_sigmas = None if kpt_oks_sigmas is None else [float(s) for s in kpt_oks_sigmas]
        if json_file is not None:
            path = Path(json_file)
            if not path.is_file():
                raise FileNotFoundError(f"{fn}: `json_file` {path} does not exist")
            self.coco_gt = _quiet(COCO, str(path))
            cats = coco_categories(self.coco_gt.dataset, path)
            mapping = dataset_id_to_contiguous
            if mapping is None:
                mapping = (metadata and metadata.dataset_id_to_contiguous) or (
                    cats.dataset_id_to_contiguous
                )
            num_classes = len(cats.class_names)
        else:
            if metadata is None:
                raise ValueError(f"{fn}: `records` need `metadata` (class names, id mapping)")
            if dataset_id_to_contiguous is not None:
                metadata = replace(
                    metadata, dataset_id_to_contiguous=dict(dataset_id_to_contiguous)
                )
            mapping = metadata.dataset_id_to_contiguous
            num_classes = len(metadata.class_names)
            self.coco_gt = _coco_from_dict(records_to_coco(records or [], metadata))
        self.contiguous_to_dataset = contiguous_to_dataset_ids(mapping, num_classes, fn)
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget the processed predictions."""
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[Instances]) -> None:
        """Convert one batch of detections to COCO result entries.

        Args:
            inputs: B model inputs with ``image_id`` (and ``height``, ``width``).
            outputs: B ``Instances`` in original image coordinates (``image_size`` must equal
                the input's ``(height, width)`` when the input states it).
        """
        fn = "COCOEvaluator.process"
        if len(inputs) != len(outputs):
            raise ValueError(f"{fn}: got {len(inputs)} inputs but {len(outputs)} outputs")
        for i, (x, out) in enumerate(zip(inputs, outputs, strict=True)):
            if not isinstance(out, Instances):
                raise TypeError(f"{fn}: output {i} must be Instances, got {type(out).__name__}")
            if "image_id" not in x:
                raise ValueError(f"{fn}: input {i} has no `image_id`")
            iid = x["image_id"]
            if iid not in self.coco_gt.imgs:
                raise ValueError(f"{fn}: image_id {iid!r} is not in the ground truth")
            if "height" in x and "width" in x and out.image_size != (x["height"], x["width"]):
                raise ValueError(
                    f"{fn}: output for image {iid!r} has image_size {out.image_size} but the "
                    f"image is {(x['height'], x['width'])}; run the model with original_sizes"
                )
            fields = ["bbox"] + ["segm"] * (out.masks is not None)
            fields += ["keypoints"] * (out.keypoints is not None)
            results = instances_to_coco_results(out, iid, self.contiguous_to_dataset)
            self._predictions.append({"image_id": iid, "results": results, "fields": fields})

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Gather the predictions on rank 0, write the result file and run ``COCOeval``.

        Returns:
            ``{task: {"AP": ..., "AP50": ..., ..., "AP-<class>": ...}}`` on rank 0, ``{}``
            elsewhere. With no processed image at all every metric is NaN (with a warning); with
            images but no detections the AP is 0 for every class that has ground truth.
        """
        parts = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return {}
        preds: dict[Any, dict[str, Any]] = {}
        for part in parts:
            for p in part:
                # an image seen twice (e.g. by a padding sampler) counts once
                preds.setdefault(p["image_id"], p)
        results = [r for p in preds.values() for r in p["results"]]
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            out_file = self.output_dir / RESULTS_FILE
            out_file.write_text(json.dumps(results))
            logger.info("wrote %d COCO results to %s", len(results), out_file)
        if not preds:
            logger.warning("COCOEvaluator: no image was processed; every metric is NaN")
            return {t: dict.fromkeys(_METRICS[t], float("nan")) for t in self.tasks}
        if not results:
            logger.warning("COCOEvaluator: the model made no detection on %d images", len(preds))
        fields = {f for p in preds.values() for f in p["fields"]}
        metrics: dict[str, dict[str, float]] = {}
        for task in self._runnable(fields):
            metrics[task] = self._evaluate_task(task, results, list(preds))
        return metrics

    def _runnable(self, predicted_fields: set[str]) -> list[str]:
        anns = self.coco_gt.dataset.get("annotations", [])
        gt_has = {
            "bbox": True,
            "segm": all("segmentation" in a for a in anns),
            "keypoints": any("keypoints" in a for a in anns),
        }
        tasks = []
        for task in self.tasks:
            if task not in predicted_fields:
                logger.info("COCOEvaluator: skipping %s: the predictions do not have it", task)
            elif not gt_has[task]:
                logger.warning("COCOEvaluator: skipping %s: the ground truth lacks it", task)
            else:
                tasks.append(task)
        return tasks

    def _load_results(self, dts: list[dict[str, Any]]) -> COCO:
        if dts:
            return _quiet(self.coco_gt.loadRes, dts)
        gt = self.coco_gt.dataset
        empty = {"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"])}
        return _coco_from_dict({**empty, "annotations": []})

    def _sigmas(self, dts: list[dict[str, Any]]) -> np.ndarray | None:
        anns = [a for a in self.coco_gt.dataset["annotations"] if "keypoints" in a]
        p = len(anns[0]["keypoints"]) // 3
        for d in dts:
            if len(d["keypoints"]) != 3 * p:
                n = len(d["keypoints"]) // 3
                raise ValueError(f"COCOEvaluator: predictions have {n} keypoints, ground truth {p}")
        if self.kpt_oks_sigmas is None:
            if p != 17:
                raise ValueError(
                    f"COCOEvaluator: the data has {p} keypoints; pass `kpt_oks_sigmas` "
                    "(the default is COCO's 17 person sigmas)"
                )
            return None
        if len(self.kpt_oks_sigmas) != p:
            raise ValueError(
                f"COCOEvaluator: `kpt_oks_sigmas` has {len(self.kpt_oks_sigmas)} values for "
                f"{p} keypoints"
            )
        return np.asarray(self.kpt_oks_sigmas, dtype=np.float64)

    def _evaluate_task(
        self, task: str, results: list[dict[str, Any]], img_ids: list[Any]
    ) -> dict[str, float]:
        key = _RESULT_FIELD[task]
        dts = [
            {
                "image_id": r["image_id"],
                "category_id": r["category_id"],
                key: r[key],
                "score": r["score"],
            }
            for r in results
            if key in r
        ]
        if not dts:
            logger.warning(
                "COCOEvaluator: no %s predictions; AP is 0 where there is ground truth", task
            )
        ev = COCOeval(self.coco_gt, self._load_results(dts), task)
        ev.params.imgIds = list(img_ids)  # only the processed images count
        if task == "keypoints":
            sigmas = self._sigmas(dts)
            if sigmas is not None:
                ev.params.kpt_oks_sigmas = sigmas
        _quiet(ev.evaluate)
        _quiet(ev.accumulate)
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            ev.summarize()
        logger.info("COCO %s evaluation:\n%s", task, summary.getvalue().rstrip())
        metrics = {name: _pct(ev.stats[i]) for i, name in enumerate(_METRICS[task])}
        per_class = self._per_class_ap(ev)
        logger.info("Per-class %s AP:\n%s", task, _table(per_class))
        metrics.update({f"AP-{name}": ap for name, ap in per_class.items()})
        return metrics

    def _per_class_ap(self, ev: COCOeval) -> dict[str, float]:
        """AP (IoU 0.50:0.95, all areas, most detections) of each category, ×100."""
        precision = ev.eval["precision"]  # [T, R, K, A, M]
        out = {}
        for k, cat_id in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            name = self.coco_gt.cats[cat_id]["name"]
            out[name] = float(np.mean(p)) * 100.0 if p.size else float("nan")
        return out


def _table(values: dict[str, float], pairs_per_row: int = 3) -> str:
    """A plain-text table of ``name | AP`` pairs, ``pairs_per_row`` pairs per line."""
    if not values:
        return "(no classes)"
    cells = [(name, "nan" if math.isnan(v) else f"{v:.3f}") for name, v in values.items()]
    wn = max(len("category"), *(len(n) for n, _ in cells))
    wv = max(len("AP"), *(len(v) for _, v in cells))
    header = " | ".join(
        f"{'category':<{wn}} | {'AP':>{wv}}" for _ in range(min(pairs_per_row, len(cells)))
    )
    lines = [header, "-" * len(header)]
    for start in range(0, len(cells), pairs_per_row):
        row = cells[start : start + pairs_per_row]
        lines.append(" | ".join(f"{n:<{wn}} | {v:>{wv}}" for n, v in row))
    return "\n".join(lines)
