"""``detforge eval``: rebuild a model from a checkpoint alone and evaluate it on a dataset.

A checkpoint names its model in ``metadata``: ``detforge train`` writes ``{"model": zoo name,
"class_names", "input_format", "min_size", "max_size"}`` (or ``"model": None`` with the resolved
LazyConfig in the checkpoint's ``config`` for ``--config`` runs), and ``detforge convert`` writes
``{"model_name", "num_classes"}``. Both the training checkpoints of ``Checkpointer`` and
``save_checkpoint`` files are read, always with ``torch.load(weights_only=True)``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from torch import nn

from detforge.checkpoint.load import load_weights
from detforge.cli.datasets import CLIError, DataSplit, add_eval_data_arguments, load_data
from detforge.data.augmentation import ResizeShortestEdge
from detforge.data.loader import build_test_loader
from detforge.data.mapper import DatasetMapper
from detforge.engine.checkpointer import Checkpointer
from detforge.engine.recipe import evaluate_coco, resolve_device
from detforge.evaluation.evaluator import inference_on_dataset
from detforge.evaluation.voc_eval import VOCEvaluator

__all__ = [
    "CheckpointInfo",
    "add_parser",
    "build_eval_fn",
    "format_metrics",
    "has_mask_head",
    "model_from_checkpoint",
    "run",
    "test_mapper",
]

logger = logging.getLogger(__name__)

#: Test-time resize when a checkpoint does not say (detectron2's defaults).
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 800, 1333

EvalFn = Callable[[nn.Module], dict[str, dict[str, float]]]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its model.

    Attributes:
        model: zoo name, or ``None`` when the model came from a config.
        class_names: the K class names in label order.
        input_format: channel order the model takes, ``"RGB"`` or ``"BGR"``.
        min_size: test-time shortest edge.
        max_size: test-time cap on the longest edge.
    """

    model: str | None
    class_names: tuple[str, ...]
    input_format: Literal["RGB", "BGR"]
    min_size: int
    max_size: int


def has_mask_head(model: nn.Module) -> bool:
    """Whether ``model`` predicts instance masks (an R-CNN with a mask head)."""
    return getattr(getattr(model, "roi_heads", None), "mask_head", None) is not None


def _read(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise CLIError(f"--weights {path}: no such file")
    try:
        return Checkpointer.load(path)
    except RuntimeError as e:
        raise CLIError(str(e).splitlines()[0]) from e


def _class_names(meta: dict[str, Any], path: str) -> tuple[str, ...]:
    names = meta.get("class_names")
    if names is None and isinstance(meta.get("num_classes"), int):
        names = [f"class_{i}" for i in range(meta["num_classes"])]
    if not names:
        raise CLIError(f"checkpoint {path} has no metadata 'class_names' (or 'num_classes')")
    return tuple(str(n) for n in names)


def _build(data: dict[str, Any], meta: dict[str, Any], k: int, path: str) -> nn.Module:
    from detforge.modeling.zoo import build_model

    name = meta.get("model") or meta.get("model_name")
    if name is not None:
        from detforge.checkpoint.convert import set_input_normalization

        kwargs = meta.get("model_kwargs") or {}
        try:
            model = build_model(str(name), num_classes=k, **kwargs)
            set_input_normalization(
                model, meta.get("input_format"), meta.get("pixel_mean"), meta.get("pixel_std")
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CLIError(f"checkpoint {path}: {e.args[0]}") from e
        return model
    config = data.get("config")
    if meta.get("model_from_config") and config is not None:
        from detforge.config.lazy import instantiate

        cfg = yaml.safe_load(config) if isinstance(config, str) else config
        return instantiate(cfg["model"])
    raise CLIError(
        f"checkpoint {path} has no metadata naming its model (metadata 'model'); checkpoints "
        "of `detforge train` and `detforge convert` have it"
    )


def model_from_checkpoint(path: str) -> tuple[nn.Module, CheckpointInfo]:
    """Build the checkpoint's model and load its weights (strictly).

    Args:
        path: a checkpoint of ``detforge train`` (``Checkpointer``) or of ``save_checkpoint``.

    Returns:
        ``(model in eval mode on the CPU, info)``.

    Raises:
        CLIError: missing file, unreadable checkpoint, metadata without a model, or weights
            that do not fit the model.
    """
    data = _read(path)
    meta = data.get("metadata") or {}
    names = _class_names(meta, path)
    model = _build(data, meta, len(names), path)
    try:
        load_weights(model, data["model"], strict=True)
    except (TypeError, ValueError) as e:
        raise CLIError(f"checkpoint {path} does not fit its model: {e}".splitlines()[0]) from e
    fmt = meta.get("input_format") or getattr(model, "input_format", "BGR")
    info = CheckpointInfo(
        model=meta.get("model") or meta.get("model_name"),
        class_names=names,
        input_format="RGB" if fmt == "RGB" else "BGR",
        min_size=int(meta.get("min_size") or DEFAULT_MIN_SIZE),
        max_size=int(meta.get("max_size") or DEFAULT_MAX_SIZE),
    )
    return model.eval(), info


def test_mapper(info: CheckpointInfo) -> DatasetMapper:
    """The evaluation mapper: shortest edge ``info.min_size`` (longest at most ``max_size``)."""
    resize = ResizeShortestEdge((info.min_size,), max_size=info.max_size, sample_style="choice")
    return DatasetMapper([resize], is_train=False, image_format=info.input_format)


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
    model, info = model_from_checkpoint(args.weights)
    if args.min_size is not None or args.max_size is not None:
        info = CheckpointInfo(
            info.model,
            info.class_names,
            info.input_format,
            args.min_size or info.min_size,
            args.max_size or info.max_size,
        )
    data = load_data(args, voc_default="test", class_names=info.class_names)
    try:
        model.to(resolve_device(args.device))
    except ValueError as e:
        raise CLIError(f"--device: {e}") from e
    evaluate = build_eval_fn(data, test_mapper(info), masks=has_mask_head(model))
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
