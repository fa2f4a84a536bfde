"""Lazy configs: ``LazyCall`` records calls, ``instantiate`` makes them, ``LazyConfig`` loads/saves.

A config is a tree of ``_target_`` dicts in an omegaconf ``DictConfig``: ``L(f)(a=1)`` is
``{"_target_": f, "a": 1}``. Python config files run in a synthetic package
(``_detforge_config_<n>.<path parts>``) that lives only during one load: relative imports between
config files work, and each load re-executes every file it imports, so an attribute edit made by
one experiment never leaks into another. The YAML dump stores callables as import paths.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.abc
import importlib.machinery
import inspect
import itertools
import logging
import pydoc
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import Enum
from os import PathLike
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from detforge.config.targets import check_targets, resolve_target

__all__ = [
    "L",
    "LazyCall",
    "LazyConfig",
    "apply_overrides",
    "instantiate",
    "locate",
    "to_py_literal",
]

logger = logging.getLogger(__name__)
TARGET = "_target_"
_FLAGS = {"allow_objects": True}
_load_ids = itertools.count()
_WORDS: dict[str, Any] = {"true": True, "false": False, "null": None, "none": None}
_PLAIN = (str, int, float, bool, type(None), Enum)
_YAML = (str, int, float, bool, type(None))


def _name(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class LazyCall:
    """Record a call instead of making it: ``L(f)(a=1)`` is the config ``{_target_: f, a: 1}``.

    Args:
        target: the class or function to call at :func:`instantiate` time (an object, never a
            string name).
    """

    def __init__(self, target: Callable[..., Any]) -> None:
        if not callable(target):
            raise TypeError(f"LazyCall: `target` must be a class or function, got {target!r}")
        self.target = target

    def __call__(self, *args: Any, **kwargs: Any) -> DictConfig:
        """Return the lazy call as a ``DictConfig``; only keyword arguments are accepted."""
        if args:
            raise TypeError(f"LazyCall({_name(self.target)}): pass keyword arguments only")
        if TARGET in kwargs:
            raise TypeError(f"LazyCall({_name(self.target)}): `{TARGET}` is a reserved key")
        target: Any = self.target
        if dataclasses.is_dataclass(target) and isinstance(target, type):
            # omegaconf turns a dataclass type into a structured config: keep its import path
            # (which instantiate() resolves) and check now that the path leads back to it.
            target = f"{target.__module__}.{target.__qualname__}"
            if pydoc.locate(target) is not self.target:
                raise TypeError(f"LazyCall: dataclass {target} must be importable by that path")
        return DictConfig({TARGET: target} | kwargs, flags=_FLAGS)


L = LazyCall


def locate(path: str) -> Any:
    """Import ``"pkg.module.attr.attr"`` and return the object; raises ``ImportError``."""
    obj = pydoc.locate(path)
    if obj is None:
        raise ImportError(f"locate: cannot import {path!r}")
    return obj


def instantiate(cfg: Any) -> Any:
    """Build the objects a config describes, depth first.

    A mapping with a ``_target_`` (a callable, or an import path string as in a YAML dump) becomes
    ``target(**instantiated_other_keys)``; other mappings become ``dict``, ``ListConfig``/lists
    become ``list``, tuples stay tuples and any other value is returned as is. Interpolations
    (``${model.num_classes}``) are resolved. An error raised by a target gets a note naming the
    config key it was built for.

    Args:
        cfg: a ``DictConfig``/``ListConfig``, plain dict/list, or any value.

    Returns:
        The built object (or plain container of built objects).
    """
    return _build(cfg, "")


def _build(node: Any, path: str) -> Any:
    if isinstance(node, str | bytes) or not isinstance(node, Mapping | Sequence):
        return node
    if isinstance(node, Sequence):
        items = [_build(v, f"{path}[{i}]") for i, v in enumerate(node)]
        is_tuple = isinstance(node, tuple) or type(node).__name__ == "TupleConfig"
        return tuple(items) if is_tuple else items
    kwargs = {str(k): _build(node[k], f"{path}.{k}".lstrip(".")) for k in node if k != TARGET}
    if TARGET not in node:
        return kwargs
    target = node[TARGET]
    where = f"`{path or '<root>'}`"
    if isinstance(target, str):
        # An import path comes from data (a YAML dump, a checkpoint): only allowed callables.
        if target == _name(locate):
            resolve_target(kwargs.get("path"), f"instantiate: {where}.path")
            target = locate
        else:
            target = resolve_target(target, f"instantiate: {where}")
    if not callable(target):
        raise TypeError(f"instantiate: {where}: {TARGET} is not callable: {target!r}")
    try:
        return target(**kwargs)
    except Exception as e:
        notes = getattr(e, "__notes__", [])
        if hasattr(e, "add_note") and not any(n.startswith("instantiate:") for n in notes):
            e.add_note(f"instantiate: raised by {_name(target)} while building {where}")
        raise


class _ConfigFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Maps ``<prefix>.a.b`` to ``<anchor>/a/b.py`` (module) or ``<anchor>/a/b/`` (package)."""

    def __init__(self, prefix: str, anchor: Path) -> None:
        self.prefix, self.anchor = prefix, anchor

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.prefix and not fullname.startswith(self.prefix + "."):
            return None
        parts = [p.replace("%2E", ".").replace("%25", "%") for p in fullname.split(".")[1:]]
        where = self.anchor.joinpath(*parts)
        file = where.parent / f"{where.name}.py"
        if file.is_file():
            return importlib.machinery.ModuleSpec(fullname, self, origin=str(file))
        if where.is_dir():
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        raise ModuleNotFoundError(f"no config file {file} (nor folder {where})", name=fullname)

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        if spec is None or spec.origin is None:  # a folder: an empty package
            return
        file = Path(spec.origin)
        module.__file__ = str(file)
        try:
            exec(compile(file.read_text(encoding="utf-8"), str(file), "exec"), module.__dict__)
        except Exception as e:  # an error in a file it imports names both files
            msg = f"LazyConfig.load: config file {file} raised {type(e).__name__}: {e}"
            raise ValueError(msg) from e


def _is_helper(value: object) -> bool:
    """Imports and helpers at the top of a config file, which are not part of the config."""
    if isinstance(value, types.ModuleType | type | LazyCall) or inspect.isroutine(value):
        return True
    return type(value).__module__ in ("typing", "__future__", "typing_extensions")


def _load_python(file: Path) -> DictConfig:
    prefix = f"_detforge_config_{next(_load_ids)}"
    parts = [p.replace("%", "%25").replace(".", "%2E") for p in file.with_suffix("").parts[1:]]
    finder = _ConfigFinder(prefix, Path(file.anchor))
    sys.meta_path.insert(0, finder)
    try:
        namespace = vars(importlib.import_module(".".join([prefix, *parts])))
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
            del sys.modules[name]
    content: dict[str, Any] = {}
    for name, value in namespace.items():
        if name.startswith("_") or _is_helper(value):
            continue
        if not (OmegaConf.is_config(value) or isinstance(value, (*_PLAIN, dict, list, tuple))):
            raise ValueError(
                f"LazyConfig.load: {file}: top-level name {name!r} is a {type(value).__name__}"
                " object; a config holds lazy calls L(f)(...) and plain values, not built"
                " objects (prefix helpers with '_')"
            )
        content[name] = value
    return DictConfig(content, flags=_FLAGS)


class LazyConfig:
    """Load a config file (Python or a YAML dump) and save a config as YAML."""

    @staticmethod
    def load(path: str | PathLike[str]) -> DictConfig:
        """Execute a ``.py`` config in a fresh namespace, or read a ``.yaml`` dump.

        A ``.py`` config is code and runs: load only files you trust. A ``.yaml`` config is
        data: its ``_target_`` paths must pass :func:`detforge.config.targets.check_targets`
        (:class:`~detforge.config.targets.UnsafeConfigError` otherwise), and nothing is imported
        before they do.

        Args:
            path: the file. Public top-level names of a Python config holding config values
                (lazy calls, containers, scalars) become keys; imports and ``_names`` do not.

        Returns:
            The config, a ``DictConfig`` that may hold callables.
        """
        file = Path(path).resolve()
        if not file.is_file():
            raise ValueError(f"LazyConfig.load: no such config file: {file}")
        if file.suffix == ".py":
            return _load_python(file)
        if file.suffix not in (".yaml", ".yml"):
            raise ValueError(f"LazyConfig.load: {file}: expected a .py, .yaml or .yml file")
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"LazyConfig.load: {file}: top level must be a mapping")
        check_targets(data, str(file))  # a YAML config is data: it never names arbitrary code
        return DictConfig(data, flags=_FLAGS)

    @staticmethod
    def to_plain(cfg: Any) -> Any:
        """``cfg`` as plain YAML data: interpolations resolved, callables as import paths."""
        data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        return _to_plain(data, "")

    @staticmethod
    def save(cfg: DictConfig, path: str | PathLike[str]) -> None:
        """Write ``cfg`` as YAML with interpolations resolved and callables as import paths.

        A callable that is not a ``_target_`` (a class passed as an argument, say) is written as
        the lazy call ``{_target_: detforge.config.lazy.locate, path: <import path>}``, so that
        :func:`instantiate` gives back the same object.

        Args:
            cfg: the config to write.
            path: the ``.yaml`` file; parent folders are created.
        """
        data = OmegaConf.to_container(cfg, resolve=True)
        text = yaml.safe_dump(_to_plain(data, ""), sort_keys=False)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        logger.info("config saved to %s", out)


def _import_path(obj: object, key: str) -> str:
    path = _name(obj)
    try:
        same = locate(path) == obj
    except ImportError:
        same = False
    if not same:
        raise ValueError(
            f"LazyConfig.save: `{key}` holds {obj!r}, which cannot be imported back as {path!r};"
            " define it at the top level of an importable module (not in a config file)"
        )
    return path


def _to_plain(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return {
            k: _import_path(v, f"{key}.{k}".lstrip("."))
            if k == TARGET and callable(v)
            else _to_plain(v, f"{key}.{k}".lstrip("."))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_to_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, _YAML):
        if callable(value):
            return {TARGET: _name(locate), "path": _import_path(value, key)}
        raise ValueError(f"LazyConfig.save: `{key}` holds {value!r}, which YAML cannot store")
    return value


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _parse(text: str) -> tuple[Any, bool]:
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()], True
    try:
        return ast.literal_eval(stripped), True
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text, False


def to_py_literal(text: str) -> Any:
    """Parse a command-line value: a Python literal, ``true``/``false``/``null``, else the string.

    Args:
        text: e.g. ``"0.01"``, ``"[1, 2]"``, ``"'x'"``, ``"None"``, ``"out/run1"``.

    Returns:
        ``0.01``, ``[1, 2]``, ``"x"``, ``None``, ``"out/run1"``.
    """
    return _parse(text)[0]


def _params(node: object) -> set[str] | None:
    """Keyword names the ``_target_`` of ``node`` accepts; ``None`` means any."""
    if not isinstance(node, Mapping) or TARGET not in node:
        return set()
    target = node[TARGET]
    try:
        sig = inspect.signature(resolve_target(target) if isinstance(target, str) else target)
    except (ImportError, TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items() if p.kind in kinds}


def _all_keys(node: object, prefix: str) -> Iterator[str]:
    """Dotted keys of a plain container, plus the keywords accepted by each ``_target_``."""
    children: Iterator[tuple[Any, Any]] = iter(())
    if isinstance(node, dict):
        children = iter(node.items())
        yield from (f"{prefix}{p}" for p in sorted(_params(node) or ()))
    elif isinstance(node, list | tuple):
        children = enumerate(node)
    for k, child in children:
        yield f"{prefix}{k}"
        yield from _all_keys(child, f"{prefix}{k}.")


def _unknown(cfg: DictConfig, key: str) -> ValueError:
    keys = _all_keys(OmegaConf.to_container(cfg), "")
    same_depth = {k for k in keys if k.count(".") == key.count(".") and TARGET not in k}
    close = difflib.get_close_matches(key, same_depth, n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    hint = hint or f" (top-level keys: {', '.join(map(str, cfg.keys()))})"
    return ValueError(f"apply_overrides: unknown config key {key!r}{hint}")


def _parent(cfg: DictConfig, key: str) -> tuple[DictConfig | ListConfig, str]:
    node: Any = cfg
    *path, leaf = key.split(".")
    for part in path:
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node.keys():  # noqa: SIM118 (`in` skips ???)
            node = node[part]
        else:
            raise _unknown(cfg, key)
    if not isinstance(node, DictConfig | ListConfig):
        raise _unknown(cfg, key)
    return node, leaf


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply command-line overrides ``"dotted.key=value"`` to ``cfg`` in place.

    Values are parsed by :func:`to_py_literal`. A key must exist, or be a keyword argument that
    the ``_target_`` of its parent accepts; otherwise a ``ValueError`` suggests close keys. A
    key that holds a lazy call may be replaced by a plain value. ``_target_`` cannot be changed
    from the command line: swap components in a Python config.

    Args:
        cfg: the config, changed in place.
        overrides: e.g. ``["optimizer.lr=0.01", "model.num_classes=3", "train.output_dir='x'"]``.

    Returns:
        ``cfg``.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"apply_overrides: expected 'key=value', got {item!r}")
        if key.split(".")[-1] == TARGET:
            raise ValueError(f"apply_overrides: {key!r}: swap components in a config file")
        parent, leaf = _parent(cfg, key)
        value, parsed = _parse(text)
        if isinstance(parent, ListConfig):
            if not (leaf.isdigit() and int(leaf) < len(parent)):
                raise _unknown(cfg, key)
            parent[int(leaf)] = value
            continue
        if leaf not in parent.keys():  # noqa: SIM118 (`in` is False for a ??? value)
            accepted = _params(parent)
            if accepted is not None and leaf not in accepted:
                raise _unknown(cfg, key)
        elif not parsed and not OmegaConf.is_missing(parent, leaf) and _is_number(parent[leaf]):
            raise ValueError(f"apply_overrides: {key}={text!r}: expected a number")
        parent[leaf] = value
    return cfg
