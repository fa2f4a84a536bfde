"""Inference from a checkpoint: the model it describes, and the one test-time transform.

    from detforge.inference import load_model, predict_image

    model, spec = load_model("output/run/model_final.pth")   # weights + ModelSpec, safely
    det = predict_image(model, rgb_uint8_array, spec)          # detections in the image's pixels

:func:`load_model` reads any detforge checkpoint (``.pth`` or ``.safetensors``: trainer output,
``detforge convert``, published models) with ``torch.load(weights_only=True)`` and rebuilds the
model from its :class:`~detforge.checkpoint.spec.ModelSpec`; a model stored as a config is built
only from allow-listed targets (:mod:`detforge.config.targets`), so no code from the file runs.

:func:`test_mapper` is the test-time transform (shortest edge ``spec.min_size``, longest at most
``spec.max_size``, the model's channel order) that evaluation, ``detforge predict``, the
:class:`~detforge.predictor.Predictor` and the quickstart all use. Errors are library errors
(``FileNotFoundError``, ``ValueError``), each naming the file; the command line turns them into
one-line messages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detforge.checkpoint.io import load_checkpoint
from detforge.checkpoint.load import load_weights
from detforge.checkpoint.spec import ModelSpec
from detforge.data.augmentation import ResizeShortestEdge
from detforge.data.mapper import DatasetMapper
from detforge.structures.instances import Instances

__all__ = ["has_mask_head", "load_model", "predict_image", "test_mapper", "with_test_size"]


def has_mask_head(model: nn.Module) -> bool:
    """Whether ``model`` predicts instance masks (an R-CNN with a mask head)."""
    return getattr(getattr(model, "roi_heads", None), "mask_head", None) is not None


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Build a checkpoint's model and load its weights (strictly), never running code.

    Args:
        path: a detforge checkpoint (``.pth`` or ``.safetensors``).

    Returns:
        ``(model in eval mode on the CPU, its spec)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable file, a checkpoint that does not say which model it holds,
            a config naming a callable outside the allow-list (``UnsafeConfigError``), or
            weights that do not fit the model. The message names the file.
    """
    source = str(path)
    data = load_checkpoint(source)
    spec = ModelSpec.from_checkpoint(data, source)
    model = spec.build(f"checkpoint {source}")
    try:
        load_weights(model, data["model"], strict=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {source} does not fit its model: {e}") from e
    return model.eval(), spec


def with_test_size(spec: ModelSpec, min_size: int | None, max_size: int | None) -> ModelSpec:
    """``spec`` with another test-time resize (None keeps the spec's)."""
    return dataclasses.replace(
        spec, min_size=min_size or spec.min_size, max_size=max_size or spec.max_size
    )


def test_mapper(spec: ModelSpec) -> DatasetMapper:
    """The test-time mapper: shortest edge ``spec.min_size``, longest at most ``spec.max_size``,
    channels in the model's order (``spec.input_format``; BGR when the spec leaves it open)."""
    resize = ResizeShortestEdge((spec.min_size,), max_size=spec.max_size, sample_style="choice")
    return DatasetMapper([resize], is_train=False, image_format=spec.input_format or "BGR")


def predict_image(model: nn.Module, image: np.ndarray, spec: ModelSpec) -> Instances:
    """Detections of ``model`` on one image, in the image's own coordinates.

    Args:
        model: the detector, in eval mode.
        image: ``uint8 [H, W, 3]`` RGB.
        spec: the model's spec (test resize and channel order).

    Returns:
        Instances with ``boxes`` (Tensor[N, 4], xyxy pixels of ``image``), ``scores``,
        ``labels`` and, for mask models, ``masks`` (Tensor[N, H, W] bool), on the CPU.
    """
    x, _ = test_mapper(spec).image_tensor(image, np.random.default_rng(0))  # [3, H', W'] uint8
    with torch.no_grad():
        det = model([x], original_sizes=[image.shape[:2]])[0]
    return det.to(torch.device("cpu"))
