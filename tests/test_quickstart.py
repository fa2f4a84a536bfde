"""Manual tier: the whole quickstart (about 5.5 minutes on 2 idle CPU cores)."""

import pytest

from detforge.quickstart import run


@pytest.mark.slow
def test_quickstart_reaches_the_documented_ap(tmp_path):
    results = run(tmp_path, num_workers=1)
    assert results["bbox"]["AP"] >= 60.0 and results["segm"]["AP"] >= 60.0
    assert (tmp_path / "curves.png").is_file()
    assert len(list((tmp_path / "predictions").glob("*.jpg"))) == 8
