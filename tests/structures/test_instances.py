import pytest
import torch

from detforge.structures.image_list import ImageList
from detforge.structures.instances import Instances


def _inst(n: int = 4, **kw) -> Instances:
    boxes = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)
    return Instances((100, 200), boxes=boxes, labels=torch.arange(n), **kw)


def test_length_checks():
    with pytest.raises(ValueError, match=r"`labels` has 3 entries but `boxes` has 4"):
        Instances((10, 10), boxes=torch.zeros(4, 4), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"extras\['iou'\]"):
        _inst(4, extras={"iou": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"Tensor\[N, 4\]"):
        Instances((10, 10), boxes=torch.zeros(4, 5), labels=torch.zeros(4))


def test_declared_fields_only():
    inst = _inst()
    with pytest.raises(TypeError):
        Instances((1, 1), boxes=torch.zeros(0, 4), labels=torch.zeros(0), score=None)  # type: ignore[call-arg]
    assert inst.scores is None


def test_indexing_int_slice_mask_index():
    inst = _inst(4, scores=torch.tensor([0.1, 0.9, 0.5, 0.3]), extras={"e": torch.arange(4)})
    one = inst[1]
    assert isinstance(one, Instances) and len(one) == 1 and one.labels.tolist() == [1]
    assert inst[-1].labels.tolist() == [3]
    assert inst[1:3].labels.tolist() == [1, 2]
    keep = inst.scores > 0.4
    sel = inst[keep]
    assert sel.labels.tolist() == [1, 2] and sel.extras["e"].tolist() == [1, 2]
    assert inst[torch.tensor([3, 0])].labels.tolist() == [3, 0]
    assert inst[[2]].labels.tolist() == [2]
    with pytest.raises(IndexError, match="out of range"):
        inst[4]
    with pytest.raises(IndexError, match="bool mask"):
        inst[torch.tensor([True, False])]


def test_cat_and_to():
    a = _inst(2, scores=torch.rand(2), masks=torch.zeros(2, 100, 200, dtype=torch.bool))
    b = _inst(3, scores=torch.rand(3), masks=torch.ones(3, 100, 200, dtype=torch.bool))
    c = Instances.cat([a, b])
    assert len(c) == 5 and c.masks is not None and c.masks.shape == (5, 100, 200)
    assert c.scores is not None and torch.equal(c.scores, torch.cat([a.scores, b.scores]))
    with pytest.raises(ValueError, match="`scores` is None in item 1"):
        Instances.cat([a, _inst(1)])
    with pytest.raises(ValueError, match="image_size"):
        Instances.cat([a, Instances((5, 5), boxes=torch.zeros(0, 4), labels=torch.zeros(0))])
    moved = c.to("cpu")
    assert moved is not c and moved.boxes.device.type == "cpu"
    assert "num=5" in repr(c)


def test_empty_instances():
    e = Instances((10, 10), boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    assert len(e) == 0 and len(e[e.labels > 0]) == 0


def test_image_list_pads_and_keeps_sizes():
    imgs = [torch.rand(3, 50, 70), torch.rand(3, 64, 33)]
    il = ImageList.from_tensors(imgs, size_divisibility=32, pad_value=-1.0, with_mask=True)
    assert il.tensor.shape == (2, 3, 64, 96)
    assert il.image_sizes == [(50, 70), (64, 33)]
    torch.testing.assert_close(il[0], imgs[0])
    torch.testing.assert_close(il[1], imgs[1])
    assert (il.tensor[0, :, 50:, :] == -1).all() and (il.tensor[1, :, :, 33:] == -1).all()
    assert il.mask is not None
    assert il.mask[0, :50, :70].logical_not().all() and il.mask[0, 50:].all()
    assert len(il) == 2 and il.to("cpu").image_sizes == il.image_sizes


def test_image_list_single_and_gradients():
    x = torch.rand(3, 10, 10, requires_grad=True)
    y = torch.rand(3, 7, 12, requires_grad=True)
    il = ImageList.from_tensors([x, y], size_divisibility=8)
    assert il.tensor.shape == (2, 3, 16, 16)
    il.tensor.sum().backward()
    assert x.grad is not None and y.grad is not None
    single = ImageList.from_tensors([torch.rand(1, 5, 9)], size_divisibility=4)
    assert single.tensor.shape == (1, 1, 8, 12)


def test_image_list_channels_last():
    imgs = [torch.rand(3, 50, 70), torch.rand(3, 64, 33)]
    il = ImageList.from_tensors(imgs, size_divisibility=32, memory_format=torch.channels_last)
    assert il.tensor.is_contiguous(memory_format=torch.channels_last)
    plain = ImageList.from_tensors(imgs, size_divisibility=32)
    assert plain.tensor.is_contiguous()
    torch.testing.assert_close(il.tensor, plain.tensor, rtol=0, atol=0)


def test_image_list_errors():
    with pytest.raises(ValueError, match="empty"):
        ImageList.from_tensors([])
    with pytest.raises(ValueError, match="image 1 must be"):
        ImageList.from_tensors([torch.rand(3, 4, 4), torch.rand(4, 4)])
    with pytest.raises(ValueError, match="channels"):
        ImageList.from_tensors([torch.rand(3, 4, 4), torch.rand(1, 4, 4)])
