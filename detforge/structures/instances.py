"""``Instances``: the per-image set of objects that crosses the model/data boundary.

Ground-truth targets, proposals and detections are all ``Instances``; the variable name says
which (``targets``, ``proposals``, ``detections``), the fields carry no ``gt_``/``pred_`` prefix.
Fields are declared, so a typo fails loudly and static tools see them; research code puts extra
per-instance tensors in ``extras``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Instances", "MaskContainer"]


@runtime_checkable
class MaskContainer(Protocol):
    """What ``Instances.masks`` needs from a non-tensor mask type (e.g. ``PolygonMasks``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, item: Any) -> MaskContainer: ...

    def to(self, device: torch.device | str) -> MaskContainer:
        """Move to ``device``."""
        ...


_PER_INSTANCE = ("boxes", "labels", "scores", "masks", "keypoints")


@dataclass(eq=False)
class Instances:
    """Objects of one image.

    Attributes:
        image_size: ``(height, width)`` of the image the coordinates refer to.
        boxes (Tensor[N, 4]): xyxy, absolute pixels (see ``structures/boxes.py``).
        labels (Tensor[N] | None): int64 contiguous class indices in ``[0, K)``; ``None`` for
            class-agnostic sets such as RPN proposals.
        scores (Tensor[N] | None): confidence of each detection or proposal.
        masks (Tensor[N, H, W] | MaskContainer | None): instance masks, either a tensor (bool
            bitmasks, or float probabilities) or a container such as ``PolygonMasks``.
        keypoints (Tensor[N, P, 3] | None): ``(x, y, visibility)`` per keypoint, continuous
            coordinates; or ``(x, y, score)`` for predictions.
        extras: further per-instance tensors, each with N rows.
    """

    image_size: tuple[int, int]
    boxes: Tensor
    labels: Tensor | None = None
    scores: Tensor | None = None
    masks: Tensor | MaskContainer | None = None
    keypoints: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h, w = self.image_size
        self.image_size = (int(h), int(w))
        if not isinstance(self.boxes, Tensor) or self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            got = list(self.boxes.shape) if isinstance(self.boxes, Tensor) else type(self.boxes)
            raise ValueError(f"Instances: `boxes` must be a Tensor[N, 4], got {got}")
        n = self.boxes.shape[0]
        for name, value in self._fields():
            if value is not None and len(value) != n:
                raise ValueError(
                    f"Instances: `{name}` has {len(value)} entries but `boxes` has {n}; "
                    "every per-instance field must have one entry per box"
                )

    def _fields(self) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = [(k, getattr(self, k)) for k in _PER_INSTANCE]
        items += [(f"extras[{k!r}]", v) for k, v in self.extras.items()]
        return items

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, item: int | slice | Tensor | Sequence[int]) -> Instances:
        """Select instances by an index, a slice, a bool mask or an index tensor.

        An integer gives an ``Instances`` of length one (never a bare row), so the result is
        always an ``Instances``.
        """
        if isinstance(item, int):
            if not -len(self) <= item < len(self):
                raise IndexError(f"Instances: index {item} out of range for {len(self)} instances")
            item = slice(item, item + 1 if item != -1 else None)
        elif not isinstance(item, (slice, Tensor)):
            item = torch.as_tensor(item, dtype=torch.long, device=self.boxes.device)
        if isinstance(item, Tensor) and item.dtype == torch.bool and item.shape != (len(self),):
            raise IndexError(
                f"Instances: bool mask has shape {list(item.shape)}, expected [{len(self)}]"
            )

        def pick(v: Any) -> Any:
            return None if v is None else v[item]

        return Instances(
            image_size=self.image_size,
            boxes=self.boxes[item],
            labels=pick(self.labels),
            scores=pick(self.scores),
            masks=pick(self.masks),
            keypoints=pick(self.keypoints),
            extras={k: v[item] for k, v in self.extras.items()},
        )

    def to(self, device: torch.device | str) -> Instances:
        """A copy with every tensor field (and mask container) moved to ``device``."""

        def move(v: Any) -> Any:
            return None if v is None else v.to(device)

        return Instances(
            image_size=self.image_size,
            boxes=self.boxes.to(device),
            labels=move(self.labels),
            scores=move(self.scores),
            masks=move(self.masks),
            keypoints=move(self.keypoints),
            extras={k: v.to(device) for k, v in self.extras.items()},
        )

    @staticmethod
    def cat(items: Sequence[Instances]) -> Instances:
        """Concatenate instances of the same image.

        All items must have the same ``image_size`` and the same set of fields (a field set in
        one item and ``None`` in another is an error, not a silent drop).
        """
        if len(items) == 0:
            raise ValueError("Instances.cat: need at least one Instances")
        first = items[0]
        for i, it in enumerate(items[1:], start=1):
            if it.image_size != first.image_size:
                raise ValueError(
                    f"Instances.cat: item {i} has image_size {it.image_size}, "
                    f"item 0 has {first.image_size}"
                )
            if it.extras.keys() != first.extras.keys():
                raise ValueError(
                    f"Instances.cat: item {i} has extras {sorted(it.extras)}, "
                    f"item 0 has {sorted(first.extras)}"
                )
        out: dict[str, Any] = {}
        for f in fields(Instances):
            if f.name in ("image_size", "extras"):
                continue
            values = [getattr(it, f.name) for it in items]
            present = [v is not None for v in values]
            if any(present) and not all(present):
                missing = present.index(False)
                raise ValueError(f"Instances.cat: `{f.name}` is None in item {missing} only")
            out[f.name] = None if values[0] is None else _cat_values(values)
        extras = {k: torch.cat([it.extras[k] for it in items]) for k in first.extras}
        return Instances(image_size=first.image_size, extras=extras, **out)

    def __repr__(self) -> str:
        present = [k for k, v in self._fields() if v is not None]
        return f"Instances(num={len(self)}, image_size={self.image_size}, fields={present})"


def _cat_values(values: list[Any]) -> Any:
    if isinstance(values[0], Tensor):
        return torch.cat(values)
    cat = getattr(type(values[0]), "cat", None)
    if cat is None:
        raise TypeError(f"Instances.cat: cannot concatenate {type(values[0]).__name__}")
    return cat(values)
