"""Input checks shared by the public edges: ops, structures, model and data constructors.

Every public op validates its arguments before touching the data and raises a ``ValueError`` or
``TypeError`` that names the argument, the function and what is wrong: a wrong shape must never
turn into a crash deep inside a kernel or, worse, a silently wrong answer.

Checks happen once, at the edge (a detector's ``forward``, a public op, a constructor); internal
stages trust what the edge checked. Checks of tensor *values* (ranges, finiteness) of components
that run inside a training step read the values only where that is free, on the CPU (see
:func:`values_on_host`): on an accelerator, reading a value back to decide whether to raise would
synchronise the host with the device on every step.
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
    "check_float",
    "check_int",
    "values_on_host",
]

#: Device types whose tensor values the checks read (see :func:`values_on_host`). Tests set it
#: to ``()`` to see a training step on the CPU as it runs on an accelerator.
HOST_DEVICE_TYPES: tuple[str, ...] = ("cpu",)


def values_on_host(*tensors: Tensor) -> bool:
    """Whether value checks may read ``tensors``: True when all of them are on the CPU.

    Reading a CPU tensor's values costs no host-device synchronisation; reading a CUDA tensor's
    values to decide whether to raise would stall the host on every training step. Components
    that run inside the step but may also be used standalone (``Matcher``, ``BoxCoder``, the
    detector's target checks) check values only when this is True.
    """
    return all(t.device.type in HOST_DEVICE_TYPES for t in tensors)


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
    range given by ``low``/``high`` (inclusive unless ``low_open``/``high_open``).

    The message names ``fn`` and ``name`` and says what is needed: ``"a positive int"``,
    ``"a non-negative int"``, ``"an int >= 2"``, ``"a number > 0 and <= 1"``, ...
    """
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(
        value, bool
    )
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = v == v and abs(v) != float("inf")
        ok = ok and (low is None or (v > low if low_open else v >= low))
        ok = ok and (high is None or (v < high if high_open else v <= high))
    if not ok:
        need = _describe(integer, low, high, low_open, high_open)
        raise ValueError(f"{fn}: `{name}` must be {need}, got {value!r}")


def _describe(
    integer: bool, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
    if integer and high is None and low is not None:
        bound = low + 1 if low_open else low  # the smallest int allowed
        if bound == 1:
            return "a positive int"
        if bound == 0:
            return "a non-negative int"
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    rng = " and ".join(x for x in (lo, hi) if x)
    return ("an int" if integer else "a finite number") + (" " + rng if rng else "")


def check_int(
    value: object, name: str, fn: str, *, low: int | None = None, high: int | None = None
) -> int:
    """:func:`check_number` for an int in ``[low, high]``; return it as an ``int``."""
    check_number(value, name, fn, integer=True, low=low, high=high)
    return int(value)  # type: ignore[call-overload]


def check_float(
    value: object,
    name: str,
    fn: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """:func:`check_number` for a finite real; return it as a ``float``."""
    check_number(value, name, fn, low=low, high=high, low_open=low_open, high_open=high_open)
    return float(value)  # type: ignore[arg-type]
