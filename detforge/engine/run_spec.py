"""``RunSpec``: one frozen description of a training run, resolved once from its sources.

A run is a model (a zoo name or a config file), its data (the data arguments of ``detforge
train``, kept as given), the train-time resize, an optional fine-tuning source and the
:class:`~detforge.engine.recipe.TrainSettings`. :func:`resolve_run` merges partial descriptions
in one documented order, lowest precedence first::

    defaults < config file (`train`, `dataloader`) < saved run (--resume) < command line

Each layer is a plain dict with any of the keys ``model``, ``config_file``, ``weights``,
``data`` (dict), ``resize`` (``{"train_min_sizes": [...], "max_size": N}``) and ``settings``
(dict of TrainSettings fields, typed or as the YAML of ``config.yaml`` gives them); a missing
key or a ``None`` value means "not given". ``model`` and ``config_file`` are one choice: the
highest layer naming either decides. The result is what ``config.yaml`` stores under ``run``
(:meth:`RunSpec.to_dict`) and what a resumed run reads back.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from detforge.engine.recipe import TrainSettings

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MIN_SIZES",
    "DEFAULT_MODEL",
    "SETTINGS_FIELDS",
    "RunSpec",
    "convert_setting",
    "resolve_run",
]

DEFAULT_MODEL = "faster_rcnn_r18_fpn_tiny"
DEFAULT_MIN_SIZES = (640, 672, 704, 736, 768, 800)  # detectron2's multi-scale training
DEFAULT_MAX_SIZE = 1333
SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(TrainSettings)}
_HINTS = typing.get_type_hints(TrainSettings)


@dataclass(frozen=True)
class RunSpec:
    """A resolved training run.

    Attributes:
        model: zoo name (``detforge.modeling.zoo.MODELS``), or None for a config model.
        config_file: the config file describing the model, or None for a zoo model.
        weights: checkpoint to fine-tune from (kept across resume), or None.
        data: the data arguments (``coco_json``, ``voc``, ``val_fraction``, ...), as given.
        train_min_sizes: shortest edges drawn per training image; the largest is the test size.
        max_size: cap on the longest edge.
        settings: solver, schedule and run settings.
    """

    model: str | None = DEFAULT_MODEL
    config_file: str | None = None
    weights: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    train_min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    max_size: int = DEFAULT_MAX_SIZE
    settings: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.config_file is None):
            raise ValueError("RunSpec: give exactly one of a zoo model and a config file")
        sizes = self.train_min_sizes
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
            raise ValueError(f"min_size: expected positive ints, got {list(sizes)}")
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int):
            raise ValueError(f"max_size: expected a positive int, got {self.max_size!r}")
        if self.max_size <= 0:
            raise ValueError(f"max_size: expected a positive int, got {self.max_size!r}")

    @property
    def test_size(self) -> int:
        """The test-time shortest edge: the largest training size."""
        return max(self.train_min_sizes)

    def to_dict(self) -> dict[str, Any]:
        """The plain (YAML) form, a valid :func:`resolve_run` layer."""
        settings = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self.settings).items()
        }
        return {
            "model": self.model,
            "config_file": self.config_file,
            "weights": self.weights,
            "data": dict(self.data),
            "resize": {"train_min_sizes": list(self.train_min_sizes), "max_size": self.max_size},
            "settings": settings,
        }


def _unknown_setting(key: str) -> ValueError:
    close = difflib.get_close_matches(key, list(SETTINGS_FIELDS), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ValueError(
        f"unknown setting {key!r}{hint} (TrainSettings fields: {', '.join(SETTINGS_FIELDS)})"
    )


def convert_setting(key: str, value: Any, text: str | None = None) -> Any:
    """``value`` as the type of the TrainSettings field ``key``.

    Args:
        key: the field name.
        value: a parsed value (a literal from the command line, or YAML data).
        text: what the user typed, for the error message.

    Raises:
        ValueError: an unknown field (with the closest names) or a value of the wrong type.
    """
    if key not in SETTINGS_FIELDS:
        raise _unknown_setting(key)
    return _convert(key, value, _HINTS[key], repr(value) if text is None else text)


def _convert(key: str, value: Any, hint: Any, text: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ValueError(f"{key}={text}: expected {getattr(hint, '__name__', hint)}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{key}={text}: must be one of {', '.join(map(str, args))}")
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


def resolve_run(*layers: Mapping[str, Any] | None) -> RunSpec:
    """Merge run descriptions, lowest precedence first, into one checked :class:`RunSpec`.

    A pure function: it reads no file and changes none of its arguments.

    Raises:
        ValueError: an unknown or ill-typed setting, or a value out of range (one line naming
            the field).
    """
    model: dict[str, Any] = {"model": DEFAULT_MODEL, "config_file": None}
    weights: str | None = None
    data: dict[str, Any] = {}
    resize: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        if layer.get("model") is not None or layer.get("config_file") is not None:
            model = {"model": layer.get("model"), "config_file": layer.get("config_file")}
        if layer.get("weights") is not None:
            weights = str(layer["weights"])
        data.update({k: v for k, v in (layer.get("data") or {}).items() if v is not None})
        resize.update({k: v for k, v in (layer.get("resize") or {}).items() if v is not None})
        for k, v in (layer.get("settings") or {}).items():
            settings[k] = convert_setting(k, v)
    if model["model"] is not None and model["config_file"] is not None:
        raise ValueError("give a zoo model or a config file, not both")
    sizes = resize.get("train_min_sizes", DEFAULT_MIN_SIZES)
    sizes = sizes if isinstance(sizes, list | tuple) else [sizes]
    return RunSpec(
        model=model["model"],
        config_file=model["config_file"],
        weights=weights,
        data=data,
        train_min_sizes=tuple(sizes),
        max_size=resize.get("max_size", DEFAULT_MAX_SIZE),
        settings=TrainSettings(**settings),
    )
