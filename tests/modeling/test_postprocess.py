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
        ([], "is empty"),
        (torch.zeros(1, 3, 4, 4), "list"),
        ([torch.zeros(1, 4, 4)], r"images\[0\]` must have shape \[3, H, W\]"),
        ([torch.zeros(3, 4)], r"images\[0\]"),
        ([torch.zeros(3, 4, 4, dtype=torch.int32)], "uint8 or floating"),
        ([torch.zeros(3, 0, 4)], "H, W > 0"),
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

    def check(targets):
        return check_targets(targets, sizes, num_classes=2, owner="M")

    check([_inst([[0, 0, 30.5, 20]])])  # within the tolerance
    with pytest.raises(ValueError, match="required"):
        check(None)
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        check([_inst([]), _inst([])])
    with pytest.raises(ValueError, match=r"boxes\[1\]` is .* inside the 20x30 image"):
        check([_inst([[0, 0, 5, 5], [0, 0, 40, 5]])])
    with pytest.raises(ValueError, match="ordered"):
        check([_inst([[5, 0, 1, 5]])])
    with pytest.raises(ValueError, match="image_size"):
        check([_inst([[0, 0, 1, 1]], size=(21, 30))])
    bad_label = _inst([[0, 0, 1, 1]])
    bad_label.labels = torch.tensor([2])
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        check([bad_label])


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
