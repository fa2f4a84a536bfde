"""A training step runs its checks without host-device synchronisation.

Checks of tensor values read the values on the CPU only (``utils/checks.py:values_on_host``);
internal stages trust what the detector's edge checked. On a CPU-only machine the step is run
with ``HOST_DEVICE_TYPES`` emptied, so that every tensor counts as on an accelerator, and every
call that reads a tensor back to Python (``bool()``, ``.item()``, ``.tolist()``, ``int()``,
``float()``) is traced to the detforge function that made it. Only the algorithm's own reads
may remain: the reference kernels of the public ops and the ops' own argument checks (public
edges), the RPN's divergence guard and filter of non-finite or empty proposals and RetinaNet's
loss normaliser (both as in detectron2), and polygon rasterisation (host data).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import detforge
from detforge.modeling.zoo import build_model
from detforge.utils import checks

sys.path.insert(0, str(Path(__file__).parent))
from test_smoke import _batch  # noqa: E402

ROOT = Path(detforge.__file__).parent
READS = ("__bool__", "item", "tolist", "__int__", "__float__")
# Public ops called inside the step may read values for their algorithm (NMS offsets, RoIAlign
# adaptive sampling), not to validate: the pooler calls the implementations without checks.
ALLOWED_FILES = ("ops/nms.py", "ops/_reference/", "ops/roi_crop.py", "structures/masks.py")
ALLOWED_FUNCTIONS = {
    ("modeling/dense_heads/rpn.py", "find_top_proposals"),
    ("modeling/dense_heads/retina_outputs.py", "losses"),
}


def _caller() -> tuple[str, str] | None:
    """(file under detforge/, function) of the innermost detforge frame, skipping utils/checks.py
    (a shared check is charged to the function that called it)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if ROOT in path.parents and path.name != "checks.py":
            return path.relative_to(ROOT).as_posix(), frame.f_code.co_name
        frame = frame.f_back
    return None


@pytest.mark.parametrize("name", ["faster_rcnn_r18_fpn_tiny", "retinanet_r18_fpn_tiny"])
def test_training_step_checks_do_not_synchronise(name, monkeypatch):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).train()
    images, targets = _batch(with_masks=False)
    reads: Counter[tuple[str, str]] = Counter()

    def traced(method):
        def read(self, *args, **kwargs):
            site = _caller()
            if site is not None:
                reads[site] += 1
            return method(self, *args, **kwargs)

        return read

    monkeypatch.setattr(checks, "HOST_DEVICE_TYPES", ())
    for attr in READS:
        monkeypatch.setattr(torch.Tensor, attr, traced(getattr(torch.Tensor, attr)))
    losses = model(images, targets)
    monkeypatch.undo()

    assert all(torch.isfinite(v) for v in losses.values())
    unexpected = {
        site: n
        for site, n in reads.items()
        if not site[0].startswith(ALLOWED_FILES) and site not in ALLOWED_FUNCTIONS
    }
    assert not unexpected, f"reads of tensor values that synchronise a device step: {unexpected}"
    # The tracing sees the reads that remain (the test is not vacuous).
    expected = "find_top_proposals" if "rcnn" in name else "losses"
    assert any(function == expected for _, function in reads)
