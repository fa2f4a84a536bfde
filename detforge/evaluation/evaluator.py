"""The evaluator protocol and the loop that runs a model over a test set.

An evaluator sees the model's inputs and outputs batch by batch (:meth:`DatasetEvaluator.process`)
and turns what it collected into metrics at the end (:meth:`DatasetEvaluator.evaluate`). In
distributed runs every process processes its share of the data; ``evaluate`` gathers everything
onto rank 0, which computes the metrics and writes files, while the other ranks return ``{}``.

Metrics are ``dict[str, dict[str, float]]``: a group (``"bbox"``, ``"segm"``, ``"keypoints"``,
``"box_proposals"``) maps metric names to numbers; AP-like numbers are percentages.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from detforge.data.errors import DataError
from detforge.structures.instances import Instances
from detforge.utils import comm

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset"]

logger = logging.getLogger(__name__)

Metrics = dict[str, dict[str, float]]


@runtime_checkable
class DatasetEvaluator(Protocol):
    """What :func:`inference_on_dataset` needs from an evaluator."""

    def reset(self) -> None:
        """Forget everything processed so far (called before a new evaluation run)."""
        ...

    def process(self, inputs: list[dict[str, Any]], outputs: list[Instances]) -> None:
        """Record one batch.

        Args:
            inputs: the B model inputs of the batch (``image_id``, ``height``, ``width``, ...;
                see ``detforge/data/__init__.py``).
            outputs: the B ``Instances`` the model returned, in original image coordinates.
        """
        ...

    def evaluate(self) -> Metrics:
        """Metrics over everything processed (rank 0); ``{}`` on the other ranks."""
        ...


class DatasetEvaluators:
    """Several evaluators run as one; their metric groups are merged.

    Args:
        evaluators: the evaluators; their metric groups must not share names.
    """

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        for i, ev in enumerate(evaluators):
            if not isinstance(ev, DatasetEvaluator):
                raise TypeError(
                    f"DatasetEvaluators: evaluator {i} ({type(ev).__name__}) lacks "
                    "reset/process/evaluate"
                )
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        """Reset every evaluator."""
        for ev in self.evaluators:
            ev.reset()

    def process(self, inputs: list[dict[str, Any]], outputs: list[Instances]) -> None:
        """Pass the batch to every evaluator."""
        for ev in self.evaluators:
            ev.process(inputs, outputs)

    def evaluate(self) -> Metrics:
        """Merged metrics of all evaluators (``{}`` on ranks other than 0).

        Raises:
            ValueError: two evaluators returned the same metric group.
        """
        results: Metrics = {}
        for ev in self.evaluators:
            for group, metrics in ev.evaluate().items():
                if group in results:
                    raise ValueError(
                        f"DatasetEvaluators.evaluate: metric group {group!r} is returned by "
                        f"more than one evaluator ({type(ev).__name__} is the second)"
                    )
                results[group] = metrics
        return results


def _model_call(model: Callable[..., Any], inputs: list[dict[str, Any]]) -> list[Instances]:
    """Run the detector on one batch of model inputs, asking for original-size outputs."""
    images: list[Tensor] = []
    sizes: list[tuple[int, int]] = []
    for i, x in enumerate(inputs):
        missing = [k for k in ("image", "height", "width") if k not in x]
        if missing:
            raise ValueError(f"inference_on_dataset: batch input {i} has no {missing} key(s)")
        images.append(x["image"])
        sizes.append((int(x["height"]), int(x["width"])))
    outputs = model(images, original_sizes=sizes)
    if not isinstance(outputs, list) or len(outputs) != len(inputs):
        got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
        raise ValueError(
            f"inference_on_dataset: the model must return a list of {len(inputs)} Instances "
            f"in eval mode, got {got}"
        )
    return outputs


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def inference_on_dataset(
    model: nn.Module | Callable[..., Any],
    data_loader: Iterable[list[dict[str, Any]]],
    evaluator: DatasetEvaluator | Sequence[DatasetEvaluator] | None,
    *,
    num_warmup: int = 5,
    log_period_s: float = 5.0,
) -> Metrics:
    """Run ``model`` over ``data_loader`` in eval mode without gradients and evaluate.

    Each batch (a list of model inputs with ``image``, ``height``, ``width``) is passed as
    ``model(images, original_sizes=[(height, width), ...])`` so predictions come back in
    original image coordinates, then handed to ``evaluator.process``. An ``nn.Module`` is put
    in eval mode for the run and returned to its previous mode afterwards.

    Timing: the first ``min(num_warmup, num_batches - 1)`` batches are warm-up and are left out
    of the per-image times (CUDA is synchronised around each timed call when it is in use).

    Args:
        model: the detector (or any callable with the same signature).
        data_loader: iterable of batches; ``len()`` is used for progress when it has one.
        evaluator: an evaluator, several (wrapped in :class:`DatasetEvaluators`), or ``None``
            to only run and time the model.
        num_warmup: warm-up batches excluded from the timing.
        log_period_s: seconds between progress log lines.

    Returns:
        The evaluator's metrics, plus a ``"timing"`` group on rank 0: ``num_images``,
        ``skipped_images`` (images that could not be read: logged, skipped, and so scored as
        images without detections; when no image at all can be read, a ``DataError``),
        ``total_s`` (the whole loop), ``s_per_image`` (whole loop per image, after warm-up)
        and ``compute_s_per_image`` (model calls only, after warm-up). Under
        ``torch.distributed``: images over all processes, the slowest process's loop, and
        per-image times per device averaged over the processes.
    """
    if isinstance(evaluator, Sequence):
        evaluator = DatasetEvaluators(evaluator)
    elif evaluator is None:
        evaluator = DatasetEvaluators([])
    if num_warmup < 0:
        raise ValueError(f"inference_on_dataset: `num_warmup` must be >= 0, got {num_warmup}")
    try:
        total: int | None = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    warmup = num_warmup if total is None else min(num_warmup, max(total - 1, 0))
    logger.info("Start inference on %s batches", "?" if total is None else total)
    evaluator.reset()
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            timing = _run_loop(model, data_loader, evaluator, warmup, total, log_period_s)
    finally:
        if isinstance(model, nn.Module) and was_training is not None:
            model.train(was_training)
    if comm.get_world_size() > 1:  # every process ran its shard: one timing for the job
        shards = comm.all_gather(timing)
        n = len(shards)
        timing = {
            "num_images": sum(t["num_images"] for t in shards),
            "skipped_images": sum(t["skipped_images"] for t in shards),
            "total_s": max(t["total_s"] for t in shards),
            "s_per_image": sum(t["s_per_image"] for t in shards) / n,
            "compute_s_per_image": sum(t["compute_s_per_image"] for t in shards) / n,
        }
    if timing["num_images"] == 0 and timing["skipped_images"] > 0:
        raise DataError(
            f"no image could be read ({int(timing['skipped_images'])} tried; see the warnings)",
            kind="unreadable_image",
        )
    results = evaluator.evaluate()
    if comm.is_main_process():
        results = {**results, "timing": timing}
    return results


def _run_loop(
    model: Callable[..., Any],
    data_loader: Iterable[list[dict[str, Any]]],
    evaluator: DatasetEvaluator,
    warmup: int,
    total: int | None,
    log_period_s: float,
) -> dict[str, float]:
    """The timed loop of :func:`inference_on_dataset`; returns its timing group."""
    start = last_log = timed_start = time.perf_counter()
    compute_all = compute_timed = 0.0
    num_images = timed_images = 0
    skipped: list[dict[str, str]] = []
    for idx, batch in enumerate(data_loader):
        inputs = [x for x in batch if "image" in x]  # unreadable images come as markers
        skipped += [e for x in batch if "image" not in x for e in x.get("skipped", ())]
        if not inputs:
            continue
        _sync()
        t0 = time.perf_counter()
        outputs = _model_call(model, inputs)
        _sync()
        dt = time.perf_counter() - t0
        evaluator.process(inputs, outputs)
        compute_all += dt
        num_images += len(inputs)
        if idx >= warmup:
            compute_timed += dt
            timed_images += len(inputs)
        now = time.perf_counter()
        if idx + 1 == warmup:
            timed_start = now  # the timed part starts with the next batch, data loading included
        if idx >= warmup and now - last_log >= log_period_s:
            last_log = now
            _log_progress(idx, total, (now - timed_start) / (idx + 1 - warmup))
    end = time.perf_counter()
    if skipped:
        logger.warning(
            "%d images could not be read and were skipped (scored as images without "
            "detections); first: %s: %s",
            len(skipped),
            skipped[0]["file_name"],
            skipped[0]["error"],
        )
    if timed_images == 0:  # fewer batches than the warm-up: time everything instead
        timed_start, timed_images, compute_timed = start, num_images, compute_all
    per_image = (end - timed_start) / timed_images if timed_images else 0.0
    compute_per_image = compute_timed / timed_images if timed_images else 0.0
    logger.info(
        "Total inference time: %s for %d images (%.6f s/image per device, on %d devices); "
        "pure compute time %.6f s/image",
        datetime.timedelta(seconds=int(end - start)),
        num_images,
        per_image,
        comm.get_world_size(),
        compute_per_image,
    )
    return {
        "num_images": float(num_images),
        "skipped_images": float(len(skipped)),
        "total_s": end - start,
        "s_per_image": per_image,
        "compute_s_per_image": compute_per_image,
    }


def _log_progress(idx: int, total: int | None, s_per_batch: float) -> None:
    if total is None:
        logger.info("Inference done %d batches. %.4f s/batch", idx + 1, s_per_batch)
        return
    eta = datetime.timedelta(seconds=int(s_per_batch * (total - idx - 1)))
    logger.info("Inference done %d/%d. %.4f s/batch. ETA=%s", idx + 1, total, s_per_batch, eta)
