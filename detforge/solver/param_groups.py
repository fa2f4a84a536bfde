"""Parameter groups: per-parameter learning rate and weight decay, as detection recipes want.

Norm layers' scale/shift and (optionally) biases usually get no weight decay, and biases may get
a larger learning rate (Detectron's ``BIAS_LR_FACTOR``). Parameters with the same settings are
merged into one group, so the optimizer stays cheap.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["NORM_TYPES", "param_groups"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
)


def param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float | None = 0.0,
    weight_decay_bias: float | None = None,
    bias_lr_factor: float = 1.0,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into optimizer groups.

    Args:
        model: the model; frozen parameters (``requires_grad=False``) are left out.
        base_lr: learning rate of ordinary parameters.
        weight_decay: weight decay of ordinary parameters.
        weight_decay_norm: weight decay of normalisation layers' parameters (None: as others).
        weight_decay_bias: weight decay of biases (None: as others).
        bias_lr_factor: biases train at ``base_lr * bias_lr_factor``.

    Returns:
        Groups ``{"params", "lr", "weight_decay"}`` for ``torch.optim`` optimizers; each group
        also records ``initial_lr`` (what the LR schedule multiplies).
    """
    if base_lr <= 0 or weight_decay < 0:
        raise ValueError(
            f"param_groups: need base_lr > 0 and weight_decay >= 0, got {base_lr}, {weight_decay}"
        )
    seen: set[int] = set()
    merged: dict[tuple[float, float], list[nn.Parameter]] = {}
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = base_lr, weight_decay
            if is_norm and weight_decay_norm is not None:
                wd = weight_decay_norm
            elif name == "bias":
                lr = base_lr * bias_lr_factor
                if weight_decay_bias is not None:
                    wd = weight_decay_bias
            merged.setdefault((lr, wd), []).append(p)
    return [
        {"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd}
        for (lr, wd), params in merged.items()
    ]
