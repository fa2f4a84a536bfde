import pytest
import torch

from detforge.modeling.postprocess import check_targets, detector_postprocess, preprocess_images
from detforge.structures.instances import Instances

MEAN = torch.tensor([100.0, 110.0, 120.0]).view(3, 1, 1)
STD = torch.tensor([2.0, 1.0, 4.0]).view(3, 1, 1)


def test_preprocess_normalises_and_pads():
    imgs = [torch.full((3, 20, 30), 120, dtype=torch.uint8), torch.zeros(3, 33, 10)]
    batch = preprocess_images(imgs, MEAN, STD, size_divisibility=32, owner="M")
    assert batch.tensor.shape == (2, 3, 64, 32)
    assert batch.image_sizes == [(20, 30), (33, 10)]
    assert batch.tensor[0, :, 0, 0].tolist() == [10.0, 10.0, 0.0]
    assert batch.tensor[1, :, 0, 0].tolist() == [-50.0, -110.0, -30.0]


@pytest.mark.parametrize(
    ("images", "match"),
    [
        ([], "non-empty"),
        ([torch.zeros(1, 4, 4)], r"image 0 must be a Tensor\[3, H, W\]"),
        ([torch.zeros(3, 4)], "image 0"),
        ([torch.zeros(3, 4, 4, dtype=torch.int32)], "uint8 or floating"),
        ([torch.zeros(3, 0, 4)], "empty"),
    ],
)
def test_preprocess_errors(images, match):
    with pytest.raises((ValueError, TypeError), match=match):
        preprocess_images(images, MEAN, STD, size_divisibility=32, owner="M")


def _inst(boxes, size=(20, 30)):
    b = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    return Instances(size, boxes=b, labels=torch.zeros(len(b), dtype=torch.long))


def test_check_targets():
    sizes = [(20, 30)]
    check_targets([_inst([[0, 0, 30.5, 20]])], sizes, "M")  # within the tolerance
    with pytest.raises(ValueError, match="required"):
        check_targets(None, sizes, "M")
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        check_targets([_inst([]), _inst([])], sizes, "M")
    with pytest.raises(ValueError, match=r"box 1 .* outside the 30x20 image"):
        check_targets([_inst([[0, 0, 5, 5], [0, 0, 40, 5]])], sizes, "M")
    with pytest.raises(ValueError, match="unordered"):
        check_targets([_inst([[5, 0, 1, 5]])], sizes, "M")


def test_postprocess_rescales_clips_drops_and_pastes():
    det = Instances(
        (20, 30),
        boxes=torch.tensor([[3.0, 2, 15, 10], [29, 19, 35, 25], [40, 40, 50, 50]]),
        labels=torch.tensor([1, 2, 3]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        masks=torch.ones(3, 1, 28, 28),
    )
    out = detector_postprocess(det, (40, 60))
    assert out.image_size == (40, 60)
    assert out.boxes.tolist() == [[6.0, 4, 30, 20], [58, 38, 60, 40]]
    assert out.labels.tolist() == [1, 2]
    assert out.masks.shape == (2, 40, 60) and out.masks.dtype == torch.bool
    assert out.masks[0].sum() == 24 * 16
