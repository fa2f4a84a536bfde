"""detforge's own checkpoint format: atomic writes, and loading without unrestricted pickle.

A checkpoint is one ``torch.save`` file holding only tensors and primitive containers, so that
``torch.load(path, weights_only=True)`` reads it and no code can run on load::

    {
        "format": "detforge",
        "format_version": 1,
        "model": {name: Tensor},          # model.state_dict(), tensors moved to the CPU
        "config": str | None,             # the config as a YAML string
        "metadata": {...},                # class names, versions, conversion report, ...
        "extra": {...},                   # optimizer/scheduler state etc. (tensors, primitives)
    }

``metadata`` and ``extra`` may contain ``str``, ``int``, ``float``, ``bool``, ``None``,
tensors, and lists, tuples and dicts (with ``str`` or ``int`` keys) of those; anything else is
rejected when saving, with the path of the offending entry.

Writes are atomic: the data goes to a temporary file in the destination folder, is flushed and
``fsync``-ed, then ``os.replace``-d over the destination (and the folder is ``fsync``-ed where the
platform allows). A crash leaves either the old file or the new one, never a half-written file.

With a ``.safetensors`` suffix the same data are written with the optional ``safetensors``
package (not a dependency of detforge): tensors of ``model`` under their names, tensors of
``extra`` under ``"extra/<name>"``, and ``config``, ``metadata`` and the format tag as JSON
strings in the file's header metadata.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import yaml
from torch import Tensor, nn

import detforge
from detforge.checkpoint.pickle_safe import torch_load_safe

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointWriteError",
    "atomic_write",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "detforge"
FORMAT_VERSION = 1
_SAFETENSORS_EXTRA = "extra/"


def _check_plain(value: object, where: str, fn: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a tensor/primitive tree ``weights_only`` can load."""
    # Exact types: subclasses (numpy.float64, torch's TorchVersion str, enums) are pickled as
    # their own class, which weights_only loading refuses.
    if value is None or type(value) in (str, bool, int, float) or isinstance(value, Tensor):
        return
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", fn)
        return
    if isinstance(value, dict) and type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{fn}: `{where}` has a key of type {type(k).__name__} ({k!r})")
            _check_plain(v, f"{where}[{k!r}]", fn)
        return
    raise TypeError(
        f"{fn}: `{where}` is a {type(value).__name__}; only tensors, str, int, float, bool, None "
        "and lists/tuples/dicts of them can be saved"
    )


def _config_to_yaml(config: Mapping[str, Any] | str | None, fn: str) -> str | None:
    if config is None or isinstance(config, str):
        return config
    omegaconf = importlib.import_module("omegaconf")
    if isinstance(config, omegaconf.DictConfig):
        plain = omegaconf.OmegaConf.to_container(config, resolve=True)
    elif isinstance(config, Mapping):
        plain = dict(config)
    else:
        raise TypeError(
            f"{fn}: `config` must be a mapping or a YAML string, got {type(config).__name__}"
        )
    try:
        return yaml.safe_dump(plain, sort_keys=False)
    except yaml.YAMLError as e:
        raise TypeError(f"{fn}: `config` cannot be written as YAML: {e}") from e


def _file_mode(dest: str) -> int:
    """The existing file's permissions, else those a plain ``open`` would give (umask)."""
    try:
        return os.stat(dest).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Create or replace ``path`` atomically.

    Args:
        path: destination file; its folder must exist.
        write: called with the path of a temporary file in the same folder; must write the
            whole content there. If it raises, the temporary file is removed and ``path`` is
            left untouched.
    """
    dest = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"atomic_write: folder {folder} of {dest} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode(dest))  # mkstemp makes 0600 files
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # directory fsync is not possible everywhere
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | Mapping[str, Tensor],
    *,
    config: Mapping[str, Any] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a detforge checkpoint atomically (see the module docstring for the layout).

    Args:
        path: destination; ``.safetensors`` selects the safetensors writer (needs the optional
            ``safetensors`` package), any other suffix (``.pth`` by convention) ``torch.save``.
        model: the model (its ``state_dict()`` is saved) or a state dict ``{name: Tensor}``.
        config: the config as a mapping (dict or omegaconf ``DictConfig``), stored as YAML, or
            an already-written YAML string.
        metadata: class names, versions, provenance, ...: a tree of primitives and tensors.
            ``detforge_version`` and ``torch_version`` are added when absent.
        extra: other state (optimizer, scheduler, iteration): a tree of primitives and tensors.

    Raises:
        TypeError: when an entry cannot be stored; the message names its path.
        CheckpointWriteError: the file could not be written (no space, file too large,
            permissions): one line naming the file and the OS reason; an existing file at
            ``path`` is unchanged and no partial file remains.
    """
    fn = "save_checkpoint"
    state = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(state, Mapping):
        raise TypeError(f"{fn}: `model` must be an nn.Module or a state dict, got {type(model)}")
    tensors: dict[str, Tensor] = {}
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise TypeError(f"{fn}: `model` state entry {k!r} must map a str to a Tensor")
        tensors[k] = v.detach().cpu()
    meta = {"detforge_version": detforge.__version__, "torch_version": str(torch.__version__)}
    meta.update(dict(metadata or {}))
    extra_dict = dict(extra or {})
    _check_plain(meta, "metadata", fn)
    _check_plain(extra_dict, "extra", fn)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": tensors,
        "config": _config_to_yaml(config, fn),
        "metadata": meta,
        "extra": extra_dict,
    }
    try:
        if os.fspath(path).endswith(".safetensors"):
            _save_safetensors(path, payload)
        else:
            atomic_write(path, lambda tmp: _torch_save(payload, tmp))
    except (OSError, RuntimeError) as e:
        raise CheckpointWriteError(
            f"cannot write checkpoint {os.fspath(path)}: {_reason(e, path)}; the previous file "
            "there (if any) is unchanged and no partial file is left"
        ) from e


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file too large, permissions, ...)."""


def _torch_save(payload: dict[str, Any], tmp: str) -> None:
    # Through a Python file object, so that the OS error (ENOSPC, EFBIG, EACCES) comes back as
    # an OSError with its reason rather than a zip-writer message without one.
    with open(tmp, "wb") as f:
        torch.save(payload, f)


def _reason(error: BaseException, path: str | os.PathLike[str]) -> str:
    """The OS reason of a failed write, in words."""
    for e in (error, error.__cause__, error.__context__):
        if isinstance(e, OSError) and e.errno is not None:
            return f"{os.strerror(e.errno)} [{errno.errorcode.get(e.errno, e.errno)}]"
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        if free < 64 * 2**20:
            return f"{free / 2**20:.1f} MiB free on the disk of {folder}"
    return " ".join(str(error).split())[:200]


def _safetensors_module(fn: str) -> Any:
    try:
        return importlib.import_module("safetensors.torch")
    except ImportError as e:
        raise ImportError(
            f"{fn}: `.safetensors` files need the optional `safetensors` package "
            "(pip install safetensors); or use a `.pth` path"
        ) from e


def _save_safetensors(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    st = _safetensors_module("save_checkpoint")
    tensors = {k: v.contiguous().clone() for k, v in payload["model"].items()}
    extra_tensors = {k: v for k, v in payload["extra"].items() if isinstance(v, Tensor)}
    if len(extra_tensors) != len(payload["extra"]):
        raise TypeError("save_checkpoint: with `.safetensors`, `extra` may only hold tensors")
    for k, v in extra_tensors.items():
        tensors[_SAFETENSORS_EXTRA + k] = v.detach().cpu().contiguous().clone()
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(payload["config"]),
        "metadata": json.dumps(payload["metadata"]),
    }
    atomic_write(path, lambda tmp: st.save_file(tensors, tmp, metadata=header))


def _load_safetensors(path: str) -> dict[str, Any]:
    st = _safetensors_module("load_checkpoint")
    safe_open = importlib.import_module("safetensors").safe_open
    with safe_open(path, framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != FORMAT:
        raise ValueError(f"load_checkpoint: {path} is not a detforge checkpoint (no format tag)")
    tensors = st.load_file(path)
    n = len(_SAFETENSORS_EXTRA)
    return {
        "format": FORMAT,
        "format_version": int(header.get("format_version", FORMAT_VERSION)),
        "model": {k: v for k, v in tensors.items() if not k.startswith(_SAFETENSORS_EXTRA)},
        "config": json.loads(header.get("config", "null")),
        "metadata": json.loads(header.get("metadata", "{}")),
        "extra": {k[n:]: v for k, v in tensors.items() if k.startswith(_SAFETENSORS_EXTRA)},
    }


def _upgrade_legacy(data: object) -> object:
    """A training checkpoint of detforge <= 0.1's ``Checkpointer`` (``model``, ``metadata``,
    ``config``, ``trainer`` and hook state at the top level) in the current layout."""
    if not isinstance(data, dict) or "format" in data or not isinstance(data.get("model"), dict):
        return data
    if "trainer" not in data and "metadata" not in data:
        return data  # a bare state dict wrapped in {"model": ...} is not ours
    top = ("model", "metadata", "config")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **{k: data.get(k) for k in top},
        "extra": {k: v for k, v in data.items() if k not in top},
    }


def _validate(data: object, path: str) -> dict[str, Any]:
    fn = "load_checkpoint"
    data = _upgrade_legacy(data)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{fn}: {path} is not a detforge checkpoint (no 'format': 'detforge' entry); "
            "convert other formats with detforge.checkpoint.convert"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{fn}: {path}: field 'format_version' is {version!r}; this detforge reads "
            f"versions up to {FORMAT_VERSION}"
        )
    model = data.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{fn}: {path}: field 'model' must be a dict, got {type(model).__name__}")
    for k, v in model.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise ValueError(f"{fn}: {path}: field 'model' entry {k!r} is not a named tensor")
    for field in ("metadata", "extra"):
        if not isinstance(data.get(field, {}), dict):
            raise ValueError(f"{fn}: {path}: field {field!r} must be a dict")
    config = data.get("config")
    if config is not None and not isinstance(config, str | dict):
        raise ValueError(f"{fn}: {path}: field 'config' must be a YAML string or None")
    return data


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, never running unrestricted pickle.

    Args:
        path: a ``.pth`` (or any ``torch.save``) file, or a ``.safetensors`` file.

    Returns:
        dict: ``{"format", "format_version", "model": {name: Tensor} (CPU), "config": dict |
        None (parsed from the YAML), "metadata": dict, "extra": dict}``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        UnsafePickleError: when the file needs more than ``torch.load(weights_only=True)``
            allows (arbitrary classes or callables); nothing from it is executed.
        ValueError: when the file is readable but is not a valid detforge checkpoint; the
            message names the file and the field.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"load_checkpoint: no such file {source}")
    if source.endswith(".safetensors"):
        data = _load_safetensors(source)
    else:
        data = torch_load_safe(source, "load_checkpoint")
    data = dict(_validate(data, source))
    if isinstance(data.get("config"), str):
        try:
            data["config"] = yaml.safe_load(data["config"])
        except yaml.YAMLError as e:
            raise ValueError(f"load_checkpoint: {source}: field 'config' is not YAML: {e}") from e
    for field in ("metadata", "extra"):
        if data.get(field) is None:
            data[field] = {}
    return data
