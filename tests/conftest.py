"""Shared test setup: seeded RNGs, an RNG-leak guard, and the automatic skip of `gpu` tests."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATASETS = Path(
    os.environ.get(
        "DETFORGE_SHARED_DATASETS",
        Path(__file__).resolve().parents[1].parent / "shared" / "datasets",
    )
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_and_guard_rng() -> Iterator[None]:
    """Seed every RNG before each test; fail a test that leaves torch's global modes changed."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    grad_enabled = torch.is_grad_enabled()
    default_dtype = torch.get_default_dtype()
    yield
    assert torch.is_grad_enabled() == grad_enabled, "test left autograd switched off"
    assert torch.get_default_dtype() == default_dtype, "test changed the default dtype"
    torch.set_num_threads(threads)


@pytest.fixture
def shared_datasets() -> Path:
    """Root of ../shared/datasets; the test is skipped when the folder is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
