"""Which callables a config that arrives as *data* may name: configs in files never run code.

A Python config file (``--config my_config.py``) is code by design, as in detectron2 and
MMDetection: it runs when loaded, so only load files you trust. Everything else that holds a
config is data: the YAML dump of a run (``config.yaml``), the ``config`` stored in a checkpoint,
any ``.yaml`` config. Data names its callables by import path (``_target_:
detforge.modeling.zoo.faster_rcnn``), and importing a module or calling an arbitrary callable
would run code, so an import path is only followed when it names

* a class or function defined in detforge's model, layer, op, structure, augmentation and
  mapper modules (:data:`ALLOWED_MODULES`), reached as ``<module>.<name>`` (one attribute, so
  ``detforge.modeling.zoo.os.system`` is refused), or ``detforge.engine.recipe.TrainSettings``;
* one of the torch building blocks of :data:`TORCH_CLASSES` (``torch.nn.ReLU``, ...).

Anything else is refused with :class:`UnsafeConfigError` before any import happens.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn

__all__ = [
    "ALLOWED_MODULES",
    "TORCH_CLASSES",
    "UnsafeConfigError",
    "check_targets",
    "resolve_target",
]

#: Packages and modules whose own classes and functions data configs may build.
ALLOWED_MODULES: tuple[str, ...] = (
    "detforge.modeling",
    "detforge.layers",
    "detforge.ops",
    "detforge.structures",
    "detforge.data.augmentation",
    "detforge.data.transforms",
    "detforge.data.transforms_crop",
    "detforge.data.transforms_geometric",
    "detforge.data.transforms_photometric",
    "detforge.data.mapper",
)
#: Single callables allowed outside :data:`ALLOWED_MODULES`.
_ALLOWED_NAMES = ("detforge.engine.recipe.TrainSettings",)
_LOCATE = "detforge.config.lazy.locate"

#: torch modules a data config may build.
TORCH_CLASSES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm2d,
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.Dropout,
    nn.GELU,
    nn.GroupNorm,
    nn.Identity,
    nn.LayerNorm,
    nn.Linear,
    nn.MaxPool2d,
    nn.ReLU,
    nn.Sequential,
    nn.Sigmoid,
    nn.SiLU,
    nn.SyncBatchNorm,
    nn.Upsample,
)


class UnsafeConfigError(ValueError):
    """A config read as data names a callable outside the allow-list."""


def _torch_names() -> dict[str, type]:
    names: dict[str, type] = {}
    for cls in TORCH_CLASSES:
        names[f"torch.nn.{cls.__name__}"] = cls
        names[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return names


def _inside(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def resolve_target(path: object, where: str = "") -> Callable[..., Any]:
    """The callable an import path names, if a data config may build it.

    Args:
        path: the ``_target_`` value (an import path string).
        where: what to name in the error (the file and key).

    Raises:
        UnsafeConfigError: the path is not a string naming an allowed class or function; no
            module outside detforge is imported to find out.
    """
    at = f"{where}: " if where else ""
    refused = UnsafeConfigError(
        f"{at}refusing _target_ {path!r}: a config read from a file or checkpoint may only build "
        "detforge models, layers, ops and augmentations, TrainSettings and basic torch.nn "
        "modules (a Python config given with --config may build anything: it is code)"
    )
    if not isinstance(path, str) or not all(p.isidentifier() for p in path.split(".")):
        raise refused
    torch_names = _torch_names()
    if path in torch_names:
        return torch_names[path]
    module_name, _, attr = path.rpartition(".")
    if path not in _ALLOWED_NAMES and not _inside(module_name, ALLOWED_MODULES):
        raise refused
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnsafeConfigError(f"{at}refusing _target_ {path!r}: no module {module_name}") from e
    obj = getattr(module, attr, None)
    defined_in = getattr(obj, "__module__", "") or ""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not defined_in.startswith(
        "detforge."
    ):
        raise refused
    return obj


def _targets(node: object, key: str) -> Iterator[tuple[str, object]]:
    if isinstance(node, Mapping):
        if "_target_" in node:
            target = node["_target_"]
            yield key or "<root>", target
            if target == _LOCATE:
                yield f"{key}.path".lstrip("."), node.get("path")
        for k, v in node.items():
            yield from _targets(v, f"{key}.{k}".lstrip("."))
    elif isinstance(node, Sequence) and not isinstance(node, str | bytes):
        for i, v in enumerate(node):
            yield from _targets(v, f"{key}[{i}]")


def check_targets(config: object, source: str) -> None:
    """Check every ``_target_`` of a config read as data, before anything is imported or built.

    ``detforge.config.lazy.locate`` is allowed when its ``path`` is.

    Args:
        config: the parsed config (dicts and lists, or a ``DictConfig``).
        source: the file it came from, named in the error.

    Raises:
        UnsafeConfigError: one line naming ``source``, the key and the refused target.
    """
    for key, target in _targets(config, ""):
        if target == _LOCATE:
            continue
        resolve_target(target, f"{source}: `{key}`")
