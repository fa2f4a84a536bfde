"""Input checks shared by structures and ops.

Every public op validates its arguments before touching the data and raises a ``ValueError`` or
``TypeError`` that names the argument, the function and what is wrong: a wrong shape must never
turn into a crash deep inside a kernel or, worse, a silently wrong answer.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import Tensor

__all__ = [
    "as_tuple2",
    "check_number",
    "check_boxes",
    "check_floating",
    "check_same_device",
    "check_shape",
    "check_tensor",
]


def check_tensor(x: object, name: str, fn: str) -> Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor; return it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_shape(x: Tensor, name: str, fn: str, shape: Sequence[int | None]) -> None:
    """Check ``x.shape`` against ``shape``, where ``None`` accepts any size in that dimension."""
    ok = x.dim() == len(shape) and all(
        s is None or s == d for s, d in zip(shape, x.shape, strict=False)
    )
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{fn}: `{name}` must have shape {want}, got {list(x.shape)}")


def check_floating(x: Tensor, name: str, fn: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a floating-point dtype."""
    if not x.is_floating_point():
        raise TypeError(f"{fn}: `{name}` must be a floating-point tensor, got {x.dtype}")


def check_same_device(fn: str, **tensors: Tensor) -> None:
    """Raise ``ValueError`` when the named tensors do not all live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"`{n}` on {d}" for n, d in devices.items())
        raise ValueError(f"{fn}: all tensors must be on one device, got {listed}")


def check_boxes(boxes: object, name: str, fn: str, *, ordered: bool = True) -> Tensor:
    """Check a ``Tensor[N, 4]`` of floating xyxy boxes.

    Args:
        boxes: the object to check.
        name: argument name used in the error message.
        fn: function name used in the error message.
        ordered: also require ``x2 >= x1`` and ``y2 >= y1`` (degenerate zero-size boxes pass).
            NaN coordinates fail this check.

    Returns:
        The same tensor.
    """
    b = check_tensor(boxes, name, fn)
    check_shape(b, name, fn, (None, 4))
    check_floating(b, name, fn)
    if ordered and b.numel() > 0:
        bad = ~((b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1]))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{fn}: `{name}` must be xyxy boxes with x2 >= x1 and y2 >= y1; "
                f"box {i} is {b[i].tolist()} ({int(bad.sum())} bad boxes in all)"
            )
    return b


def as_tuple2(value: int | Sequence[int], name: str, fn: str) -> tuple[int, int]:
    """Turn ``7`` or ``(7, 7)`` into ``(7, 7)``; both entries must be positive integers."""
    bad = ValueError(f"{fn}: `{name}` must be an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            raise bad
        pair = (int(value[0]), int(value[1]))
    else:
        raise bad
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{fn}: `{name}` must be positive, got {value!r}")
    return pair


def check_number(
    value: object,
    name: str,
    fn: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number (an int when ``integer``) in the
    range given by ``low``/``high`` (inclusive unless ``low_open``/``high_open``)."""
    kind = "an int" if integer else "a number"
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(
        value, bool
    )
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = v == v and abs(v) != float("inf")
        ok = ok and (low is None or (v > low if low_open else v >= low))
        ok = ok and (high is None or (v < high if high_open else v <= high))
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        raise ValueError(f"{fn}: `{name}` must be {kind}{' ' + rng if rng else ''}, got {value!r}")
