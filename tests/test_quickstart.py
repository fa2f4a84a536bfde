"""Manual tier: the whole quickstart (about 6-9 minutes on 2 CPU cores)."""

import pytest

from detforge.quickstart import run


@pytest.mark.slow
def test_quickstart_reaches_the_documented_ap(tmp_path):
    results = run(tmp_path, num_workers=1)
    assert results["bbox"]["AP"] >= 50.0 and results["segm"]["AP"] >= 50.0
    assert (tmp_path / "curves.png").is_file()
    assert len(list((tmp_path / "predictions").glob("*.jpg"))) == 8
