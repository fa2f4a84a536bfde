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
import logging
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig
from torch import nn

from detforge.checkpoint.load import load_weights
from detforge.checkpoint.spec import ModelSpec
from detforge.cli.datasets import (
    DATA_KEYS,
    CLIError,
    DataSplit,
    add_data_arguments,
    load_train_data,
)
from detforge.cli.distributed import run_distributed
from detforge.cli.evaluate import build_eval_fn
from detforge.cli.run_setup import (
    command_line_layer,
    config_layer,
    config_model,
    load_config,
    parse_settings,
    saved_layer,
    split_items,
)
from detforge.data.augmentation import RandomFlip, ResizeShortestEdge
from detforge.data.mapper import DatasetMapper
from detforge.engine.checkpointer import Checkpointer, ResumeError, clear_run, run_files
from detforge.engine.hooks import TrainingStopped
from detforge.engine.recipe import seed_everything, train_detector
from detforge.engine.run_spec import DEFAULT_MODEL, RunSpec, resolve_run
from detforge.inference import has_mask_head, test_mapper
from detforge.utils.comm import get_world_size, is_main_process, synchronize

__all__ = ["add_parser", "parse_settings", "run"]

logger = logging.getLogger(__name__)


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
    spec: RunSpec, model_spec: ModelSpec, train: DataSplit, masks: bool, config_mapper: Any
) -> tuple[Any, DatasetMapper]:
    if config_mapper is not None:
        from detforge.config.lazy import instantiate

        built = instantiate(config_mapper)
        if not callable(built):
            raise CLIError(f"--config {spec.config_file}: dataloader.mapper built a non-callable")
        return built, test_mapper(model_spec)
    rle = any(
        isinstance(a.get("segmentation"), dict) for r in train.records for a in r["annotations"]
    )
    train_mapper = DatasetMapper(
        [
            ResizeShortestEdge(spec.train_min_sizes, max_size=spec.max_size, sample_style="choice"),
            RandomFlip(),
        ],
        is_train=True,
        image_format=model_spec.input_format or "BGR",
        use_masks=masks,
        mask_format="bitmask" if rle else "polygon",
    )
    return train_mapper, test_mapper(model_spec)


def _model_spec(
    spec: RunSpec, model: nn.Module, cfg: DictConfig | None, class_names: list[str]
) -> ModelSpec:
    """What the checkpoints say about the model (rebuilt by eval/predict from them alone)."""
    from torch import Tensor

    fmt: Literal["RGB", "BGR"] = "RGB" if getattr(model, "input_format", "BGR") == "RGB" else "BGR"
    stats = {}
    for name in ("pixel_mean", "pixel_std"):
        buffer = getattr(model, name, None)
        if isinstance(buffer, Tensor):
            stats[name] = tuple(float(v) for v in buffer.flatten())
    config = None
    if cfg is not None:
        from detforge.config.lazy import LazyConfig

        config = LazyConfig.to_plain(cfg.model)
    return ModelSpec(
        class_names=tuple(class_names),
        builder=spec.model,
        config=config,
        input_format=fmt,
        min_size=spec.test_size,
        max_size=spec.max_size,
        **stats,  # type: ignore[arg-type]
    )


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
    machine itself. Either way every process runs the same training, through DDP. SIGINT or
    SIGTERM stops it after the current iteration with a checkpoint (exit status 130 / 143).
    """
    main, code = run_distributed(
        _run,
        args,
        num_processes=args.num_processes,
        backend=args.dist_backend,
        timeout_s=args.dist_timeout,
        what="training",
    )
    return int(code or 0) if main else 0


def _resolve(args: argparse.Namespace) -> tuple[RunSpec, Path, DictConfig | None, Any]:
    """The run of this command line: ``(spec, output folder, loaded config, config mapper)``.

    Reads the config file and, with ``--resume``, the saved run; the namespace is not changed.
    """
    if args.config is not None and args.model is not None:
        raise CLIError("give --model or --config, not both")
    if args.resume and args.output is None:
        raise CLIError("--resume needs --output, the folder of the run to continue")
    setting_items, config_items = split_items(args.overrides, config=True)
    cli = command_line_layer(args, setting_items)
    cfg, from_config, mapper = None, None, None
    if args.config is not None:
        cfg = load_config(args.config, config_items)
        from_config, mapper = config_layer(cfg, args.config)
    output = args.output or (from_config or {}).get("settings", {}).get("output_dir") or "output"
    out = Path(output)
    saved = saved_layer(out) if args.resume else {}
    if cfg is None and args.model is None and saved.get("config_file"):
        # A config run: continue with the config saved in the run folder (data, not code).
        cfg = load_config(str(out / "config.yaml"), config_items)
        from_config, mapper = config_layer(cfg, saved["config_file"])
    if cfg is None and config_items:
        split_items(config_items, config=False)  # raises the right error for the first item
    if args.model is not None and saved.get("config_file"):
        saved = {**saved, "config_file": None}
    cli["settings"] = {**cli["settings"], "output_dir": str(out), "resume": bool(args.resume)}
    try:
        spec = resolve_run(from_config, saved, cli)
    except ValueError as e:
        raise CLIError(str(e)) from e
    if spec.model is not None:
        from detforge.modeling.zoo import MODELS, build_model

        if spec.model not in MODELS:  # checked before any data is read
            try:
                build_model(spec.model)
            except KeyError as e:
                raise CLIError(f"--model: {e.args[0]}") from e
    return spec, out, cfg, mapper


def _check_folder(out: Path, args: argparse.Namespace) -> None:
    """A new run never overwrites another: refuse a folder holding one, unless --overwrite."""
    if args.resume or not is_main_process():
        return
    found = run_files(out)
    if not found:
        return
    if not args.overwrite:
        raise CLIError(
            f"--output {out} holds a run ({', '.join(found[:4])}); continue it with --resume, "
            "start a new one with another --output, or replace it with --overwrite"
        )
    logger.warning("--overwrite: removing the previous run in %s", out)
    clear_run(out)


def _run(args: argparse.Namespace) -> int:
    """The training run of this process: resolve, load data, build the model, train."""
    spec, out, cfg, config_mapper = _resolve(args)
    _check_folder(out, args)
    synchronize()
    train, val = load_train_data(argparse.Namespace(**{k: spec.data.get(k) for k in DATA_KEYS}))
    names = list(train.metadata.class_names)
    seed_everything(spec.settings.seed)  # the same seed builds the same initial weights
    if cfg is not None:
        model = config_model(cfg, str(spec.config_file), len(names))
    else:
        model = _zoo_model(str(spec.model), len(names))
    masks = has_mask_head(model)
    if masks and not train.has_segmentation:
        raise CLIError(f"{spec.model or spec.config_file} predicts masks; the data has no masks")
    if spec.weights is not None:  # also on resume: a run killed before its first checkpoint
        _load_finetune_weights(model, spec.weights)
    model_spec = _model_spec(spec, model, cfg, names)
    train_mapper, eval_mapper = _mappers(spec, model_spec, train, masks, config_mapper)
    description = {
        **spec.to_dict(),
        "class_names": names,
        "masks": masks,
        "world_size": get_world_size(),
    }
    config_yaml = _write_config(out, description, cfg)
    evaluate = None
    if val is not None:
        evaluate = build_eval_fn(val, eval_mapper, masks=masks, output_dir=out / "eval")
    logger.info(
        "training %s on %d images, %d classes",
        spec.model or spec.config_file,
        len(train.records),
        len(names),
    )
    try:
        train_detector(
            model,
            train.records,
            train_mapper,
            spec.settings,
            evaluate=evaluate,
            metadata={"model_spec": model_spec.to_dict(), "class_names": names},
            config_yaml=config_yaml,
        )
    except ResumeError as e:  # a resume that cannot go on says why
        raise CLIError(str(e).splitlines()[0]) from e
    except TrainingStopped as e:
        if is_main_process():
            sys.stderr.write(f"detforge train: {e}\n")
        return 130 if e.signal_name == "SIGINT" else 143
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
        "--overwrite",
        action="store_true",
        help="replace the run in --output (without it, a folder holding a run is refused)",
    )
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
