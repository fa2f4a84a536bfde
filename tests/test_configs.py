"""Every file under configs/ loads and builds; each zoo model has a config that rebuilds it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detforge.config import LazyConfig, apply_overrides, instantiate
from detforge.modeling import zoo
from detforge.modeling.detectors.generalized_rcnn import GeneralizedRCNN
from detforge.modeling.detectors.retinanet import RetinaNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.rglob("*.py"))


def _defines_model(path: Path) -> bool:
    try:
        return "model" in LazyConfig.load(path)
    except Exception:  # keep it, so that its test fails and shows the error
        return True


MODEL_FILES = [f for f in FILES if _defines_model(f)]
RGB_STD = (58.395, 57.12, 57.375)


def _expected_std(name: str) -> tuple[float, ...]:
    if "tiny" in name:
        return RGB_STD
    return zoo.X101_STD if "x101" in name else zoo.CAFFE_STD


def test_config_tree_is_found() -> None:
    assert len(MODEL_FILES) >= len(zoo.MODELS)  # one experiment per zoo model
    assert not (CONFIGS / "__init__.py").exists()  # configs are loaded by path, not imported


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_instantiates_with_a_tiny_backbone(path: Path) -> None:
    cfg = LazyConfig.load(path)
    overrides = ["model.depth=18", "model.num_classes=2"]  # builder keywords
    if "x101" in path.stem:  # ResNeXt: basic blocks of ResNet-18 need plain widths
        overrides += ["model.groups=1", "model.width_per_group=64"]
    apply_overrides(cfg, overrides)
    model = instantiate(cfg.model)
    assert next(model.parameters()).device.type == "cpu"
    assert model.num_classes == 2
    if path.stem.startswith("retinanet"):
        assert isinstance(model, RetinaNet)
        assert model.head.cls_score.out_channels == 9 * 2  # 3 scales x 3 ratios x K
    else:
        assert isinstance(model, GeneralizedRCNN)
        assert model.roi_heads.box_predictor.cls_score.out_features == 2 + 1  # K + background
        has_mask = getattr(model.roi_heads, "mask_head", None) is not None
        assert has_mask == path.stem.startswith("mask_rcnn")
    expected_std = torch.tensor(_expected_std(path.stem)).view(-1, 1, 1)
    assert torch.allclose(model.pixel_std, expected_std)


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_experiment_config_calls_its_zoo_builder(name: str) -> None:
    # One source of truth: the config of a zoo model is a lazy call of its builder, so the two
    # cannot drift apart (no structural comparison needed).
    cfg = LazyConfig.load(CONFIGS / f"{name}.py")
    assert cfg.model._target_ is zoo.MODELS[name]
    assert set(cfg.model.keys()) == {"_target_", "num_classes"}
    assert cfg.model.num_classes == (3 if "tiny" in name else 80)


def test_builder_keywords_reach_the_backbone_and_the_heads() -> None:
    cfg = LazyConfig.load(CONFIGS / "faster_rcnn_r18_fpn_tiny.py")
    apply_overrides(cfg, ["model.fc_dim=32", "model.freeze_at=2", "model.mask=True"])
    model = instantiate(cfg.model)
    assert model.roi_heads.box_predictor.cls_score.in_features == 32
    assert not any(p.requires_grad for p in model.backbone.bottom_up.stem.parameters())
    assert model.roi_heads.mask_head is not None
    with pytest.raises(TypeError, match="'fc_dimm'; did you mean fc_dim"):
        zoo.faster_rcnn_r50_fpn(fc_dimm=3)


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_experiment_config_describes_a_whole_run(name: str, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from detforge.cli.run_setup import CONFIG_DATA_KEYS as _CONFIG_DATA_KEYS
    from detforge.engine.recipe import TrainSettings

    monkeypatch.setenv("DETFORGE_DATASETS", "/data")
    cfg = LazyConfig.load(CONFIGS / f"{name}.py")
    settings = instantiate(cfg.train)
    assert isinstance(settings, TrainSettings)
    scaled = settings.scaled()
    assert scaled.max_iter >= 1000 and scaled.warmup_iters < scaled.max_iter
    loader = OmegaConf.to_container(cfg.dataloader, resolve=True)
    assert set(loader) <= set(_CONFIG_DATA_KEYS) | {"mapper"}
    assert max(loader["min_size"]) <= loader["max_size"]
    if "tiny" in name:  # CPU schedule; the data comes from the command line
        assert settings.batch_size == 4 and "coco_json" not in loader
    else:  # detectron2's 1x COCO schedule, data under $DETFORGE_DATASETS
        assert (settings.max_iter, settings.batch_size, settings.base_lr) == (90000, 16, 0.02)
        assert settings.steps == (60000, 80000) and settings.reference_batch_size == 16
        assert loader["coco_json"] == "/data/coco/annotations/instances_train2017.json"
        assert loader["val_image_root"] == "/data/coco/val2017"
        # The linear scaling rule for 2 images per batch, as on one GPU.
        two = TrainSettings(**{**vars(settings), "batch_size": 2}).scaled()
        assert two.base_lr == pytest.approx(0.0025) and two.max_iter == 720000
