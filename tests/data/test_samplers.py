from itertools import islice

import numpy as np
import pytest
import torch

from detforge.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
    repeat_factors_from_category_frequency,
)


def _take(it, n):
    return list(islice(iter(it), n))


def test_training_sampler_shards_cover_each_epoch_once():
    size, world = 10, 2
    per_rank = [_take(TrainingSampler(size, seed=3, rank=r, world_size=world), 5) for r in range(2)]
    indices = sorted(i for keys in per_rank for _, i in keys)
    assert indices == list(range(size))
    assert [p for p, _ in per_rank[1]] == [0, 1, 2, 3, 4]
    # Shuffled, seeded, and different across epochs.
    a = [i for _, i in _take(TrainingSampler(size, seed=3, rank=0, world_size=1), 20)]
    b = [i for _, i in _take(TrainingSampler(size, seed=3, rank=0, world_size=1), 20)]
    assert a == b and a[:10] != list(range(10)) and a[:10] != a[10:]
    assert sorted(a[10:]) == list(range(10))


def test_training_sampler_resumes_exactly():
    full = _take(TrainingSampler(7, seed=1, rank=1, world_size=3), 30)
    resumed = _take(TrainingSampler(7, seed=1, rank=1, world_size=3, start=13), 17)
    assert resumed == full[13:]


def test_training_sampler_no_shuffle_and_errors():
    keys = _take(TrainingSampler(3, shuffle=False, rank=0, world_size=1), 7)
    assert [i for _, i in keys] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="rank"):
        TrainingSampler(3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="size"):
        TrainingSampler(0)


def test_inference_sampler_contiguous_shards():
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len(InferenceSampler(2, rank=2, world_size=3)) == 0


def test_repeat_factors():
    # Category 0 in every record, category 1 in 1 of 4 records.
    cats = [[0], [0], [0], [0, 1]]
    f = repeat_factors_from_category_frequency(cats, threshold=1.0)
    assert f.tolist() == pytest.approx([1.0, 1.0, 1.0, 2.0])
    assert repeat_factors_from_category_frequency([[]], 0.5).tolist() == [1.0]


def test_repeat_factor_sampler_frequency_and_resume():
    factors = torch.tensor([1.0, 1.0, 3.5])
    s = RepeatFactorTrainingSampler(factors, seed=0, rank=0, world_size=1)
    idx = np.array([i for _, i in _take(s, 5500)])
    counts = np.bincount(idx, minlength=3) / len(idx)
    assert counts == pytest.approx([1 / 5.5, 1 / 5.5, 3.5 / 5.5], abs=0.02)
    full = _take(RepeatFactorTrainingSampler(factors, seed=2, rank=0, world_size=2), 40)
    resumed = _take(
        RepeatFactorTrainingSampler(factors, seed=2, rank=0, world_size=2, start=25), 15
    )
    assert resumed == full[25:]


def test_grouped_batches_are_homogeneous():
    groups = [0, 1] * 10
    sampler = TrainingSampler(20, seed=0, rank=0, world_size=1)
    batches = _take(GroupedBatchSampler(sampler, groups, 4), 10)
    for batch in batches:
        assert len(batch) == 4 and len({groups[i] for _, i in batch}) == 1
