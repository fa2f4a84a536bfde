"""Time detforge's ``nms`` / ``batched_nms`` against torchvision's compiled CPU kernels.

detforge never imports torchvision, so this script runs in a separate environment that has it,
and imports detforge from this checkout::

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch torchvision
    /tmp/tvenv/bin/python benchmarks/compare_nms_torchvision.py [--threads 2,1] [--filter nms]

Both sides run on identical seeded workloads (``workloads.py``), interleaved call by call (the
order alternates every repeat), so that load from other processes hits both alike; the table
gives the median of each side in milliseconds, their ratio, and whether the kept indices are
identical. Check that the machine is idle (``uptime``) before trusting the numbers; the load
average is printed before and after each thread count. ``--detforge DIR`` imports detforge from
another checkout (e.g. ``git worktree add /tmp/old HEAD~1``) to compare two versions. Run by
hand, never in CI.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import Tensor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workloads  # noqa: E402

# detforge from this checkout, or from the one named by --detforge (to compare two versions)
_root = sys.argv[sys.argv.index("--detforge") + 1] if "--detforge" in sys.argv else HERE.parent
sys.path.insert(0, str(_root))
from detforge.ops.nms import batched_nms, nms  # noqa: E402

Case = tuple[str, Callable[[], Tensor], Callable[[], Tensor]]


def _cases() -> list[Case]:
    tv = torchvision.ops
    cases: list[Case] = []
    for n in workloads.NMS_SIZES:
        b, s = workloads.clustered_boxes(n)
        for t in (0.5, 0.7):
            cases.append((f"nms {n} boxes @ {t}", partial(nms, b, s, t), partial(tv.nms, b, s, t)))
    for n, k, t in workloads.BATCHED_NMS_CASES:
        b, s, i = workloads.classed_boxes(n, k)
        det, ref = partial(batched_nms, b, s, i, t), partial(tv.batched_nms, b, s, i, t)
        cases.append((f"batched_nms {n} boxes, {k} classes @ {t}", det, ref))
    return cases


def _compare(
    det: Callable[[], Tensor], ref: Callable[[], Tensor], budget_s: float
) -> tuple[float, float, int, bool]:
    same = torch.equal(det(), ref())  # also the warm-up
    t0 = time.perf_counter()
    det()
    ref()
    once = time.perf_counter() - t0
    repeat = max(11, min(2001, int(budget_s / max(once, 1e-6))))
    times: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    for r in range(repeat):
        pair = (det, ref) if r % 2 == 0 else (ref, det)
        for fn in pair:
            t0 = time.perf_counter()
            fn()
            times[fn is ref].append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[0]), statistics.median(times[1]), repeat, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="2,1", help="comma-separated thread counts")
    parser.add_argument("--filter", default="", help="only run workloads whose name contains this")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per workload (about)")
    parser.add_argument("--detforge", default=str(HERE.parent), help="checkout to import from")
    args = parser.parse_args()
    print(
        f"# torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"detforge from {Path(sys.modules['detforge'].__file__ or '').parent.parent}"
    )
    cases = [c for c in _cases() if args.filter in c[0]]
    for threads in (int(x) for x in args.threads.split(",")):
        torch.set_num_threads(threads)
        print(f"\n## {threads} thread(s); load average before: {os.getloadavg()[0]:.2f}")
        print(f"| {'workload':<40} | detforge ms | torchvision ms | ratio | same |")
        print(f"|{'-' * 42}|------------:|---------------:|------:|:----:|")
        for name, det, ref in cases:
            d, r, n, same = _compare(det, ref, args.budget)
            agree = "yes" if same else "NO"
            print(
                f"| {name:<40} | {d:>11.3f} | {r:>14.3f} | {d / r:>5.2f} | {agree} |  ({n} runs)",
                flush=True,
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
