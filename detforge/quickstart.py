"""The quickstart, ``make demo``: train a small Mask R-CNN on the built-in synthetic dataset on
CPU, evaluate COCO box and mask AP on its validation split, draw the predictions, plot the loss
and AP curves, and print where everything is.

Usage: ``python -m detforge.quickstart [--output output/quickstart] [--max-iter N] [--resume]``
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detforge.checkpoint.spec import ModelSpec
from detforge.data.augmentation import RandomFlip, ResizeShortestEdge
from detforge.data.datasets.coco import load_coco_json
from detforge.data.datasets.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    generate_synthetic_coco,
)
from detforge.data.mapper import DatasetMapper, read_image
from detforge.engine.checkpointer import clear_run
from detforge.engine.hooks import EvalHook
from detforge.engine.recipe import TrainSettings, evaluate_coco, seed_everything, train_detector
from detforge.inference import test_mapper as make_test_mapper
from detforge.modeling.zoo import mask_rcnn_r18_fpn_tiny
from detforge.utils.plot import plot_metrics, read_metrics
from detforge.utils.visualizer import draw_instances

__all__ = ["main", "run"]

logger = logging.getLogger("detforge.quickstart")

DATA_SPEC = SyntheticSpec(
    num_train=200, num_val=50, min_size=128, max_size=160, max_objects=4,
    min_object=0.12, max_object=0.3, seed=0,
)  # fmt: skip
SPEC = ModelSpec(
    class_names=SYNTHETIC_CLASSES, builder="mask_rcnn_r18_fpn_tiny", input_format="RGB",
    min_size=144, max_size=200,
)  # fmt: skip


def _mappers() -> tuple[DatasetMapper, DatasetMapper]:
    train = DatasetMapper(
        [ResizeShortestEdge((128, 144, 160), max_size=200, sample_style="choice"), RandomFlip()],
        is_train=True, image_format="RGB", use_masks=True, mask_format="bitmask",
    )  # fmt: skip
    return train, make_test_mapper(SPEC)


def _draw_predictions(model: torch.nn.Module, records: list[dict], mapper, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        for record in records:
            x = mapper(record, np.random.default_rng(0))
            det = model([x["image"]], original_sizes=[(record["height"], record["width"])])[0]
            det = det[det.scores > 0.5]
            drawn = draw_instances(
                read_image(record["file_name"]), det.boxes.numpy(), det.labels.tolist(),
                class_names=SYNTHETIC_CLASSES, scores=det.scores.tolist(),
                masks=None if det.masks is None else det.masks.numpy(),
            )  # fmt: skip
            Image.fromarray(drawn).save(out / Path(record["file_name"]).name)
    return out


def run(output: Path, *, max_iter: int = 500, resume: bool = False, num_workers: int = 1) -> dict:
    """Run the quickstart; returns the final evaluation results."""
    start = time.perf_counter()
    paths = generate_synthetic_coco(output / "data", DATA_SPEC)
    train_records = load_coco_json(paths["train_json"], paths["train_images"])
    val_records = load_coco_json(paths["val_json"], paths["val_images"])
    train_mapper, test_mapper = _mappers()
    if not resume and (output / "train").is_dir():
        logger.info("starting the quickstart again: replacing the run in %s", output / "train")
        clear_run(output / "train")
    seed_everything(0)
    model = mask_rcnn_r18_fpn_tiny(num_classes=len(SYNTHETIC_CLASSES))
    settings = TrainSettings(
        output_dir=str(output / "train"), max_iter=max_iter, batch_size=4, base_lr=0.02,
        steps=(0.75, 0.92), warmup_iters=100, warmup_factor=0.01, grad_clip=10.0,
        checkpoint_period=200, keep_last=2, eval_period=max(-(-max_iter // 3), 1), log_period=50,
        num_workers=num_workers, resume=resume,
    )  # fmt: skip

    def evaluate(m: torch.nn.Module) -> dict[str, dict[str, float]]:
        return evaluate_coco(
            m, val_records, test_mapper, json_file=paths["val_json"],
            output_dir=output / "eval", tasks=("bbox", "segm"),
        )  # fmt: skip

    trainer = train_detector(
        model, train_records, train_mapper, settings, evaluate=evaluate,
        metadata={"model_spec": SPEC.to_dict(), "class_names": list(SYNTHETIC_CLASSES)},
    )  # fmt: skip
    evals = [h for h in trainer.hooks if isinstance(h, EvalHook)]
    results = evals[0].history[-1][1] if evals and evals[0].history else {}
    pictures = _draw_predictions(model, val_records[:8], test_mapper, output / "predictions")
    plot = plot_metrics(read_metrics(output / "train" / "metrics.json"), output / "curves.png")
    minutes = (time.perf_counter() - start) / 60
    print(f"\ndetforge quickstart finished in {minutes:.1f} min")
    print(
        f"  box AP  {results.get('bbox', {}).get('AP', float('nan')):.1f}"
        f"   mask AP  {results.get('segm', {}).get('AP', float('nan')):.1f}"
        f"   (COCO AP x100 on {len(val_records)} validation images)"
    )
    print(f"  data:         {output / 'data'}")
    print(f"  checkpoints:  {output / 'train'} (model_final.pth, model_best.pth)")
    print(
        f"  metrics:      {output / 'train' / 'metrics.json'} and TensorBoard in "
        f"{output / 'train' / 'tensorboard'}"
    )
    print(f"  predictions:  {pictures}")
    print(f"  curves:       {plot}")
    return results


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("output/quickstart"))
    parser.add_argument("--max-iter", type=int, default=500)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(args.output, max_iter=args.max_iter, resume=args.resume, num_workers=args.num_workers)


if __name__ == "__main__":
    main()
