"""``detforge train``: train a zoo model (or a LazyConfig's model) on COCO or VOC data.

The number of classes comes from the data. Every :class:`~detforge.engine.recipe.TrainSettings`
field can be set with a positional ``key=value`` (``max_iter=2000 base_lr=0.01``); unknown keys
are rejected with the closest names.

With ``--config FILE`` a config file describes the whole run (see ``configs/README.md``):

* ``model``: the model (its ``num_classes`` is set from the data);
* ``train`` (optional): ``L(TrainSettings)(...)``, the solver, schedule and run settings;
* ``dataloader`` (optional): the data flags under their own names (``coco_json``,
  ``image_root``, ``val_coco_json``, ``val_image_root``, ``voc``, ``voc_split``,
  ``voc_val_split``, ``class_names``, ``val_fraction``, ``split_seed``, ``min_size``,
  ``max_size``) and optionally ``mapper``, a ``DatasetMapper`` call that replaces the default
  training mapper (resize + flip).

Flags given on the command line win over the config; ``key=value`` items naming a
``TrainSettings`` field set the settings, and every other item is a dotted config key
(``model.fc_dim=512``, ``train.max_iter=100``, ``dataloader.max_size=1000``) applied with
``apply_overrides`` before anything is built. ``--output`` defaults to ``train.output_dir``.

Several processes: ``--num-processes N`` starts ``N`` on this machine; under ``torchrun`` or
``srun`` the process group is joined from their environment. Training then goes through DDP with
``batch_size`` as the batch over all processes; only rank 0 writes files.

The run writes ``OUTPUT/config.yaml`` (the resolved settings, model, dataset flags and class
names; for ``--config`` runs the resolved LazyConfig with this under its ``run`` key) and
checkpoints whose metadata let ``detforge eval``/``predict`` rebuild the model from the
checkpoint alone. ``--resume`` continues the run in ``--output`` from its last checkpoint; the
saved settings, model and dataset flags are the defaults, so ``detforge train --output DIR
--resume max_iter=4000`` extends a finished run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig
from torch import nn

from detforge.checkpoint.load import load_weights
from detforge.cli.datasets import (
    CLIError,
    DataSplit,
    add_data_arguments,
    data_arguments,
    load_train_data,
)
from detforge.cli.distributed import run_distributed
from detforge.cli.evaluate import CheckpointInfo, build_eval_fn, has_mask_head, test_mapper
from detforge.cli.run_setup import (
    FROM_FLAGS,
    SETTINGS_FIELDS,
    config_data,
    config_model,
    config_settings,
    load_config,
    parse_settings,
    restore,
    saved_run,
    split_items,
)
from detforge.data.augmentation import RandomFlip, ResizeShortestEdge
from detforge.data.mapper import DatasetMapper
from detforge.engine.checkpointer import Checkpointer
from detforge.engine.recipe import TrainSettings, train_detector
from detforge.utils.comm import get_world_size, is_main_process, synchronize

__all__ = ["add_parser", "parse_settings", "run"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "faster_rcnn_r18_fpn_tiny"
DEFAULT_MIN_SIZES = (640, 672, 704, 736, 768, 800)  # detectron2's multi-scale training
DEFAULT_MAX_SIZE = 1333


def _zoo_model(name: str, num_classes: int) -> nn.Module:
    from detforge.modeling.zoo import build_model

    try:
        return build_model(name, num_classes=num_classes)
    except KeyError as e:
        raise CLIError(f"--model: {e.args[0]}") from e


def _load_finetune_weights(model: nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise CLIError(f"--weights {path}: no such file")
    try:
        state = Checkpointer.load(path)["model"]
        report = load_weights(model, state, adapt_classes=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CLIError(f"--weights {path}: {e}".splitlines()[0]) from e
    logger.info("fine-tuning from %s: %s", path, report.summary())


def _mappers(
    args: argparse.Namespace,
    fmt: Literal["RGB", "BGR"],
    train: DataSplit,
    masks: bool,
    config_mapper: Any = None,
) -> tuple[Any, DatasetMapper]:
    sizes = tuple(int(s) for s in args.min_size)
    info = CheckpointInfo(None, (), fmt, max(sizes), int(args.max_size))
    if config_mapper is not None:
        from detforge.config.lazy import instantiate

        built = instantiate(config_mapper)
        if not callable(built):
            raise CLIError(f"--config {args.config}: dataloader.mapper built a non-callable")
        return built, test_mapper(info)
    rle = any(
        isinstance(a.get("segmentation"), dict) for r in train.records for a in r["annotations"]
    )
    train_mapper = DatasetMapper(
        [
            ResizeShortestEdge(sizes, max_size=int(args.max_size), sample_style="choice"),
            RandomFlip(),
        ],
        is_train=True,
        image_format=fmt,
        use_masks=masks,
        mask_format="bitmask" if rle else "polygon",
    )
    return train_mapper, test_mapper(info)


def _run_description(
    args: argparse.Namespace, settings: TrainSettings, train: DataSplit, masks: bool
) -> dict[str, Any]:
    plain = {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()
    }
    return {
        "model": None if args.config else args.model,
        "model_from_config": bool(args.config),
        "config_file": args.config,
        "weights": args.weights,
        "masks": masks,
        "class_names": list(train.metadata.class_names),
        "dataset": data_arguments(args),
        "resize": {
            "train_min_sizes": [int(s) for s in args.min_size],
            "max_size": int(args.max_size),
        },
        "settings": plain,
        "world_size": get_world_size(),
    }


def _write_config(out: Path, run: dict[str, Any], cfg: DictConfig | None) -> str:
    """Write ``out/config.yaml``; returns its text (stored in every checkpoint)."""
    from detforge.config.lazy import LazyConfig

    path = out / "config.yaml"
    if is_main_process():  # only rank 0 writes files; the others read what it wrote
        out.mkdir(parents=True, exist_ok=True)
        if cfg is None:
            path.write_text(yaml.safe_dump(run, sort_keys=False))
        else:
            cfg = cfg.copy()
            cfg["run"] = run
            LazyConfig.save(cfg, path)
    synchronize()
    return path.read_text()


def run(args: argparse.Namespace) -> int:
    """Run ``detforge train`` (see the module docstring), on one or several processes.

    Under ``torchrun`` or ``srun`` (their environment variables are found) this process joins
    the job's process group; with ``--num-processes N`` it starts ``N`` processes on this
    machine itself. Either way every process runs the same training, through DDP.
    """
    run_distributed(
        _run,
        args,
        num_processes=args.num_processes,
        backend=args.dist_backend,
        timeout_s=args.dist_timeout,
        what="training",
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    """The training run of this process."""
    if args.config is not None and args.model is not None:
        raise CLIError("give --model or --config, not both")
    if args.resume and args.output is None:
        raise CLIError("--resume needs --output, the folder of the run to continue")
    cfg: DictConfig | None = None
    if args.config is not None:
        setting_items, config_items = split_items(args.overrides, config=True)
        cfg = load_config(args.config, config_items)
    base = (config_settings(cfg, args.config) if cfg is not None else None) or TrainSettings()
    if args.output is None and cfg is not None:
        args.output = base.output_dir  # the config may name the output folder
    out = Path(args.output or "output")
    saved = saved_run(out) if args.resume else {}
    if cfg is None and args.resume and args.model is None and saved.get("model_from_config"):
        args.config = str(out / "config.yaml")  # a config run: continue with its saved config
        setting_items, config_items = split_items(args.overrides, config=True)
        cfg = load_config(args.config, config_items)
        base = config_settings(cfg, args.config) or base
    if cfg is None:
        setting_items, config_items = split_items(args.overrides, config=False)
    config_mapper = config_data(args, cfg, str(args.config)) if cfg is not None else None
    if args.resume:
        base = restore(args, saved, base)
    # `train.<field>=v` items were applied to the config; they also win over a resumed run.
    for item in config_items:
        key = item.partition("=")[0].strip()
        field = key.removeprefix("train.")
        if key.startswith("train.") and field in SETTINGS_FIELDS and field not in FROM_FLAGS:
            setting_items.append(item.strip().removeprefix("train."))
    args.model = args.model or (None if args.config else DEFAULT_MODEL)
    args.min_size = args.min_size or list(DEFAULT_MIN_SIZES)
    args.max_size = args.max_size or DEFAULT_MAX_SIZE
    settings = parse_settings(setting_items, base)
    settings = dataclasses.replace(settings, output_dir=str(out), resume=bool(args.resume))
    train, val = load_train_data(args)
    k = len(train.metadata.class_names)
    if cfg is not None:
        assert args.config is not None
        model = config_model(cfg, args.config, k)
    else:
        model = _zoo_model(args.model, k)
    masks = has_mask_head(model)
    if masks and not train.has_segmentation:
        raise CLIError(f"{args.model or args.config} predicts masks; the data has no segmentation")
    if args.weights is not None:
        _load_finetune_weights(model, args.weights)
    fmt: Literal["RGB", "BGR"] = "RGB" if getattr(model, "input_format", "BGR") == "RGB" else "BGR"
    train_mapper, eval_mapper = _mappers(args, fmt, train, masks, config_mapper)
    description = _run_description(args, settings, train, masks)
    config_yaml = _write_config(out, description, cfg)
    metadata = {
        "model": description["model"],
        "model_from_config": description["model_from_config"],
        "class_names": description["class_names"],
        "input_format": fmt,
        "min_size": max(int(s) for s in args.min_size),
        "max_size": int(args.max_size),
    }
    evaluate = None
    if val is not None:
        evaluate = build_eval_fn(val, eval_mapper, masks=masks, output_dir=out / "eval")
    logger.info(
        "training %s on %d images, %d classes",
        metadata["model"] or args.config,
        len(train.records),
        k,
    )
    train_detector(
        model,
        train.records,
        train_mapper,
        settings,
        evaluate=evaluate,
        metadata=metadata,
        config_yaml=config_yaml,
    )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detforge train``."""
    p = subparsers.add_parser(
        "train",
        help="train a detector on COCO or VOC data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(p)
    g = p.add_argument_group("model and run")
    g.add_argument("--model", help=f"zoo model name (default {DEFAULT_MODEL})")
    g.add_argument(
        "--config",
        metavar="FILE",
        help="LazyConfig file: `model`, and optionally `train` and `dataloader` (see above)",
    )
    g.add_argument(
        "--output", help="run folder (default: the config's train.output_dir, else output)"
    )
    g.add_argument("--weights", metavar="CKPT", help="fine-tune from these weights")
    d = p.add_argument_group(
        "distributed (under torchrun or srun the process group is joined automatically)"
    )
    d.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="start N training processes on this machine (one per GPU; gloo on CPU)",
    )
    d.add_argument("--dist-backend", default="auto", help="process-group backend (auto: nccl/gloo)")
    d.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="seconds before a missing or dead process is an error instead of a hang",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --output")
    g.add_argument(
        "--min-size",
        type=int,
        nargs="+",
        metavar="N",
        help="training shortest edges, one drawn per image (default 640 ... 800); the largest "
        "is the test size",
    )
    g.add_argument("--max-size", type=int, help="cap on the longest edge (default 1333)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="TrainSettings fields, e.g. max_iter=2000 base_lr=0.01 batch_size=2",
    )
    p.set_defaults(func=run)
    return p
