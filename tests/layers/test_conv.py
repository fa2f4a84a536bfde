"""Conv2dNormAct: a FrozenBN after the conv is folded into the conv's weight and bias, which
must compute exactly what conv-then-norm computes, gradients included."""

import pytest
import torch
from torch import nn

from detforge.layers.conv import Conv2dNormAct
from detforge.layers.norms import FrozenBatchNorm2d


def _frozen(c: int) -> FrozenBatchNorm2d:
    norm = FrozenBatchNorm2d(c)
    norm.weight.uniform_(0.5, 2.0)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.1, 3.0)
    return norm


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_folded_frozen_bn_matches_conv_then_norm(bias, fmt):
    torch.manual_seed(0)
    conv = Conv2dNormAct(
        6, 5, 3, stride=2, bias=bias, norm=_frozen(5), activation=nn.ReLU(inplace=False)
    ).double()
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64).contiguous(memory_format=fmt)
    x.requires_grad_(True)

    out = conv(x)
    ref = torch.relu(conv.norm(conv._conv_forward(x, conv.weight, conv.bias)))
    torch.testing.assert_close(out, ref)

    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight])
    refs = torch.autograd.grad(ref.square().sum(), [x, conv.weight])
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r)
    # The norm stays frozen: its terms are buffers, not parameters.
    assert [n for n, _ in conv.named_parameters()] == ["weight"] + (["bias"] if bias else [])


def test_other_norms_are_applied_after_the_conv():
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 4)
    conv = Conv2dNormAct(3, 4, 1, norm=norm)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(conv(x), norm(conv._conv_forward(x, conv.weight, conv.bias)))
