"""Write the detectron2 parity fixture that ``tests/models/test_detectron2_parity.py`` reads.

Run it where detectron2 is installed (with its model zoo reachable), not in detforge's
environment; copy the output folder to ``../shared/parity`` (or point ``DETFORGE_PARITY_DIR``
at it). For each model it writes:

* ``NAME.pkl``: the model-zoo checkpoint, byte for byte;
* ``NAME.npz``: ``image`` (uint8 ``[3, H, W]``, BGR: the tensor given to detectron2), ``height``
  and ``width`` (the original size passed along with it), and detectron2's outputs: ``boxes``
  (float32 ``[N, 4]``), ``scores`` (float32 ``[N]``), ``classes`` (int64 ``[N]``) and, for Mask
  R-CNN, ``masks`` (bool ``[N, height, width]``).

    python tools/make_detectron2_parity_fixture.py --image photo.jpg -o parity/

The image is resized here (shortest edge 800, longest at most 1333, PIL bilinear) so that both
toolboxes see the very same tensor; detectron2's own resizing never runs.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CONFIGS = {
    "faster_rcnn_R_50_FPN_1x": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "mask_rcnn_R_50_FPN_1x": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "retinanet_R_50_FPN_1x": "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
}


def _input(path: str) -> tuple[torch.Tensor, int, int]:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = min(800 / min(h, w), 1333 / max(h, w))
    size = (round(w * scale), round(h * scale))
    resized = np.asarray(image.resize(size, Image.BILINEAR))[..., ::-1]  # RGB -> BGR
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), h, w


def main() -> None:
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.utils.file_io import PathManager

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="a photo with several COCO objects")
    parser.add_argument("-o", "--output", required=True, help="folder to write")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    image, height, width = _input(args.image)
    for name, config in CONFIGS.items():
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(config))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg).eval()
        url = model_zoo.get_checkpoint_url(config)
        DetectionCheckpointer(model).load(url)
        shutil.copyfile(PathManager.get_local_path(url), out / f"{name}.pkl")
        with torch.no_grad():
            inst = model([{"image": image, "height": height, "width": width}])[0]["instances"]
        arrays = {
            "image": image.numpy(),
            "height": height,
            "width": width,
            "boxes": inst.pred_boxes.tensor.numpy().astype(np.float32),
            "scores": inst.scores.numpy().astype(np.float32),
            "classes": inst.pred_classes.numpy().astype(np.int64),
        }
        if inst.has("pred_masks"):
            arrays["masks"] = inst.pred_masks.numpy().astype(bool)
        np.savez_compressed(out / f"{name}.npz", **arrays)
        print(f"{name}: {len(inst)} detections -> {out}")


if __name__ == "__main__":
    main()
