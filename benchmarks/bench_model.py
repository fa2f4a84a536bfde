"""Whole-model benchmark: inference latency and training-iteration time of the R50-FPN models.

Random weights (nothing is downloaded) whose FrozenBN statistics are set from the benchmark image
so that activations keep a trained network's scale; ``--threads`` CPU threads (2 by default),
fixed seeds.
Each (model, measurement) runs in a fresh Python process so that its peak memory is its own:
peak RSS (``ru_maxrss``) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

Measurements:

* ``infer``: one 800x1333 uint8 image, ``model.eval()`` under ``torch.inference_mode``, the
  full ``forward`` (normalisation, padding, backbone, heads, post-processing, masks pasted into
  the image). With random weights a two-stage model keeps almost no detection above the 0.05
  score threshold, so the mask head would have nothing to do; ``infer-100`` therefore also
  times the same call with the score threshold at 0, which yields the full 100 detections (and
  100 pasted 800x1333 masks for Mask R-CNN): the cost of a busy real image.
* ``train``: one iteration on 2 images of 800x1333 with 8 ground-truth boxes each (and
  polygon masks for Mask R-CNN): forward, backward and an SGD step.

The first ``--warmup`` calls are not timed; the median and minimum of ``--repeat`` are
reported. Results go to stdout as a Markdown table (and as JSON with ``--json FILE``).

    .venv/bin/python benchmarks/bench_model.py                      # all three, CPU
    .venv/bin/python benchmarks/bench_model.py --models retinanet_r50_fpn --only infer
    .venv/bin/python benchmarks/bench_model.py --device cuda --repeat 10
    .venv/bin/python benchmarks/bench_model.py --no-channels-last   # NCHW, for comparison
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn", "retinanet_r50_fpn")
KINDS = ("infer", "infer-100", "train")
HEIGHT, WIDTH = 800, 1333


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _targets(device: str, with_masks: bool, generator):  # noqa: ANN001, ANN202
    import numpy as np
    import torch

    from detforge.structures.instances import Instances
    from detforge.structures.masks import PolygonMasks

    out = []
    for _ in range(2):
        xy = torch.rand(8, 2, generator=generator) * torch.tensor([WIDTH - 400.0, HEIGHT - 400.0])
        wh = 32 + torch.rand(8, 2, generator=generator) * 360
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(0, 80, (8,), generator=generator)
        masks = None
        if with_masks:
            polys = []
            for x0, y0, x1, y1 in boxes.tolist():
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                diamond = [cx, y0, x1, cy, cx, y1, x0, cy]  # inscribed in the box
                polys.append([np.array(diamond, dtype=np.float64)])
            masks = PolygonMasks(polys)
        out.append(Instances((HEIGHT, WIDTH), boxes=boxes, labels=labels, masks=masks).to(device))
    return out


def _run_one(
    name: str,
    kind: str,
    device: str,
    threads: int,
    warmup: int,
    repeat: int,
    channels_last: bool = True,
) -> dict:
    """Time one measurement in this process; returns a result row."""
    import torch

    from detforge.modeling.zoo import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_model(name).to(device)
    model.channels_last = channels_last
    images = [
        torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8, generator=generator).to(device)
        for _ in range(2 if kind == "train" else 1)
    ]
    from detforge.modeling.calibration import calibrate_frozen_batchnorm

    calibrate_frozen_batchnorm(model, images[:1])
    if kind == "train":
        targets = _targets(device, name.startswith("mask"), generator)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step() -> int:
            losses = model(images, targets)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if not torch.isfinite(total):
                raise RuntimeError(f"{name}: non-finite loss {losses}")
            return 0

    else:
        model.eval()
        if kind == "infer-100":
            if hasattr(model, "roi_heads"):
                model.roi_heads.box_predictor.test_score_thresh = 0.0
            else:
                model.test_score_thresh = 0.0

        def step() -> int:
            with torch.inference_mode():
                return len(model(images)[0])

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    detections = 0
    for _ in range(warmup):
        detections = step()
    times = []
    for _ in range(repeat):
        _synchronize(device)
        start = time.perf_counter()
        detections = step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "model": name,
        "kind": kind,
        "device": device,
        "threads": threads,
        "channels_last": channels_last,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeat": repeat,
        "peak_mib": peak_mib,
        "detections": detections if kind != "train" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--only", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-channels-last",
        action="store_true",
        help="run the models on NCHW batches (to measure what channels-last gains)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    if args.one:
        row = _run_one(
            *args.one,
            args.device,
            args.threads,
            args.warmup,
            args.repeat,
            channels_last=not args.no_channels_last,
        )
        print(json.dumps(row))
        return 0

    rows = []
    print("| model | measurement | median s | min s | peak MiB | detections |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.models:
        for kind in args.only:
            cmd = [sys.executable, __file__, "--one", name, kind]
            cmd += ["--device", args.device, "--threads", str(args.threads)]
            cmd += ["--warmup", str(args.warmup), "--repeat", str(args.repeat)]
            cmd += ["--no-channels-last"] if args.no_channels_last else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                print(f"{name} {kind}: failed (exit {done.returncode})", file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            dets = "" if row["detections"] is None else row["detections"]
            print(
                f"| {name} | {kind} | {row['median_s']:.2f} | {row['min_s']:.2f} "
                f"| {row['peak_mib']:.0f} | {dets} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
