"""``detforge eval``: rebuild a model from a checkpoint alone and evaluate it on a dataset.

Every detforge checkpoint (of ``detforge train`` or ``detforge convert``, ``.pth`` or
``.safetensors``) holds a model spec: its builder or model config, class names, channel order,
pixel statistics and test resize. It is read with ``torch.load(weights_only=True)`` and a stored
config may only name detforge's own builders (see ``detforge.inference.load_model``): loading a
checkpoint never runs code from it.

COCO data is scored with COCO AP (``evaluate_coco``), VOC data with Pascal VOC AP
(``VOCEvaluator``: AP50 and the COCO-style mean over IoU 0.50:0.95).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from detforge.checkpoint.spec import ModelSpec
from detforge.cli.datasets import CLIError, DataSplit, add_eval_data_arguments, load_data
from detforge.data.loader import build_test_loader
from detforge.data.mapper import DatasetMapper
from detforge.engine.recipe import evaluate_coco, resolve_device
from detforge.evaluation.evaluator import inference_on_dataset
from detforge.evaluation.voc_eval import VOCEvaluator
from detforge.inference import has_mask_head, load_model, test_mapper, with_test_size

__all__ = [
    "add_parser",
    "build_eval_fn",
    "checkpoint_model",
    "format_metrics",
    "run",
]

logger = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], dict[str, dict[str, float]]]


def checkpoint_model(path: str, flag: str = "--weights") -> tuple[nn.Module, ModelSpec]:
    """:func:`detforge.inference.load_model`, its errors as one-line ``CLIError``s."""
    try:
        return load_model(path)
    except FileNotFoundError as e:
        raise CLIError(f"{flag} {path}: no such file") from e
    except ValueError as e:
        raise CLIError(f"{flag}: {e}".splitlines()[0]) from e


def build_eval_fn(
    data: DataSplit,
    mapper: DatasetMapper,
    *,
    masks: bool,
    output_dir: str | Path | None = None,
) -> EvalFn:
    """``evaluate(model) -> {"bbox": {"AP": ...}, ...}`` on ``data``: COCO AP or VOC AP.

    Args:
        data: the evaluation split.
        mapper: its test-time mapper.
        masks: also evaluate mask AP (COCO data only).
        output_dir: where COCO evaluation writes its predictions (``None``: nowhere).
    """
    if data.kind == "coco":
        tasks = ("bbox", "segm") if masks and data.has_segmentation else ("bbox",)

        def coco(model: nn.Module) -> dict[str, dict[str, float]]:
            return evaluate_coco(
                model,
                data.records,
                mapper,
                json_file=data.json_file,
                metadata=data.metadata,
                tasks=tasks,
                output_dir=output_dir,
            )

        return coco

    def voc(model: nn.Module) -> dict[str, dict[str, float]]:
        names = data.metadata.class_names
        evaluator = VOCEvaluator(data.records, names, use_07_metric=data.use_07_metric)
        return inference_on_dataset(model, build_test_loader(data.records, mapper), evaluator)

    return voc


def format_metrics(results: dict[str, dict[str, float]]) -> str:
    """A table with one row per task and one column per summary metric (per-class ones left out).

    Args:
        results: ``{task: {metric: value}}`` as evaluators return them.

    Returns:
        The table as text, one line per row.
    """
    rows = {t: {k: v for k, v in m.items() if "-" not in k} for t, m in results.items()}
    rows = {t: m for t, m in rows.items() if t != "timing" and m}
    lines = []
    for task, metrics in rows.items():
        keys = list(metrics)
        width = max(7, *(len(k) for k in keys))
        lines.append(f"{'task':<6} " + " ".join(f"{k:>{width}}" for k in keys))
        cells = ("nan" if math.isnan(v) else f"{v:.2f}" for v in metrics.values())
        lines.append(f"{task:<6} " + " ".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``detforge eval`` (see the module docstring), on one or several processes.

    With ``--num-processes N`` (or under ``torchrun``/``srun``) the images are sharded over the
    processes and the predictions gathered on rank 0, which computes and reports the metrics.
    """
    from detforge.cli.distributed import run_distributed

    main, output = run_distributed(
        _evaluate, args, num_processes=args.num_processes, what="evaluation"
    )
    if main:
        assert output is not None
        _report(args, *output)
    return 0


def _report(args: argparse.Namespace, results: dict[str, dict[str, float]], source: str) -> None:
    sys.stdout.write(f"{source}\n{format_metrics(results)}\n")
    if args.output is not None:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, allow_nan=True))
        logger.info("wrote %s", out)


def _evaluate(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], str]:
    """This process's part of the evaluation: ``(results on rank 0, data description)``."""
    model, spec = checkpoint_model(args.weights)
    spec = with_test_size(spec, args.min_size, args.max_size)
    data = load_data(args, voc_default="test", class_names=spec.class_names)
    try:
        model.to(resolve_device(args.device))
    except ValueError as e:
        raise CLIError(f"--device: {e}") from e
    evaluate = build_eval_fn(data, test_mapper(spec), masks=has_mask_head(model))
    return evaluate(model), f"{data.source}: {len(data.records)} images"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detforge eval``."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset (COCO AP or VOC AP)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint to evaluate")
    add_eval_data_arguments(p, voc_default="test")
    p.add_argument("--output", metavar="FILE", help="write the metrics as JSON to this file")
    p.add_argument("--min-size", type=int, help="test shortest edge (default: the checkpoint's)")
    p.add_argument("--max-size", type=int, help="test longest-edge cap (default: checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda (this process's GPU) or cuda:N")
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="shard the images over N processes on this machine (one per GPU with --device "
        "cuda); under torchrun/srun the process group is joined automatically",
    )
    p.set_defaults(func=run)
    return p
