import pytest
import torch

from detforge.modeling.sampling import subsample_labels


def _labels(num_pos: int, num_neg: int, num_ignore: int, bg_label: int = 0) -> torch.Tensor:
    labels = torch.cat(
        [
            torch.ones(num_pos, dtype=torch.int64),
            torch.full((num_neg,), bg_label, dtype=torch.int64),
            torch.full((num_ignore,), -1, dtype=torch.int64),
        ]
    )
    return labels[torch.randperm(labels.numel())]


def _check(labels, pos, neg, bg_label=0):
    assert pos.dtype == torch.int64 and neg.dtype == torch.int64
    assert len(set(pos.tolist())) == pos.numel() and len(set(neg.tolist())) == neg.numel()
    assert bool(((labels[pos] != bg_label) & (labels[pos] != -1)).all())
    assert bool((labels[neg] == bg_label).all())


def test_plentiful_positives_are_capped():
    labels = _labels(200, 300, 50)
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert (pos.numel(), neg.numel()) == (128, 128)
    _check(labels, pos, neg)


def test_scarce_positives_filled_with_negatives():
    labels = _labels(10, 300, 50)
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert (pos.numel(), neg.numel()) == (10, 246)
    _check(labels, pos, neg)
    assert sorted(pos.tolist()) == (labels == 1).nonzero().flatten().tolist()


def test_scarce_everything_returns_all_labelled():
    labels = _labels(3, 4, 20)
    pos, neg = subsample_labels(labels, 512, 0.25, 0)
    assert sorted(pos.tolist()) == (labels == 1).nonzero().flatten().tolist()
    assert sorted(neg.tolist()) == (labels == 0).nonzero().flatten().tolist()


def test_positive_count_is_truncated_not_rounded():
    labels = _labels(50, 50, 0)
    pos, neg = subsample_labels(labels, 10, 0.25, 0)  # int(2.5) = 2
    assert (pos.numel(), neg.numel()) == (2, 8)


def test_ignore_labels_never_sampled():
    labels = _labels(5, 5, 1000)
    for _ in range(5):
        pos, neg = subsample_labels(labels, 1000, 0.5, 0)
        assert bool((labels[torch.cat([pos, neg])] != -1).all())
        assert pos.numel() + neg.numel() == 10


def test_fast_rcnn_style_background_label():
    # classes 0..K-1 are foreground, K = 3 is background
    labels = torch.tensor([0, 3, 1, -1, 3, 2, 3, 0])
    pos, neg = subsample_labels(labels, 8, 0.5, 3)
    assert sorted(pos.tolist()) == [0, 2, 5, 7]
    assert sorted(neg.tolist()) == [1, 4, 6]


def test_deterministic_with_generator():
    labels = _labels(40, 400, 40)
    runs = []
    for seed in (7, 7, 8):
        g = torch.Generator().manual_seed(seed)
        runs.append(subsample_labels(labels, 64, 0.25, 0, generator=g))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_global_rng_consumption_matches_detectron2_order():
    # positives are permuted first, then negatives, each with one randperm over all candidates
    labels = _labels(20, 60, 10)
    torch.manual_seed(3)
    pos, neg = subsample_labels(labels, 16, 0.25, 0)
    torch.manual_seed(3)
    positives = (labels == 1).nonzero().flatten()
    negatives = (labels == 0).nonzero().flatten()
    assert torch.equal(pos, positives[torch.randperm(20)[:4]])
    assert torch.equal(neg, negatives[torch.randperm(60)[:12]])


def test_zero_samples_and_empty_labels():
    pos, neg = subsample_labels(_labels(5, 5, 0), 0, 0.5, 0)
    assert pos.numel() == 0 and neg.numel() == 0
    pos, neg = subsample_labels(torch.zeros(0, dtype=torch.int64), 10, 0.5, 0)
    assert pos.numel() == 0 and neg.numel() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"`labels` must have shape \[N\]"):
        subsample_labels(torch.zeros(2, 3, dtype=torch.int64), 4, 0.5, 0)
    with pytest.raises(TypeError, match="integer"):
        subsample_labels(torch.zeros(4), 4, 0.5, 0)
    with pytest.raises(ValueError, match="positive_fraction"):
        subsample_labels(torch.zeros(4, dtype=torch.int64), 4, 1.5, 0)
    with pytest.raises(ValueError, match="num_samples"):
        subsample_labels(torch.zeros(4, dtype=torch.int64), -1, 0.5, 0)
    with pytest.raises(ValueError, match="bg_label"):
        subsample_labels(torch.zeros(4, dtype=torch.int64), 4, 0.5, -1)
