"""FrozenBN calibration gives a random ResNet detector unit-scale activations."""

import torch

from detforge.layers.norms import FrozenBatchNorm2d
from detforge.modeling.calibration import calibrate_frozen_batchnorm
from detforge.modeling.zoo import build_model


def _res5_std(model, image):
    x = (image.float() - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        return float(model.backbone.bottom_up(x[None])["res5"].std())


def test_calibration_tames_activations_and_is_repeatable():
    torch.manual_seed(0)
    model = build_model("faster_rcnn_r50_fpn", num_classes=3)
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    before = _res5_std(model, image)
    model.train()
    count = calibrate_frozen_batchnorm(model, [image])
    assert model.training  # mode restored
    assert count == sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) > 50
    after = _res5_std(model, image)
    assert before > 100 and 0.1 < after < 10, (before, after)
    stats = [m.running_var.clone() for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    calibrate_frozen_batchnorm(model, [image])
    again = [m.running_var for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    for a, b in zip(stats, again, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
