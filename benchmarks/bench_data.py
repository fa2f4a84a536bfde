"""Data-pipeline benchmark: mapping throughput per worker, and loader memory with 4 workers.

Usage:  .venv/bin/python benchmarks/bench_data.py [--records 100000] [--workers 4]

1. Throughput: the training mapping of one process (decode a JPEG, resize to 800 on the short
   side / 1333 max, random flip, instance masks rasterised as bitmasks at the final size), over
   synthetic 480-640 px images with 1-5 objects each.
2. Memory: a training loader with ``--workers`` workers over ``--records`` synthetic records
   (polygon annotations). We report the proportional set size (PSS: shared pages split between
   the processes sharing them) of the main process plus the workers, with the records held as
   one serialised buffer (what ``build_train_loader`` does) and, for contrast, as a plain list
   of dicts handed to a bare ``DataLoader``. Linux only (reads /proc). Run by hand, not in CI;
   results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from detforge.data.augmentation import RandomFlip, ResizeShortestEdge
from detforge.data.datasets.coco import load_coco_json
from detforge.data.datasets.synthetic import SyntheticSpec, generate_synthetic_coco
from detforge.data.loader import MapDataset, trivial_batch_collator
from detforge.data.mapper import DatasetMapper
from detforge.data.records import SerializedList
from detforge.data.samplers import GroupedBatchSampler, TrainingSampler


def _mem_mib(pid: int) -> tuple[float, float]:
    """(PSS, USS) of a process in MiB; USS = pages private to it (Private_Clean + _Dirty)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Private_Clean", "Private_Dirty"):
                fields[key] = int(rest.split()[0])
    return fields["Pss"] / 1024, (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def _tree_mem_mib() -> tuple[float, float, float]:
    """PSS of this process, PSS of its children (the workers), mean USS of a child; MiB."""
    me = os.getpid()
    with open(f"/proc/{me}/task/{me}/children") as f:
        children = [int(p) for p in f.read().split()]
    kids = [_mem_mib(c) for c in children]
    return _mem_mib(me)[0], sum(k[0] for k in kids), sum(k[1] for k in kids) / len(kids)


def _mapper() -> DatasetMapper:
    augs = [ResizeShortestEdge((800,), max_size=1333, sample_style="choice"), RandomFlip()]
    return DatasetMapper(augs, is_train=True, use_masks=True, mask_format="bitmask")


def throughput(root: Path, n: int = 48) -> float:
    paths = generate_synthetic_coco(
        root, SyntheticSpec(num_train=16, num_val=0, min_size=480, max_size=640, seed=1)
    )
    records = load_coco_json(paths["train_json"], paths["train_images"])
    mapper = _mapper()
    ds = MapDataset(records, mapper, seed=0, rank=0, strict=True)
    ds[(0, 0)]  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        ds[(i, i % len(records))]
    dt = time.perf_counter() - t0
    return n / dt


def _many_records(root: Path, count: int) -> list[dict]:
    paths = generate_synthetic_coco(root, SyntheticSpec(num_train=50, num_val=0, seed=2))
    base = load_coco_json(paths["train_json"], paths["train_images"])
    # Independent deep copies, as a loader reading a real annotation file produces them.
    return [json.loads(json.dumps(dict(base[i % len(base)], image_id=i))) for i in range(count)]


def _collect_garbage(_: int) -> None:
    # A long run's workers go through full garbage collections, which write to every tracked
    # object's header (and Python touches refcounts on every access): pages of a list of dicts
    # are then copied into each worker. Forcing one collection shows that cost in a short run.
    gc.collect()


def memory(root: Path, count: int, workers: int, serialised: bool) -> tuple[float, ...]:
    """PSS of the main process and of the workers after 40 batches (run in a fresh process)."""
    records: object = _many_records(root, count)
    mapper = _mapper()
    if serialised:
        records = SerializedList(records)  # type: ignore[arg-type]
        gc.collect()
    ds = MapDataset(records, mapper, seed=0, rank=0)  # type: ignore[arg-type]
    batches = GroupedBatchSampler(TrainingSampler(count, rank=0, world_size=1), [0] * count, 2)
    loader = DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_collect_garbage,
    )
    it = iter(loader)
    for _ in islice(it, 40):
        pass
    return _tree_mem_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--only", choices=["serialised", "list"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only:  # child run: measure one configuration in a fresh process
            stats = memory(Path(tmp), args.records, args.workers, args.only == "serialised")
            print(" ".join(f"{v:.1f}" for v in stats))
            return
        ips = throughput(Path(tmp) / "tp")
        print(f"training mapping: {ips:.1f} images/s per worker (1 thread)")
    for how in ("serialised", "list"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--records",
                str(args.records),
                "--workers",
                str(args.workers),
                "--only",
                how,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        main_mib, kids_mib, uss = (float(v) for v in out[-3:])
        print(
            f"{how:>10}: PSS main {main_mib:6.1f} + {args.workers} workers {kids_mib:6.1f}"
            f" = {main_mib + kids_mib:6.1f} MiB; private per worker {uss:5.1f} MiB"
            f" ({args.records} records)"
        )


if __name__ == "__main__":
    main()
