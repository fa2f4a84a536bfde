"""Load weights into a model and say exactly what did and did not load.

:func:`load_weights` compares a state dict with the model before touching it and sorts every
name into *loaded*, *missing* (the model has it, the checkpoint not), *unexpected* (the reverse)
and *mismatched* (both have it, with different shapes: never loaded). ``FrozenBatchNorm2d``
layers accept checkpoints without running statistics (Caffe2-era affine-only norms), so their
absent ``running_mean``/``running_var`` are not reported missing.

:func:`adapt_num_classes` prepares a checkpoint trained on another set of classes for fine-tuning:
it drops the class-specific tensors whose shapes differ from the model's, so these layers keep the
model's own initialisation while the backbone, neck and class-agnostic head layers load. The
class-specific layers are those whose output size depends on ``K``:

* ``roi_heads.box_predictor.cls_score`` (``K + 1`` logits) and ``roi_heads.box_predictor.bbox_pred``
  (``4 K`` class-specific deltas; a class-agnostic one has 4 and always loads);
* ``roi_heads.mask_head.predictor`` (``K`` class-specific mask logits);
* RetinaNet's ``head.cls_score`` (``A K`` logits).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from detforge.layers.norms import FrozenBatchNorm2d

__all__ = ["CLASS_SPECIFIC_LAYERS", "LoadReport", "adapt_num_classes", "load_weights"]

logger = logging.getLogger(__name__)

#: Module paths (name suffixes) whose tensors have a size that depends on the number of classes.
CLASS_SPECIFIC_LAYERS: tuple[str, ...] = (
    "roi_heads.box_predictor.cls_score",
    "roi_heads.box_predictor.bbox_pred",
    "roi_heads.mask_head.predictor",
    "head.cls_score",
)

Shape = tuple[int, ...]


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        loaded: names copied into the model.
        missing: model names absent from the checkpoint (they keep the model's values).
        unexpected: checkpoint names the model does not have (ignored).
        mismatched: ``(name, checkpoint shape, model shape)`` of names present in both with
            different shapes (not loaded).
        reinitialized: class-specific names dropped by :func:`adapt_num_classes` (they keep the
            model's initialisation, and are not listed in ``missing``).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    reinitialized: list[tuple[str, Shape, Shape]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model tensor was loaded from the checkpoint and nothing was left."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """A readable table: counts, then one line per problem name."""
        lines = [
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected "
            f"{len(self.unexpected)}, shape-mismatched {len(self.mismatched)}, re-initialised "
            f"for a new number of classes {len(self.reinitialized)}"
        ]
        rows: list[tuple[str, str, str]] = []
        rows += [("missing", k, "") for k in self.missing]
        rows += [("unexpected", k, "") for k in self.unexpected]
        rows += [
            ("mismatched", k, f"ckpt {list(a)} vs model {list(b)}") for k, a, b in self.mismatched
        ]
        rows += [
            ("reinitialized", k, f"ckpt {list(a)} vs model {list(b)}")
            for k, a, b in self.reinitialized
        ]
        if rows:
            w0 = max(len(r[0]) for r in rows)
            w1 = max(len(r[1]) for r in rows)
            lines += [f"  {a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
        return "\n".join(lines)


def _optional_stats(model: nn.Module) -> set[str]:
    """Names of FrozenBN running statistics that may be absent from a checkpoint."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, FrozenBatchNorm2d):
            p = f"{prefix}." if prefix else ""
            names.update({p + "running_mean", p + "running_var"})
    return names


def _check_state_dict(state_dict: object, fn: str) -> Mapping[str, Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{fn}: `state_dict` must be a mapping, got {type(state_dict).__name__}")
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise TypeError(
                f"{fn}: `state_dict` entry {k!r} must map a str to a Tensor, "
                f"got {type(v).__name__} (convert foreign checkpoints with "
                "detforge.checkpoint.convert first)"
            )
    return state_dict


def adapt_num_classes(
    state_dict: Mapping[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], list[tuple[str, Shape, Shape]]]:
    """Drop class-specific tensors whose shape differs from the model's (for fine-tuning).

    Args:
        state_dict: checkpoint ``{name: Tensor}`` with detforge names.
        model: the model to be loaded; it decides the wanted shapes.

    Returns:
        ``(state_dict without the dropped names, [(name, checkpoint shape, model shape)])``.
        Only names under :data:`CLASS_SPECIFIC_LAYERS` are dropped; other mismatches stay and
        are reported by :func:`load_weights`.
    """
    fn = "adapt_num_classes"
    _check_state_dict(state_dict, fn)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: `model` must be an nn.Module, got {type(model).__name__}")
    wanted = model.state_dict()
    kept: dict[str, Tensor] = {}
    dropped: list[tuple[str, Shape, Shape]] = []
    for name, value in state_dict.items():
        layer = name.rsplit(".", 1)[0]
        specific = any(layer == s or layer.endswith("." + s) for s in CLASS_SPECIFIC_LAYERS)
        if specific and name in wanted and wanted[name].shape != value.shape:
            dropped.append((name, tuple(value.shape), tuple(wanted[name].shape)))
            continue
        kept[name] = value
    for name, old, new in dropped:
        logger.info("%s: %s %s -> %s: re-initialised", fn, name, list(old), list(new))
    return kept, dropped


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = False,
    adapt_classes: bool = False,
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` and report missing, unexpected and mismatched names.

    Args:
        model: the model to load into (in place).
        state_dict: ``{name: Tensor}`` with detforge names (tensors of any device and float
            dtype; they are copied into the model's).
        strict: raise instead of loading when anything is missing, unexpected or mismatched
            (re-initialised class layers do not count); the model is then left unchanged.
        adapt_classes: first apply :func:`adapt_num_classes`, so a checkpoint with another
            number of classes fine-tunes from its backbone and class-agnostic layers.

    Returns:
        LoadReport: also logged (``summary()``) at INFO level, or WARNING when not ``ok``.

    Raises:
        TypeError: when ``state_dict`` is not a mapping of names to tensors.
        ValueError: with ``strict=True``, listing the problems.
    """
    fn = "load_weights"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: `model` must be an nn.Module, got {type(model).__name__}")
    state = dict(_check_state_dict(state_dict, fn))
    report = LoadReport()
    if adapt_classes:
        state, report.reinitialized = adapt_num_classes(state, model)
    wanted = model.state_dict()
    not_missing = {k for k, _, _ in report.reinitialized}
    for name, value in list(state.items()):
        if name not in wanted:
            report.unexpected.append(name)
            del state[name]
        elif wanted[name].shape != value.shape:
            report.mismatched.append((name, tuple(value.shape), tuple(wanted[name].shape)))
            del state[name]
    optional = _optional_stats(model)
    not_missing |= {k for k, _, _ in report.mismatched}  # reported once, as mismatched
    report.missing = [
        k for k in wanted if k not in state and k not in not_missing and k not in optional
    ]
    report.missing += [
        k for k in wanted if k in optional and k not in state and _sibling(k) in state
    ]
    report.loaded = sorted(state)
    if strict and not report.ok:
        raise ValueError(
            f"{fn}: checkpoint does not match the model (strict=True):\n" + report.summary()
        )
    result = model.load_state_dict(state, strict=False)
    # torch's own account (it sees what FrozenBatchNorm2d filled in); agrees with the above.
    report.missing = [k for k in result.missing_keys if k not in not_missing]
    report.unexpected += list(result.unexpected_keys)
    log = logger.info if report.ok else logger.warning
    log("%s: %s", fn, report.summary())
    return report


def _sibling(stat: str) -> str:
    """``...running_mean`` -> ``...running_var`` and back."""
    if stat.endswith("running_mean"):
        return stat[: -len("running_mean")] + "running_var"
    return stat[: -len("running_var")] + "running_mean"
