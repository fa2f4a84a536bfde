"""Two CPU processes under DistributedDataParallel train exactly like one process.

A global batch of two synthetic images is split one image per process (gloo). The gradients
averaged by DDP must equal the gradients of a single process that sees both images, and so must
the (mean) loss and RetinaNet's loss normaliser, also in a second forward after an SGD step: this
holds only if the foreground count behind the normaliser is the global one (summed over
processes, divided by their number), and if the EMA's starting value is in units of the
per-process batch. The model runs in float64 so that the comparison is not blurred by the
different summation orders of a batch of one and of two.

The images have the same size, a multiple of the model's size divisibility, so that no process
pads its image differently from the single-process batch (padding changes border features and
the GroupNorm statistics), and they hold different numbers of objects, so that the processes'
own foreground counts differ.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detforge.engine.launch import launch
from detforge.modeling.detectors.retinanet import RetinaNet
from detforge.modeling.zoo import retinanet_r18_fpn_tiny
from detforge.structures.instances import Instances

INIT = 100.0  # the single-process normaliser's start; a process of a P-way split starts at INIT/P
LR = 0.01
SIZE = (64, 96)


def _batch() -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Two images (different contents and object counts) with boxes and labels."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, *SIZE, generator=g) * 255 for _ in range(2)]
    boxes = [
        torch.tensor([[8.0, 6.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0], [20.0, 34.0, 44.0, 58.0]]),
        torch.tensor([[30.0, 10.0, 70.0, 50.0]]),
    ]
    labels = [torch.tensor([0, 2, 1]), torch.tensor([1])]
    for img, bx in zip(images, boxes, strict=True):
        for x1, y1, x2, y2 in bx.int().tolist():
            img[:, y1:y2, x1:x2] = img[:, y1:y2, x1:x2] * 0.3 + 150.0  # visible objects
    return images, boxes, labels


def _targets(boxes: list[Tensor], labels: list[Tensor]) -> list[Instances]:
    return [Instances(SIZE, boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]


def _mean_over_processes(x: Tensor) -> float:
    """``x`` averaged over the processes (the single-process loss); ``x`` without a group."""
    x = x.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x.item()


def _grad(p: Tensor) -> Tensor:
    assert p.grad is not None
    return p.grad.detach()


def _run(
    module: nn.Module, model: RetinaNet, images: list[Tensor], targets: list[Instances]
) -> list[dict]:
    """An SGD step of ``module`` (``model`` or its DDP wrapper), then a second forward.

    Returns the loss, the normaliser and the gradients of the first forward, and the loss and
    normaliser of the second (which check the updated weights and the EMA's second update).
    """
    losses = module(images, targets)
    total = losses["loss_cls"] + losses["loss_box"]
    total.backward()
    grads = {n: _grad(p).clone() for n, p in model.named_parameters()}
    first = {"loss": _mean_over_processes(total), "normalizer": model.loss_normalizer}
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(LR * _grad(p))
        losses = module(images, targets)
    total = losses["loss_cls"] + losses["loss_box"]
    second = {"loss": _mean_over_processes(total), "normalizer": model.loss_normalizer}
    return [first | {"grads": grads}, second]


def _model() -> RetinaNet:
    """The model under test, in float64 so that summation order is invisible (p6/p7 gradients
    are sums of many cancelling terms: in float32 they differ by ~1e-3 relative)."""
    torch.manual_seed(0)
    return retinanet_r18_fpn_tiny(num_classes=3).double().train()


def _weights_sum(model: nn.Module) -> float:
    return sum(float(p.detach().sum()) for p in model.parameters())


def _ddp_worker() -> dict:
    torch.set_num_threads(1)  # two processes on two cores
    rank, world = dist.get_rank(), dist.get_world_size()
    model = _model()  # the same seed everywhere; DDP also broadcasts rank 0's weights
    model.loss_normalizer = INIT / world
    ddp = DistributedDataParallel(model)
    start = _weights_sum(model)
    images, boxes, labels = _batch()
    mine = slice(rank, None, world)
    records = _run(ddp, model, images[mine], _targets(boxes[mine], labels[mine]))
    if rank != 0:  # rank 0 reports the gradients; DDP gave every rank the same
        records[0].pop("grads")
    return {"records": records, "start_weights_sum": start}


def test_two_process_ddp_matches_one_process():
    images, boxes, labels = _batch()
    # The images' own foreground counts differ, so a process-local normaliser would differ.
    probe = _model()
    probe.loss_normalizer_momentum = 0.0  # then the normaliser is the last forward's count
    fg: list[float] = []
    with torch.no_grad():
        for i in range(2):
            probe([images[i]], _targets([boxes[i]], [labels[i]]))
            fg.append(probe.loss_normalizer)
    assert fg[0] != fg[1], fg

    model = _model()
    model.loss_normalizer = INIT
    start = _weights_sum(model)
    reference = _run(model, model, images, _targets(boxes, labels))
    results = launch(_ddp_worker, num_processes=2, backend="gloo")
    assert [r["start_weights_sum"] for r in results] == [start, start]  # identical weights
    per_rank = [r["records"] for r in results]

    expected_normalizer = INIT
    for step, ref in enumerate(reference):
        expected_normalizer = 0.9 * expected_normalizer + 0.1 * (fg[0] + fg[1])
        assert ref["normalizer"] == pytest.approx(expected_normalizer, rel=1e-12)
        for rank in range(2):
            got = per_rank[rank][step]
            assert got["normalizer"] == pytest.approx(ref["normalizer"] / 2, rel=1e-12)
            assert got["loss"] == pytest.approx(ref["loss"], rel=1e-9), (step, rank)
    ddp_grads = per_rank[0][0]["grads"]
    assert ddp_grads.keys() == reference[0]["grads"].keys()
    for name, want in reference[0]["grads"].items():
        assert want.abs().max() > 0, name
        torch.testing.assert_close(
            ddp_grads[name], want, rtol=1e-4, atol=1e-6 * want.abs().max().item(), msg=name
        )
