"""The fused focal loss equals the elementwise reference (loss and gradient) on every kind of
row: positives, background, ignored; any alpha/gamma; chunk boundaries anywhere."""

import pytest
import torch
import torch.nn.functional as F

from detforge.ops.focal_loss import sigmoid_focal_loss_from_labels
from detforge.ops.losses import sigmoid_focal_loss


def _reference(logits, labels, alpha, gamma):
    k = logits.shape[1]
    valid = labels >= 0
    target = F.one_hot(labels[valid], k + 1)[:, :-1].to(logits.dtype)
    return sigmoid_focal_loss(logits[valid], target, alpha=alpha, gamma=gamma, reduction="sum")


@pytest.mark.parametrize(
    ("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.25, 0.0), (0.5, 0.5), (0.9, 1.0), (0.25, 3.5)]
)
@pytest.mark.parametrize("chunk_rows", [1, 7, 4096])
def test_matches_reference_loss_and_gradient(alpha, gamma, chunk_rows):
    gen = torch.Generator().manual_seed(0)
    m, k = 53, 6
    logits = (torch.randn(m, k, generator=gen, dtype=torch.float64) * 4).requires_grad_(True)
    labels = torch.randint(-1, k + 1, (m,), generator=gen)
    labels[:3] = torch.tensor([-1, k, 0])
    got = sigmoid_focal_loss_from_labels(
        logits, labels, alpha=alpha, gamma=gamma, chunk_rows=chunk_rows
    )
    ref = _reference(logits, labels, alpha, gamma)
    torch.testing.assert_close(got, ref)
    (g_got,) = torch.autograd.grad(got * 3.0, logits)
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    torch.testing.assert_close(g_got, g_ref)
    assert (g_got[labels < 0] == 0).all()


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[100.0, -100.0], [0.0, 30.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    for gamma in (0.5, 2.0):
        loss = sigmoid_focal_loss_from_labels(logits, labels, gamma=gamma)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_float32_and_no_grad():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1000, 80, generator=gen)
    labels = torch.randint(-1, 81, (1000,), generator=gen)
    got = sigmoid_focal_loss_from_labels(logits, labels)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, _reference(logits, labels, 0.25, 2.0), rtol=1e-5, atol=1e-3)


def test_errors_name_the_argument():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="`logits` must be"):
        sigmoid_focal_loss_from_labels(x[0], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels` must be int64"):
        sigmoid_focal_loss_from_labels(x, torch.zeros(4))
    with pytest.raises(ValueError, match="`gamma`"):
        sigmoid_focal_loss_from_labels(x, torch.zeros(4, dtype=torch.long), gamma=-1)
    with pytest.raises(ValueError, match="`chunk_rows`"):
        sigmoid_focal_loss_from_labels(x, torch.zeros(4, dtype=torch.long), chunk_rows=0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3000, 80, generator=gen)
    labels = torch.randint(-1, 81, (3000,), generator=gen)
    cpu_x = logits.clone().requires_grad_(True)
    gpu_x = logits.cuda().requires_grad_(True)
    cpu = sigmoid_focal_loss_from_labels(cpu_x, labels)
    gpu = sigmoid_focal_loss_from_labels(gpu_x, labels.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-3)
    (g_cpu,) = torch.autograd.grad(cpu, cpu_x)
    (g_gpu,) = torch.autograd.grad(gpu, gpu_x)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-4, atol=1e-6)
