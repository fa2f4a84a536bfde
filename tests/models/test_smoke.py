"""Every zoo builder: a training step on small images of different sizes (one without
annotations) gives finite losses and gradients for every trainable parameter (frozen stages
excepted: they have none); eval outputs follow the documented Instances schema in the original
image coordinates."""

import pytest
import torch

from detforge.modeling.zoo import MODELS, build_model
from detforge.structures.instances import Instances
from detforge.structures.masks import PolygonMasks

TINY = [n for n in MODELS if n.endswith("_tiny")]
FULL = [n for n in MODELS if not n.endswith("_tiny")]


def _square(x0: float, y0: float, s: float) -> list:
    import numpy as np

    return [np.array([x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s], dtype=np.float64)]


def _batch(with_masks: bool):
    images = [
        torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8),
        torch.randint(0, 255, (3, 75, 90), dtype=torch.uint8),
    ]
    t0 = Instances(
        (96, 128),
        boxes=torch.tensor([[10.0, 12.0, 50.0, 52.0], [60.0, 30.0, 90.0, 60.0]]),
        labels=torch.tensor([0, 2]),
        masks=PolygonMasks([_square(10, 12, 40), _square(60, 30, 30)]) if with_masks else None,
    )
    t1 = Instances(
        (75, 90),
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.long),
        masks=PolygonMasks([]) if with_masks else None,
    )
    return images, [t0, t1]


@pytest.mark.parametrize("name", TINY + FULL)
def test_model_trains_and_infers(name):
    # Every builder, the full-size R50/R101/X101 ones included (on small images: a few
    # seconds each on a CPU).
    torch.manual_seed(0)
    model = build_model(name, num_classes=3)
    with_masks = name.startswith("mask")
    images, targets = _batch(with_masks)
    model.train()
    losses = model(images, targets)
    expected = {"loss_cls", "loss_box"}
    if "rcnn" in name:
        expected |= {"loss_rpn_cls", "loss_rpn_box"}
    if with_masks:
        expected |= {"loss_mask"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []

    model.eval()
    with torch.no_grad():
        out = model(images, original_sizes=[(192, 256), (75, 90)])
    assert len(out) == 2
    for det, size in zip(out, [(192, 256), (75, 90)], strict=True):
        assert isinstance(det, Instances) and det.image_size == size
        assert det.scores is not None and det.labels is not None
        assert det.boxes.shape[1] == 4 and len(det) <= 100
        assert ((det.labels >= 0) & (det.labels < 3)).all()
        if with_masks:
            assert det.masks is not None and det.masks.shape == (len(det), *size)
            assert det.masks.dtype == torch.bool


@pytest.mark.parametrize("name", FULL)
def test_full_builders_construct(name):
    # Built on the meta device: no memory, no time; checks the wiring of each builder.
    with torch.device("meta"):
        model = build_model(name, num_classes=5)
    n = sum(p.numel() for p in model.parameters())
    assert n > 20_000_000


@pytest.mark.parametrize("name", FULL)
def test_full_builders_train_one_step(name):
    # Full-size models on small images: finite losses, and every trainable parameter (the
    # frozen stem and res2 excepted) gets a gradient, for a batch with an empty image.
    model = build_model(name, num_classes=3)
    with_masks = name.startswith("mask")
    images, targets = _batch(with_masks)
    model.train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".stem." in n or ".res2." in n for n in frozen)


def test_unknown_model_name():
    with pytest.raises(KeyError, match="did you mean"):
        build_model("faster_rcnn_r50_fpm")


@pytest.mark.parametrize("name", TINY)
def test_channels_last_gives_the_same_detections(name):
    # The detectors run channels-last by default (faster convolutions); the layout must not
    # change what they compute beyond float rounding.
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).eval()
    if hasattr(model, "test_score_thresh"):  # RetinaNet's prior keeps nothing above 0.05
        model.test_score_thresh = 0.0
    images, _ = _batch(False)
    with torch.no_grad():
        fast = model(images)
        model.channels_last = False
        plain = model(images)
    for a, b in zip(fast, plain, strict=True):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)
        assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("name", TINY)
def test_pixel_statistics_are_non_persistent_buffers_of_the_detector(name):
    # Checkpoints and converters depend on the state dict: the statistics stay out of it, and
    # the buffers keep their names (the model's own `pixel_mean`/`pixel_std`).
    model = build_model(name, num_classes=3)
    buffers = dict(model.named_buffers())
    assert buffers["pixel_mean"].shape == buffers["pixel_std"].shape == (3, 1, 1)
    assert not [k for k in model.state_dict() if "pixel" in k]
    assert all(
        k.startswith(("backbone.", "rpn.", "roi_heads.", "head.")) for k in model.state_dict()
    )


@pytest.mark.gpu
@pytest.mark.parametrize("name", TINY)
def test_cuda_train_step_and_detections_match_cpu(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3)
    if hasattr(model, "test_score_thresh"):
        model.test_score_thresh = 0.0
    images, targets = _batch(name.startswith("mask"))
    gpu_model = build_model(name, num_classes=3).cuda()
    gpu_model.load_state_dict(model.state_dict())
    if hasattr(gpu_model, "test_score_thresh"):
        gpu_model.test_score_thresh = 0.0
    gpu_model.train()
    losses = gpu_model([i.cuda() for i in images], [t.to("cuda") for t in targets])
    assert all(torch.isfinite(v) and v.is_cuda for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    gpu_model.eval()
    with torch.no_grad():
        cpu_out = model(images)
        gpu_out = gpu_model([i.cuda() for i in images])
    for a, b in zip(cpu_out, gpu_out, strict=True):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(b.boxes.cpu(), a.boxes, atol=1e-2, rtol=1e-3)
        torch.testing.assert_close(b.scores.cpu(), a.scores, atol=1e-3, rtol=1e-3)
