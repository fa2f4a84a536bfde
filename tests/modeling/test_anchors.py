import math

import pytest
import torch

from detforge.modeling.anchors import AnchorGenerator, cell_anchors, grid_anchors

R2 = math.sqrt(2.0)
# size 32: area 1024; ratio 0.5 -> w = sqrt(2048) = 32 sqrt 2, h = 16 sqrt 2; ratio 2 swaps them
CELL_32 = [
    [-16 * R2, -8 * R2, 16 * R2, 8 * R2],
    [-16.0, -16.0, 16.0, 16.0],
    [-8 * R2, -16 * R2, 8 * R2, 16 * R2],
]


def _oracle(cell: list[list[float]], h: int, w: int, stride: int, offset: float) -> torch.Tensor:
    rows = []
    for y in range(h):
        for x in range(w):
            cx, cy = (x + offset) * stride, (y + offset) * stride
            for a in cell:
                rows.append([cx + a[0], cy + a[1], cx + a[2], cy + a[3]])
    return torch.tensor(rows, dtype=torch.float64)


def test_cell_anchors_hand_computed():
    cell = cell_anchors([32], [0.5, 1, 2])
    assert cell.dtype == torch.float32
    torch.testing.assert_close(cell, torch.tensor(CELL_32, dtype=torch.float32))
    # every anchor keeps the area 32**2 and the requested height / width
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    torch.testing.assert_close(w * h, torch.full((3,), 1024.0))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]))


def test_cell_anchors_size_major_order():
    cell = cell_anchors([16, 32], [1.0, 4.0])
    # rows: (16, 1), (16, 4), (32, 1), (32, 4)
    expected = torch.tensor(
        [[-8, -8, 8, 8], [-4, -16, 4, 16], [-16, -16, 16, 16], [-8, -32, 8, 32]],
        dtype=torch.float32,
    )
    torch.testing.assert_close(cell, expected)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_grid_positions_and_order_2x3(offset):
    gen = AnchorGenerator([32], [0.5, 1, 2], [8], offset=offset)
    (anchors,) = gen([torch.zeros(2, 4, 2, 3)])
    assert anchors.shape == (2 * 3 * 3, 4)
    assert anchors.dtype == torch.float32
    torch.testing.assert_close(
        anchors.double(), _oracle(CELL_32, 2, 3, 8, offset), rtol=0, atol=1e-5
    )
    # index (y * W + x) * A + a: location (y=1, x=2), square anchor
    c = 8 * offset
    expected = [16 + c - 16, 8 + c - 16, 16 + c + 16, 8 + c + 16]
    assert anchors[(1 * 3 + 2) * 3 + 1].tolist() == expected
    # first anchor of the first location is centred at (offset * stride, offset * stride)
    centre = (anchors[1, :2] + anchors[1, 2:]) / 2
    assert centre.tolist() == [c, c]


def test_offset_zero_exact_values():
    gen = AnchorGenerator([32], [1.0], [8])
    (anchors,) = gen([torch.zeros(1, 1, 2, 3)])
    expected = [
        [-16, -16, 16, 16],
        [-8, -16, 24, 16],
        [0, -16, 32, 16],
        [-16, -8, 16, 24],
        [-8, -8, 24, 24],
        [0, -8, 32, 24],
    ]
    assert anchors.tolist() == expected


def test_multiple_levels_broadcast_and_counts():
    gen = AnchorGenerator([[32], [64]], [[0.5, 1.0, 2.0]], [8, 16], offset=0.5)
    feats = [torch.zeros(2, 8, 4, 6), torch.zeros(2, 8, 2, 3)]
    a0, a1 = gen(feats)
    assert gen.num_anchors_per_location() == [3, 3]
    assert a0.shape == (4 * 6 * 3, 4) and a1.shape == (2 * 3 * 3, 4)
    cell64 = [[2 * v for v in row] for row in CELL_32]
    torch.testing.assert_close(a1.double(), _oracle(cell64, 2, 3, 16, 0.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(a0.double(), _oracle(CELL_32, 4, 6, 8, 0.5), rtol=0, atol=1e-5)


def test_shared_flat_lists_broadcast_to_every_level():
    gen = AnchorGenerator([32, 64], [1.0, 2.0], [8, 16, 32])
    assert gen.num_anchors_per_location() == [4, 4, 4]
    for cell in gen.cell_anchors():
        torch.testing.assert_close(cell, cell_anchors([32, 64], [1.0, 2.0]))


def test_retinanet_style_per_level_sizes():
    sizes = [[s * 2 ** (k / 3) for k in range(3)] for s in (32, 64, 128, 256, 512)]
    gen = AnchorGenerator(sizes, [[0.5, 1.0, 2.0]], [8, 16, 32, 64, 128])
    assert gen.num_anchors_per_location() == [9] * 5
    square = gen.cell_anchors()[1][1 * 3 + 1]  # size 64 * 2 ** (1 / 3), ratio 1
    half = 64 * 2 ** (1 / 3) / 2
    torch.testing.assert_close(square, torch.tensor([-half, -half, half, half]))


def test_buffers_not_persistent_and_follow_device_dtype():
    gen = AnchorGenerator([32], [1.0], [8])
    assert gen.state_dict() == {}
    assert len(list(gen.buffers())) == 1
    (a,) = gen([torch.zeros(1, 1, 0, 5)])
    assert a.shape == (0, 4)


def test_grid_anchors_function_matches_module():
    cell = cell_anchors([40.3], [0.5, 2.0])
    out = grid_anchors(cell, (3, 2), 16, 0.0)
    torch.testing.assert_close(out.double(), _oracle(cell.double().tolist(), 3, 2, 16, 0.0))


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"sizes": [[32], [64], [128]], "aspect_ratios": [1.0], "strides": [8, 16]}, ValueError),
        ({"sizes": [32], "aspect_ratios": [[1.0], [2.0]], "strides": [8, 16, 32]}, ValueError),
        ({"sizes": [32], "aspect_ratios": [1.0], "strides": [8], "offset": 1.0}, ValueError),
        ({"sizes": [32], "aspect_ratios": [1.0], "strides": [8], "offset": -0.1}, ValueError),
        ({"sizes": [-32], "aspect_ratios": [1.0], "strides": [8]}, ValueError),
        ({"sizes": [32], "aspect_ratios": [0.0], "strides": [8]}, ValueError),
        ({"sizes": [], "aspect_ratios": [1.0], "strides": [8]}, ValueError),
        ({"sizes": [32], "aspect_ratios": [1.0], "strides": []}, ValueError),
        ({"sizes": [32], "aspect_ratios": [1.0], "strides": [0]}, ValueError),
        ({"sizes": "32", "aspect_ratios": [1.0], "strides": [8]}, TypeError),
    ],
)
def test_bad_construction(kwargs, exc):
    with pytest.raises(exc, match="AnchorGenerator"):
        AnchorGenerator(**kwargs)


def test_wrong_number_of_feature_maps():
    gen = AnchorGenerator([32], [1.0], [8, 16])
    with pytest.raises(ValueError, match="2 levels"):
        gen([torch.zeros(1, 1, 4, 4)])
    with pytest.raises(TypeError, match="features"):
        gen(torch.zeros(1, 1, 4, 4))
