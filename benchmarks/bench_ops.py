"""Time detforge's ops on the fixed workloads of the foundation issue and print a table.

Usage:  .venv/bin/python benchmarks/bench_ops.py [--device cpu|cuda] [--threads 2] [--repeat 7]

Each workload runs once to warm up, then ``--repeat`` (>= 5) times, or more for a workload
under 1 ms (until about 0.2 s of runs); the table gives the median and the fastest run in
milliseconds. Results and the machine they were taken on are recorded in benchmarks/README.md.
This script is run by hand, never in CI. ``compare_nms_torchvision.py`` times NMS against
torchvision's compiled kernels.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402

from detforge.ops.nms import batched_nms, nms  # noqa: E402
from detforge.ops.paste_masks import paste_masks_in_image  # noqa: E402
from detforge.ops.roi_align import roi_align  # noqa: E402
from detforge.ops.roi_pool import roi_pool  # noqa: E402


def _time(fn: Callable[[], object], device: str, repeat: int) -> tuple[float, float]:
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    fn()  # warm-up
    sync()
    once = time.perf_counter() - t0
    if once < 1e-3:  # short workloads: enough runs for a steady median
        repeat = max(repeat, min(1000, int(0.2 / max(once, 1e-5))))
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs), min(runs)


def _cases(device: str) -> list[tuple[str, Callable[[], object]]]:
    cases: list[tuple[str, Callable[[], object]]] = []
    for n in workloads.NMS_SIZES:
        boxes, scores = (t.to(device) for t in workloads.clustered_boxes(n))
        for thr in (0.5, 0.7):
            cases.append((f"nms {n} boxes @ {thr}", partial(nms, boxes, scores, thr)))
    for n, k, thr in workloads.BATCHED_NMS_CASES:
        boxes, scores, idxs = (t.to(device) for t in workloads.classed_boxes(n, k))
        name = f"batched_nms {n} boxes, {k} classes @ {thr}"
        cases.append((name, partial(batched_nms, boxes, scores, idxs, thr)))

    feats, rois = (t.to(device) for t in workloads.roi_align_inputs())
    feats_g = feats.clone().requires_grad_(True)
    for size in (7, 14):

        def fwd(s: int = size) -> object:
            with torch.no_grad():
                return roi_align(
                    feats, rois, s, spatial_scale=0.25, sampling_ratio=-1, aligned=True
                )

        def fwd_bwd(s: int = size) -> object:
            out = roi_align(feats_g, rois, s, spatial_scale=0.25, sampling_ratio=-1, aligned=True)
            out.sum().backward()
            feats_g.grad = None
            return out

        cases.append((f"roi_align 512 RoIs -> {size}x{size} forward", fwd))
        cases.append((f"roi_align 512 RoIs -> {size}x{size} forward+backward", fwd_bwd))

    def pool_fwd_bwd() -> object:
        out = roi_pool(feats_g, rois, 7, spatial_scale=0.25)
        out.sum().backward()
        feats_g.grad = None
        return out

    cases.append(("roi_pool 512 RoIs -> 7x7 forward+backward (extra)", pool_fwd_bwd))

    masks, mboxes = (t.to(device) for t in workloads.paste_masks_inputs())
    cases.append(
        (
            "paste_masks_in_image 100 x 28x28 -> 800x1333",
            lambda: paste_masks_in_image(masks, mboxes, (800, 1333)),
        )
    )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--filter", default="", help="only run workloads whose name contains this")
    args = parser.parse_args()
    if args.repeat < 5:
        parser.error("--repeat must be at least 5")
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, device {args.device}, median of {args.repeat} after warm-up"
    )
    print(f"| {'workload':<52} | {'median ms':>9} | {'min ms':>8} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 10}|")
    for name, fn in _cases(args.device):
        if args.filter and args.filter not in name:
            continue
        med, best = _time(fn, args.device, args.repeat)
        digits = 3 if med < 1 else 1
        print(f"| {name:<52} | {med:>9.{digits}f} | {best:>8.{digits}f} |", flush=True)


if __name__ == "__main__":
    main()
