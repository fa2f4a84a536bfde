"""Building blocks of the weight converters: rename rules, the report, class and anchor reorders.

A converter is a *rule* ``name -> Mapped | Dropped | None`` applied to every source name by
:func:`apply_rule`: ``Mapped`` gives the detforge name and an optional tensor transform,
``Dropped`` a reason to leave the tensor out, ``None`` means "unknown". Everything lands in a
:class:`ConversionReport`. The reorders implement the class-order and anchor-order conventions
described in :mod:`detforge.checkpoint.convert`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ConversionReport",
    "Dropped",
    "Mapped",
    "Rule",
    "Transform",
    "anchors_ratio_major_to_size_major",
    "apply_rule",
    "as_tensor",
    "bg_first_to_last",
    "drop_bg_box",
    "drop_bg_mask",
    "set_input",
]

Transform = Callable[[Tensor], Tensor]


class Mapped(NamedTuple):
    """A source name's detforge name, and the tensor transform to apply (if any)."""

    name: str
    transform: Transform | None = None


class Dropped(NamedTuple):
    """A source name deliberately not converted, with the reason."""

    reason: str


Rule = Callable[[str], Mapped | Dropped | None]


@dataclass
class ConversionReport:
    """What a converter did.

    Attributes:
        source: which format (``"detectron2"``, ``"detectron"``, ...).
        converted: detforge name -> source name.
        dropped: source name -> reason it was not converted.
        unknown: source names no rule recognised (not converted).
        notes: convention differences that apply to these weights.
        input_format: ``"BGR"`` or ``"RGB"`` when known.
        pixel_mean, pixel_std: per-channel normalisation (0-255 units) when known.
        model_kwargs: keyword arguments of a zoo builder that give the architecture these
            weights were trained with (e.g. ``{"stride_in_1x1": False}`` for torchvision).
    """

    source: str
    converted: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input_format: str | None = None
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """Counts, notes, and every dropped and unknown name."""
        lines = [
            f"{self.source}: converted {len(self.converted)}, dropped {len(self.dropped)}, "
            f"unknown {len(self.unknown)}; input {self.input_format} mean {self.pixel_mean} "
            f"std {self.pixel_std}"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  dropped {k}: {r}" for k, r in sorted(self.dropped.items())]
        lines += [f"  unknown {k}" for k in self.unknown]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-container copy, storable in checkpoint metadata."""
        return asdict(self)


def as_tensor(value: object) -> Tensor | None:
    """A CPU tensor from a tensor or a numeric ndarray (sharing memory); None for anything else."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray) and value.dtype != object:
        if not value.dtype.isnative:  # e.g. big-endian '>f4'
            value = value.astype(value.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def apply_rule(
    weights: Mapping[str, Any], rule: Rule, report: ConversionReport, fn: str
) -> dict[str, Tensor]:
    """Apply ``rule`` to every source name.

    Args:
        weights: ``{source name: Tensor | ndarray}``; a leading ``module.`` (DDP) is ignored.
        rule: maps a source name to ``Mapped``, ``Dropped`` or None (unknown).
        report: filled in place (``converted``, ``dropped``, ``unknown``).
        fn: converter name for error messages.

    Returns:
        dict[str, Tensor]: the converted tensors (transformed where the rule says so).

    Raises:
        ValueError: when two source names map to the same detforge name.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"{fn}: `weights` must be a mapping, got {type(weights).__name__}")
    out: dict[str, Tensor] = {}
    for src, value in weights.items():
        if not isinstance(src, str):
            raise TypeError(f"{fn}: `weights` key {src!r} is not a str")
        name = src[len("module.") :] if src.startswith("module.") else src
        tensor = as_tensor(value)
        result = rule(name)
        if result is None:
            report.unknown.append(src)
        elif isinstance(result, Dropped):
            report.dropped[src] = result.reason
        elif tensor is None:
            report.dropped[src] = f"not an array ({type(value).__name__})"
        else:
            if result.name in out:
                raise ValueError(
                    f"{fn}: `weights` names {report.converted[result.name]!r} and {src!r} both "
                    f"map to {result.name!r}"
                )
            out[result.name] = result.transform(tensor) if result.transform else tensor
            report.converted[result.name] = src
    return out


def set_input(report: ConversionReport, spec: tuple[str, tuple, tuple]) -> None:
    """Record ``(input_format, pixel_mean, pixel_std)`` in ``report``."""
    report.input_format, report.pixel_mean, report.pixel_std = spec


def bg_first_to_last(t: Tensor) -> Tensor:
    """``[K + 1, ...]`` with the background in row 0 -> background in the last row."""
    return torch.cat([t[1:], t[:1]])


def drop_bg_box(t: Tensor) -> Tensor:
    """``[4 (K + 1), ...]`` -> ``[4 K, ...]``: drop the background's 4 rows (row 0-3)."""
    return t[4:]


def drop_bg_mask(t: Tensor) -> Tensor:
    """``[K + 1, ...]`` -> ``[K, ...]``; class-agnostic ``[1, ...]`` masks are kept."""
    return t[1:] if t.shape[0] > 1 else t


def anchors_ratio_major_to_size_major(t: Tensor, per_anchor: int, num_ratios: int) -> Tensor:
    """Reorder the anchors of a per-anchor output layer from ratio-major to size-major.

    Args:
        t (Tensor[A * per_anchor, ...]): weight or bias whose row ``a * per_anchor + j`` belongs
            to anchor ``a = r * S + s`` (ratio ``r`` of ``R``, size ``s`` of ``S``).
        per_anchor: rows per anchor (``K`` logits or 4 deltas).
        num_ratios: ``R``.

    Returns:
        Tensor[A * per_anchor, ...]: the same rows with anchor ``s * R + r`` in place ``a``.
    """
    num_anchors = t.shape[0] // per_anchor
    if num_anchors * per_anchor != t.shape[0] or num_anchors % num_ratios:
        raise ValueError(
            f"convert_torchvision: {t.shape[0]} channels are not A * {per_anchor} with A a "
            f"multiple of num_aspect_ratios={num_ratios}"
        )
    sizes = num_anchors // num_ratios
    rest = t.shape[1:]
    return t.reshape(num_ratios, sizes, per_anchor, *rest).transpose(0, 1).reshape(t.shape)
