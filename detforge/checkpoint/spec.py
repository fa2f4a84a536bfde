"""``ModelSpec``: what a checkpoint says about its model, enough to rebuild it with no other input.

Every detforge checkpoint (trainer output, ``detforge convert``, published models) stores one in
``metadata["model_spec"]`` as plain data::

    {"builder": "mask_rcnn_r50_fpn",      # a name of detforge.modeling.zoo.MODELS, or None
     "config": None,                      # or the model's config tree (import-path targets)
     "model_kwargs": {...},               # architecture arguments of the builder
     "class_names": [...],                # K names, in label order
     "input_format": "BGR",               # channel order the weights expect
     "pixel_mean": [...], "pixel_std": [...],
     "min_size": 800, "max_size": 1333}   # the test-time resize

A model described by ``config`` is rebuilt with :func:`detforge.config.instantiate` after
:func:`detforge.config.targets.check_targets`: only detforge's own builders and basic torch
modules may be named, so reading a checkpoint never runs code. Checkpoints written before the
spec existed (``model``/``model_name``, ``num_classes``, ``model_from_config`` metadata keys)
are read too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

__all__ = ["DEFAULT_MAX_SIZE", "DEFAULT_MIN_SIZE", "ModelSpec"]

#: Test-time resize when a checkpoint does not say (detectron2's defaults).
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 800, 1333


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a checkpoint's model and feed it images.

    Attributes:
        class_names: the K class names in label order (K is the model's number of classes).
        builder: a zoo name (``detforge.modeling.zoo.MODELS``), or None for a config model.
        config: the model's config tree (``_target_`` import paths), when ``builder`` is None.
        model_kwargs: more keyword arguments of the builder (architecture options).
        input_format: channel order of the model's input, ``"RGB"`` or ``"BGR"``; None: the
            builder's default.
        pixel_mean: per-channel mean, in ``input_format`` order; None: the builder's default.
        pixel_std: per-channel std; None: the builder's default.
        min_size: test-time shortest edge.
        max_size: test-time cap on the longest edge.
    """

    class_names: tuple[str, ...]
    builder: str | None = None
    config: Mapping[str, Any] | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_format: Literal["RGB", "BGR"] | None = None
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    min_size: int = DEFAULT_MIN_SIZE
    max_size: int = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        fn = "ModelSpec"
        if not self.class_names:
            raise ValueError(f"{fn}: `class_names` is empty: a model needs at least one class")
        if (self.builder is None) == (self.config is None):
            raise ValueError(f"{fn}: give exactly one of `builder` and `config`")
        if self.input_format not in (None, "RGB", "BGR"):
            raise ValueError(f"{fn}: `input_format` must be RGB or BGR, got {self.input_format!r}")
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{fn}: `{name}` must be a positive int, got {value!r}")

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``metadata["model_spec"]`` (lists instead of tuples)."""
        out = dataclasses.asdict(self)
        out["class_names"] = list(self.class_names)
        out["config"] = None if self.config is None else _plain(self.config)
        out["model_kwargs"] = _plain(self.model_kwargs)
        for key in ("pixel_mean", "pixel_std"):
            out[key] = None if out[key] is None else [float(v) for v in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> ModelSpec:
        """Read :meth:`to_dict`'s output; a ``ValueError`` names ``source`` and the field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: model_spec has unknown fields {unknown}")
        try:
            kwargs = dict(data)
            kwargs["class_names"] = tuple(str(n) for n in data.get("class_names") or ())
            for key in ("pixel_mean", "pixel_std"):
                if kwargs.get(key) is not None:
                    kwargs[key] = tuple(float(v) for v in kwargs[key])
            kwargs["model_kwargs"] = dict(data.get("model_kwargs") or {})
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: model_spec: {e}") from e

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any], source: str) -> ModelSpec:
        """The spec of a loaded checkpoint (``load_checkpoint``'s dict), old layouts included.

        Raises:
            ValueError: the checkpoint does not say which model it holds (names ``source``).
        """
        meta = data.get("metadata") or {}
        if isinstance(meta.get("model_spec"), Mapping):
            return cls.from_dict(meta["model_spec"], source)
        names = meta.get("class_names")
        if names is None and isinstance(meta.get("num_classes"), int):
            names = [f"class_{i}" for i in range(meta["num_classes"])]
        if not names:
            raise ValueError(f"checkpoint {source} has no metadata 'class_names' (nor a spec)")
        builder = meta.get("model") or meta.get("model_name")
        config = None
        if builder is None:
            cfg = data.get("config")
            if not meta.get("model_from_config") or not isinstance(cfg, Mapping):
                raise ValueError(
                    f"checkpoint {source} has no metadata naming its model; checkpoints of "
                    "`detforge train` and `detforge convert` have it"
                )
            config = cfg.get("model")
        fmt = meta.get("input_format")
        legacy = {
            "class_names": names,
            "builder": builder,
            "config": config,
            "model_kwargs": meta.get("model_kwargs") or {},
            "input_format": fmt if fmt in ("RGB", "BGR") else None,
            "pixel_mean": meta.get("pixel_mean"),
            "pixel_std": meta.get("pixel_std"),
            "min_size": int(meta.get("min_size") or DEFAULT_MIN_SIZE),
            "max_size": int(meta.get("max_size") or DEFAULT_MAX_SIZE),
        }
        return cls.from_dict(legacy, source)

    def build(self, source: str = "the model spec") -> nn.Module:
        """Build the model (untrained weights), in eval mode.

        Raises:
            ValueError: an unknown builder, bad arguments, or (``UnsafeConfigError``) a config
                naming a callable outside the allow-list; ``source`` is named.
        """
        if self.builder is not None:
            from detforge.modeling.zoo import build_model

            normalization = {
                k: getattr(self, k)
                for k in ("input_format", "pixel_mean", "pixel_std")
                if getattr(self, k) is not None
            }
            try:
                model = build_model(
                    self.builder,
                    num_classes=self.num_classes,
                    **normalization,
                    **dict(self.model_kwargs),
                )
            except KeyError as e:
                raise ValueError(f"{source}: {e.args[0]}") from e
            except TypeError as e:
                raise ValueError(f"{source}: builder {self.builder}: {e}") from e
            return model.eval()
        from detforge.config.lazy import instantiate
        from detforge.config.targets import check_targets

        assert self.config is not None
        check_targets(self.config, source)
        tree = dict(self.config)
        tree["num_classes"] = self.num_classes
        model = instantiate(tree)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{source}: the model config built a {type(model).__name__}")
        return model.eval()


def _plain(value: Any) -> Any:
    """Containers as dicts and lists (omegaconf and tuples included), leaves unchanged."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
