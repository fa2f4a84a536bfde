"""Restricted unpickling of the ``.pkl`` weight files of the Detectron family.

Detectron2 model-zoo ``.pkl`` files (``{"model": {name: ndarray}, "__author__": ...}``), original
Detectron files (``{"blobs": {name: ndarray}, "cfg": ...}``) and the Caffe2 ImageNet backbones
(``R-50.pkl``: a flat ``{blob: ndarray}``) are plain pickles, usually protocol 2 written by
Python 2, read with ``encoding="latin1"``. Unpickling runs whatever callable the file names, so a
hostile file can execute code. :class:`RestrictedUnpickler` resolves only the few globals that
rebuild numpy arrays and plain containers:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype`` and ``numpy.core.multiarray.scalar`` (both spellings of the
  module: numpy 2 renamed ``numpy.core`` to ``numpy._core``);
* ``_codecs.encode``, with which Python 3 pickles ``bytes`` in protocol 2 (the raw array data);
* ``collections.OrderedDict`` (a state dict container).

Any other global raises :class:`UnsafePickleError` naming the file and the refused global, before
it is called. The error is both a ``pickle.UnpicklingError`` and a ``ValueError``.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import io
import os
import pickle
from typing import Any

__all__ = [
    "ALLOWED_GLOBALS",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_pickle",
    "torch_load_safe",
]

#: ``(module, name)`` pairs that :class:`RestrictedUnpickler` resolves.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside :data:`ALLOWED_GLOBALS` (or was not a pickle)."""


def _numpy_multiarray(name: str) -> Any:
    """``numpy._core.multiarray.<name>`` on numpy 2, ``numpy.core.multiarray.<name>`` on 1."""
    try:
        module = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        module = importlib.import_module("numpy.core.multiarray")
    return getattr(module, name)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves :data:`ALLOWED_GLOBALS`.

    Args:
        file: binary file object to read from.
        source: name of the file, used in error messages.
        encoding: how to decode Python 2 ``str`` objects (``"latin1"`` keeps array bytes).
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed global ``module.name``; raise :class:`UnsafePickleError` otherwise."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle global {module}.{name}: only numpy arrays "
                "and plain containers are allowed in weight files (detforge.checkpoint.pickle_safe)"
            )
        if module == "_codecs":
            return codecs.encode
        if module == "collections":
            return collections.OrderedDict
        if name == "ndarray" or name == "dtype":
            return getattr(importlib.import_module("numpy"), name)
        return _numpy_multiarray(name)


def load_pickle(path: str | os.PathLike[str], *, encoding: str = "latin1") -> Any:
    """Unpickle a weight file with :class:`RestrictedUnpickler`.

    Args:
        path: ``.pkl`` file.
        encoding: decoding of Python 2 strings; ``"latin1"`` for the Detectron family.

    Returns:
        The unpickled object: nested dicts, lists, strings, numbers and ``numpy.ndarray``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        UnsafePickleError: when the file refers to any other global, or is not a pickle.
    """
    source = os.fspath(path)
    with open(source, "rb") as f:
        try:
            return RestrictedUnpickler(f, source=source, encoding=encoding).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise UnsafePickleError(f"{source}: not a readable pickle ({e})") from e


def torch_load_safe(path: str, owner: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with errors that name the file.

    Args:
        path: a ``torch.save`` file.
        owner: the function name used in error messages.

    Raises:
        UnsafePickleError: the file needs unrestricted pickle (classes or callables beyond
            tensors and containers); nothing from it is executed.
        ValueError: the file is not a readable torch file (truncated, another format).
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"{owner}: {path} needs unrestricted pickle to load; refusing "
            f"(weights_only=True rejected it: {str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{owner}: {path} is not a readable torch file ({e})") from e
