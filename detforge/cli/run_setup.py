"""How ``detforge train`` assembles a run: settings from ``key=value`` items, a saved run to
resume, and the ``model`` / ``train`` / ``dataloader`` keys of a config file.

Precedence, lowest first: ``TrainSettings`` defaults, the config file, the saved run (with
``--resume``), then the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig
from torch import nn

from detforge.cli.datasets import DATA_KEYS, CLIError
from detforge.engine.recipe import TrainSettings

__all__ = [
    "CONFIG_DATA_KEYS",
    "FROM_FLAGS",
    "SETTINGS_FIELDS",
    "config_data",
    "config_model",
    "config_settings",
    "load_config",
    "parse_settings",
    "restore",
    "saved_run",
    "split_items",
]

SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(TrainSettings)}
_HINTS = typing.get_type_hints(TrainSettings)
FROM_FLAGS = {"output_dir": "--output", "resume": "--resume"}


def _convert(key: str, value: Any, hint: Any, text: str) -> Any:
    """``value`` as the type ``hint`` of setting ``key`` (``text``: what the user typed)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = CLIError(f"{key}={text}: expected {getattr(hint, '__name__', hint)}")
    if origin is Literal:
        if value not in args:
            raise CLIError(f"{key}={text}: must be one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = next(a for a in args if a is not type(None))
        return _convert(key, value, inner, text)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_convert(key, v, args[0], text) for v in items)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    return value if isinstance(value, str) else text


def _unknown_setting(key: str) -> CLIError:
    close = difflib.get_close_matches(key, list(SETTINGS_FIELDS), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return CLIError(
        f"unknown setting {key!r}{hint} (TrainSettings fields: {', '.join(SETTINGS_FIELDS)})"
    )


def parse_settings(items: list[str], base: TrainSettings) -> TrainSettings:
    """Apply ``key=value`` overrides to ``base`` (a copy is returned).

    Values are Python literals (``0.01``, ``[0.7, 0.9]``, ``None``, ``true``) or bare strings,
    checked against the field's type.

    Raises:
        CLIError: an item without ``=``, an unknown key (with the closest field names), a value
            of the wrong type, or a key that a flag sets (``output_dir``, ``resume``).
    """
    from detforge.config.lazy import to_py_literal

    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"expected key=value, got {item!r}")
        if key in FROM_FLAGS:
            raise CLIError(f"{key} is set with {FROM_FLAGS[key]}, not as key=value")
        if key not in SETTINGS_FIELDS:
            raise _unknown_setting(key)
        changes[key] = _convert(key, to_py_literal(text), _HINTS[key], text)
    return dataclasses.replace(base, **changes)


def saved_run(out: Path) -> dict[str, Any]:
    """The ``run`` description of ``out/config.yaml`` (``{}`` when there is none)."""
    path = out / "config.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    run = data.get("run", data) if isinstance(data, dict) else {}
    return run if isinstance(run, dict) else {}


def restore(args: argparse.Namespace, saved: dict[str, Any], base: TrainSettings) -> TrainSettings:
    """Fill the flags the user left out from a saved run; the saved settings over ``base``."""
    if args.coco_json is None and args.voc is None:
        for k, v in (saved.get("dataset") or {}).items():
            if getattr(args, k, None) is None:
                setattr(args, k, v)
    resize = saved.get("resize") or {}
    args.min_size = args.min_size or resize.get("train_min_sizes")
    args.max_size = args.max_size or resize.get("max_size")
    if args.model is None and args.config is None:
        args.model = saved.get("model")
    fields = saved.get("settings") or {}
    known = {k: v for k, v in fields.items() if k in SETTINGS_FIELDS and k not in FROM_FLAGS}
    return parse_settings([f"{k}={v!r}" for k, v in known.items()], base)


def split_items(items: list[str], config: bool) -> tuple[list[str], list[str]]:
    """``(settings items, config items)``: config items are those not naming a setting."""
    settings = [i for i in items if i.partition("=")[0].strip() in SETTINGS_FIELDS]
    rest = [i for i in items if i not in settings]
    if rest and not config:
        key = rest[0].partition("=")[0].strip()
        if "." in key:
            raise CLIError(f"{key!r}: dotted config keys need --config FILE")
        raise _unknown_setting(key)
    return settings, rest


#: ``dataloader`` keys of a config -> the ``detforge train`` arguments they stand for.
CONFIG_DATA_KEYS = {**{k: k for k in DATA_KEYS}, "min_size": "min_size", "max_size": "max_size"}


def load_config(path: str, items: list[str]) -> DictConfig:
    """Load ``path`` and apply the dotted overrides (CLIError on any problem)."""
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


def config_data(args: argparse.Namespace, cfg: DictConfig, path: str) -> Any:
    """Fill the data flags the user left out from ``cfg.dataloader``; returns its ``mapper``."""
    from omegaconf import OmegaConf

    loader = cfg.get("dataloader")
    if loader is None:
        return None
    if not isinstance(loader, DictConfig):
        raise CLIError(f"--config {path}: `dataloader` must be a dict of data arguments")
    plain = OmegaConf.to_container(loader, resolve=True)
    assert isinstance(plain, dict)
    mapper = loader.get("mapper")
    for raw_key, value in plain.items():
        key = str(raw_key)
        if key == "mapper":
            continue
        if key not in CONFIG_DATA_KEYS:
            close = difflib.get_close_matches(key, list(CONFIG_DATA_KEYS) + ["mapper"], n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise CLIError(f"--config {path}: unknown key dataloader.{key}{hint}")
        if key == "min_size" and isinstance(value, int):
            value = [value]
        if getattr(args, CONFIG_DATA_KEYS[key], None) is None:
            setattr(args, CONFIG_DATA_KEYS[key], value)
    return mapper


def config_settings(cfg: DictConfig, path: str) -> TrainSettings | None:
    """``cfg.train`` built (a ``TrainSettings``), or None when the config has none."""
    from detforge.config.lazy import instantiate

    if cfg.get("train") is None:
        return None
    try:
        settings = instantiate(cfg.train)
    except (TypeError, ValueError) as e:
        raise CLIError(f"--config {path}: train: {e}".splitlines()[0]) from e
    if not isinstance(settings, TrainSettings):
        raise CLIError(
            f"--config {path}: `train` must build a TrainSettings, got {type(settings).__name__}"
        )
    return settings


def config_model(cfg: DictConfig, path: str, num_classes: int) -> nn.Module:
    """Build ``cfg.model`` with ``num_classes`` classes (the data's)."""
    from detforge.config.lazy import apply_overrides, instantiate

    try:
        apply_overrides(cfg, [f"model.num_classes={num_classes}"])
    except ValueError as e:
        raise CLIError(f"--config {path}: {e}") from e
    model = instantiate(cfg.model)
    if not isinstance(model, nn.Module):
        raise CLIError(f"--config {path}: `model` built a {type(model).__name__}, not a module")
    return model
