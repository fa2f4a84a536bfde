"""``Predictor``: a trained checkpoint as a function from an image to detections.

    from detforge.predictor import Predictor

    predictor = Predictor.from_checkpoint("output/run/model_final.pth")
    det = predictor("photo.jpg")          # or an RGB uint8 array [H, W, 3], or a PIL image
    det.boxes, det.scores, det.labels     # in the photo's pixels; det.masks for mask models
    predictor.class_names[int(det.labels[0])]

The checkpoint (of ``detforge train`` or ``detforge convert``) says which model to build, its
classes, its channel order and its test resize; the image is resized as in evaluation and the
detections are mapped back to its own size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from detforge.checkpoint.spec import ModelSpec
from detforge.data.mapper import read_image
from detforge.engine.recipe import resolve_device
from detforge.inference import load_model, predict_image
from detforge.structures.instances import Instances

__all__ = ["Predictor"]


class Predictor:
    """Detections of a model on single images.

    Args:
        model: the detector (put in eval mode and moved to ``device``).
        spec: what the checkpoint says about it (class names, channel order, test resize).
        device: ``"auto"`` (a GPU when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        score_threshold: detections scoring below it are dropped.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        device: str = "auto",
        score_threshold: float = 0.0,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"Predictor: score_threshold must be in [0, 1], got {score_threshold}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.spec = spec
        self.score_threshold = score_threshold

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str = "auto", score_threshold: float = 0.0
    ) -> Predictor:
        """Build the checkpoint's model and load its weights (safely: no code runs).

        Raises:
            FileNotFoundError: no such file.
            ValueError: an unreadable checkpoint, one that does not say which model it holds
                or whose weights do not fit it; the message names the file.
        """
        model, spec = load_model(path)
        return cls(model, spec, device=device, score_threshold=score_threshold)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the labels, in label order."""
        return self.spec.class_names

    def __call__(self, image: str | Path | np.ndarray | Image.Image) -> Instances:
        """Detect objects in one image.

        Args:
            image: a file path, a PIL image, or an RGB ``uint8`` array ``[H, W, 3]``.

        Returns:
            Instances on the CPU, in the image's pixels: ``boxes`` (Tensor[N, 4], xyxy),
            ``scores``, ``labels`` and, for mask models, ``masks`` (bool Tensor[N, H, W]),
            by decreasing score.
        """
        if isinstance(image, (str, Path)):
            array = read_image(str(image))
        elif isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB"))
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    "Predictor: an array image must be RGB uint8 [H, W, 3], got "
                    f"{image.dtype} {list(image.shape)}"
                )
            array = image
        else:
            raise TypeError(f"Predictor: unsupported image type {type(image).__name__}")
        with torch.inference_mode():
            det = predict_image(self.model, array, self.spec)
        if det.scores is not None and self.score_threshold > 0:
            det = det[det.scores >= self.score_threshold]
        return det
