"""How ``detforge train`` turns its command line into a :class:`~detforge.engine.run_spec.RunSpec`.

Each source of a run becomes one layer for :func:`~detforge.engine.run_spec.resolve_run`, with
no mutation of the argument namespace:

* :func:`command_line_layer`: flags and ``key=value`` items (``train.<field>=v`` counts as a
  setting item; other dotted items edit the config file and are applied when it is loaded);
* :func:`config_layer`: a config file's ``train`` and ``dataloader`` keys;
* :func:`saved_layer`: ``OUTPUT/config.yaml`` of the run to resume (data, never code).

Precedence, lowest first: defaults < config file < saved run (``--resume``) < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig
from torch import nn

from detforge.cli.datasets import DATA_KEYS, CLIError, data_arguments
from detforge.engine.recipe import TrainSettings
from detforge.engine.run_spec import SETTINGS_FIELDS, convert_setting

__all__ = [
    "CONFIG_DATA_KEYS",
    "FROM_FLAGS",
    "command_line_layer",
    "config_layer",
    "config_model",
    "load_config",
    "parse_settings",
    "saved_layer",
    "split_items",
]

FROM_FLAGS = {"output_dir": "--output", "resume": "--resume"}
#: ``dataloader`` keys of a config -> the ``detforge train`` arguments they stand for.
CONFIG_DATA_KEYS = {**{k: k for k in DATA_KEYS}, "min_size": "min_size", "max_size": "max_size"}


def _setting_items(items: list[str]) -> dict[str, Any]:
    """``key=value`` items as typed settings (CLIError naming the item on any problem)."""
    from detforge.config.lazy import to_py_literal

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"expected key=value, got {item!r}")
        if key in FROM_FLAGS:
            raise CLIError(f"{key} is set with {FROM_FLAGS[key]}, not as key=value")
        try:
            out[key] = convert_setting(key, to_py_literal(text), text)
        except ValueError as e:
            raise CLIError(str(e)) from e
    return out


def parse_settings(items: list[str], base: TrainSettings) -> TrainSettings:
    """Apply ``key=value`` overrides to ``base`` (a copy is returned).

    Values are Python literals (``0.01``, ``[0.7, 0.9]``, ``None``, ``true``) or bare strings,
    checked against the field's type and range.

    Raises:
        CLIError: an item without ``=``, an unknown key (with the closest field names), a value
            of the wrong type or out of range, or a key that a flag sets (``output_dir``,
            ``resume``).
    """
    try:
        return dataclasses.replace(base, **_setting_items(items))
    except ValueError as e:
        raise CLIError(str(e)) from e


def split_items(items: list[str], config: bool) -> tuple[list[str], list[str]]:
    """``(settings items, config items)``: ``key=v`` and ``train.key=v`` naming a setting are
    settings; every other item is a dotted config key (only allowed with a config)."""
    settings, rest = [], []
    for item in items:
        key = item.partition("=")[0].strip()
        field = key.removeprefix("train.")
        if key in SETTINGS_FIELDS or (key.startswith("train.") and field in SETTINGS_FIELDS):
            settings.append(item.strip().removeprefix("train."))
        else:
            rest.append(item)
    if rest and not config:
        key = rest[0].partition("=")[0].strip()
        if "." in key:
            raise CLIError(f"{key!r}: dotted config keys need --config FILE")
        _setting_items([rest[0]])  # raises the unknown-setting error with suggestions
    return settings, rest


def command_line_layer(args: argparse.Namespace, setting_items: list[str]) -> dict[str, Any]:
    """The run layer of the command line: only what the user gave."""
    settings = _setting_items(setting_items)
    return {
        "model": args.model,
        "config_file": args.config,
        "weights": None if args.weights is None else str(Path(args.weights).absolute()),
        "data": {k: v for k, v in data_arguments(args).items() if v is not None},
        "resize": {"train_min_sizes": args.min_size, "max_size": args.max_size},
        "settings": settings,
    }


def saved_layer(out: Path) -> dict[str, Any]:
    """The ``run`` description of ``out/config.yaml`` (``{}`` when there is none)."""
    path = out / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CLIError(f"{path}: not readable YAML ({e})".splitlines()[0]) from e
    run = data.get("run", data) if isinstance(data, dict) else {}
    if not isinstance(run, dict):
        return {}
    layer = {k: run.get(k) for k in ("model", "config_file", "weights", "resize")}
    layer["data"] = run.get("data") or run.get("dataset") or {}  # "dataset" before 0.2
    fields = run.get("settings") or {}
    layer["settings"] = {k: v for k, v in fields.items() if k not in FROM_FLAGS}
    if run.get("model_from_config") and not layer.get("config_file"):
        layer["config_file"] = run.get("config_file") or str(path)
    return layer


def load_config(path: str, items: list[str]) -> DictConfig:
    """Load ``path`` and apply the dotted overrides (CLIError on any problem).

    A ``.py`` config is code and runs; a ``.yaml`` config is data (allow-listed targets only).
    """
    from detforge.config.lazy import LazyConfig, apply_overrides

    if not Path(path).is_file():
        raise CLIError(f"--config {path}: no such file")
    try:
        cfg = LazyConfig.load(path)
        if "model" not in cfg:
            raise CLIError(f"--config {path} has no `model`")
        apply_overrides(cfg, items)
    except (ValueError, ModuleNotFoundError, SyntaxError) as e:
        raise CLIError(f"--config {path}: {e}".splitlines()[0]) from e
    return cfg


def config_layer(cfg: DictConfig, path: str) -> tuple[dict[str, Any], Any]:
    """``(run layer of cfg's `train` and `dataloader`, the dataloader's `mapper` or None)``."""
    from omegaconf import OmegaConf

    from detforge.config.lazy import instantiate

    layer: dict[str, Any] = {"config_file": path, "data": {}, "resize": {}, "settings": {}}
    if cfg.get("train") is not None:
        try:
            settings = instantiate(cfg.train)
        except (TypeError, ValueError) as e:
            raise CLIError(f"--config {path}: train: {e}".splitlines()[0]) from e
        if not isinstance(settings, TrainSettings):
            raise CLIError(
                f"--config {path}: `train` must build a TrainSettings, not "
                f"{type(settings).__name__}"
            )
        plain = dataclasses.asdict(settings)
        layer["settings"] = {k: v for k, v in plain.items() if k not in ("resume",)}
    loader = cfg.get("dataloader")
    if loader is None:
        return layer, None
    if not isinstance(loader, DictConfig):
        raise CLIError(f"--config {path}: `dataloader` must be a dict of data arguments")
    plain_loader = OmegaConf.to_container(loader, resolve=True)
    assert isinstance(plain_loader, dict)
    for raw_key, value in plain_loader.items():
        key = str(raw_key)
        if key == "mapper" or value is None:
            continue
        if key not in CONFIG_DATA_KEYS:
            close = difflib.get_close_matches(key, list(CONFIG_DATA_KEYS) + ["mapper"], n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise CLIError(f"--config {path}: unknown key dataloader.{key}{hint}")
        if key == "min_size":
            layer["resize"]["train_min_sizes"] = [value] if isinstance(value, int) else value
        elif key == "max_size":
            layer["resize"]["max_size"] = value
        else:
            layer["data"][key] = value
    return layer, loader.get("mapper")


def config_model(cfg: DictConfig, path: str, num_classes: int) -> nn.Module:
    """Build ``cfg.model`` with ``num_classes`` classes (the data's)."""
    from detforge.config.lazy import apply_overrides, instantiate

    try:
        apply_overrides(cfg, [f"model.num_classes={num_classes}"])
        model = instantiate(cfg.model)
    except (TypeError, ValueError) as e:
        raise CLIError(f"--config {path}: {e}".splitlines()[0]) from e
    if not isinstance(model, nn.Module):
        raise CLIError(f"--config {path}: `model` built a {type(model).__name__}, not a module")
    return model
