import pytest
import torch

from detforge.modeling.detectors.detector_io import (
    DetectorIO,
    check_targets,
    detector_postprocess,
    preprocess_images,
)
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


# --------------------------------------------------------------------------- DetectorIO


class _Echo(DetectorIO):
    """A detector without a network: its detections are one box per image, the whole image."""

    def forward(self, images, targets=None, *, original_sizes=None):
        batch, gt, sizes = self.prepare_inputs(images, targets, original_sizes)
        if self.training:
            return {"batch": batch, "targets": gt}
        dets = [
            Instances((h, w), boxes=torch.tensor([[0.0, 0.0, w, h]]), labels=torch.tensor([0]))
            for h, w in batch.image_sizes
        ]
        return self.postprocess(dets, sizes)


def _echo(**kw) -> _Echo:
    args = {
        "num_classes": 2,
        "pixel_mean": [100.0, 110.0, 120.0],
        "pixel_std": [2.0, 1.0, 4.0],
        "input_format": "RGB",
        "size_divisibility": 32,
        "channels_last": True,
        **kw,
    }
    return _Echo(**args)


def test_detector_io_buffers_are_the_models_own_and_not_saved():
    model = _echo()
    assert [n for n, _ in model.named_buffers()] == ["pixel_mean", "pixel_std"]
    assert model.state_dict() == {}  # checkpoints never held the statistics
    assert model.pixel_mean.shape == (3, 1, 1) and model.pixel_mean.dtype == torch.float32
    assert model.device == torch.device("cpu")
    assert (model.input_format, model.size_divisibility, model.num_classes) == ("RGB", 32, 2)


def test_detector_io_normalises_pads_and_lays_out():
    imgs = [torch.full((3, 20, 30), 120, dtype=torch.uint8), torch.zeros(3, 33, 10)]
    model = _echo().train()
    out = model(imgs, [_inst([[0, 0, 30, 20]]), _inst([], size=(33, 10))])
    batch = out["batch"]
    assert batch.tensor.shape == (2, 3, 64, 32) and batch.image_sizes == [(20, 30), (33, 10)]
    assert batch.tensor[0, :, 0, 0].tolist() == [10.0, 10.0, 0.0]
    assert batch.tensor.is_contiguous(memory_format=torch.channels_last)
    assert [len(t) for t in out["targets"]] == [1, 0]
    model.channels_last = False  # a plain attribute: switches the layout
    batch = model(imgs, [_inst([[0, 0, 30, 20]]), _inst([], size=(33, 10))])["batch"]
    assert batch.tensor.is_contiguous()


def test_detector_io_maps_to_original_sizes():
    model = _echo().eval()
    imgs = [torch.zeros(3, 20, 30), torch.zeros(3, 10, 10)]
    out = model(imgs, original_sizes=[(40, 60), (10, 10)])
    assert [d.image_size for d in out] == [(40, 60), (10, 10)]
    assert out[0].boxes.tolist() == [[0.0, 0.0, 60.0, 40.0]]
    assert model(imgs)[0].image_size == (20, 30)  # default: the input sizes
    with pytest.raises(ValueError, match="original_sizes"):
        model(imgs, original_sizes=[(40, 60)])
    with pytest.raises(ValueError, match=r"original_sizes\[1\]"):
        model(imgs, original_sizes=[(40, 60), (0, 10)])


def test_detector_io_checks_targets_in_training_only():
    model = _echo()
    imgs = [torch.zeros(3, 20, 30)]
    with pytest.raises(ValueError, match="_Echo.forward: `targets` are required"):
        model.train()(imgs)
    model.eval()(imgs, [_inst([[0, 0, 90, 90]])])  # eval ignores targets


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pixel_std": [1.0, 0.0, 1.0]}, ValueError, "pixel_std"),
        ({"pixel_std": [1.0, 1.0]}, ValueError, "pixel_mean` has 3 channels"),
        ({"pixel_mean": [float("nan"), 0.0, 0.0]}, ValueError, "pixel_mean"),
        ({"pixel_mean": "abc"}, TypeError, "pixel_mean"),
        ({"input_format": "YUV"}, ValueError, "input_format"),
        ({"size_divisibility": -1}, ValueError, "size_divisibility"),
        ({"num_classes": 0}, ValueError, "num_classes"),
    ],
)
def test_detector_io_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=f"_Echo: `{match}"):
        _echo(**kwargs)


def test_target_values_are_read_on_the_cpu_only():
    # Targets on an accelerator are not read back (no device synchronisation in the training
    # step): their structure is checked, their values are not. The meta device stands in.
    sizes = [(20, 30)]
    bad = Instances(
        (20, 30), boxes=torch.tensor([[5.0, 0, 1, 5]]), labels=torch.tensor([7])
    )  # disordered box, label out of range
    with pytest.raises(ValueError, match="outside"):
        check_targets([bad], sizes, num_classes=2, owner="M")
    on_device = bad.to("meta")
    assert check_targets([on_device], sizes, num_classes=2, owner="M") == [on_device]
    with pytest.raises(ValueError, match="image_size"):
        check_targets([on_device], [(21, 30)], num_classes=2, owner="M")
    floats = Instances((20, 30), boxes=torch.zeros(1, 4), labels=torch.zeros(1)).to("meta")
    with pytest.raises(ValueError, match="labels"):
        check_targets([floats], sizes, num_classes=2, owner="M")
