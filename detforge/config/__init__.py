"""Configs that describe which objects to build: ``LazyCall``, ``instantiate``, ``LazyConfig``.

Only ``tools/`` and tests import this package; library constructors never see a config.
"""

from detforge.config.lazy import (
    L,
    LazyCall,
    LazyConfig,
    apply_overrides,
    instantiate,
    locate,
    to_py_literal,
)

__all__ = [
    "L",
    "LazyCall",
    "LazyConfig",
    "apply_overrides",
    "instantiate",
    "locate",
    "to_py_literal",
]
