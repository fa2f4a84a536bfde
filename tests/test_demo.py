from detforge.demo import run


def test_demo_runs_and_recovers_the_scene(tmp_path, capsys):
    stats = run(tmp_path, seed=3)
    assert (tmp_path / "demo.png").is_file()
    assert stats["recall@0.7"] == 1.0
    assert stats["kept_by_nms"] < stats["candidates"] / 10
    assert stats["mean_mask_iou"] > 0.85
    assert "detforge demo" in capsys.readouterr().out
