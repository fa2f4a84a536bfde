"""Pascal VOC loading: the BCCD dataset, labelImg layouts, bad data and the seeded split."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from detforge.data.datasets.voc import VOC_CLASSES, load_voc, split_records
from detforge.data.errors import DataError, DataReport


def _bccd(shared: Path) -> Path:
    return shared / "bccd" / "BCCD"


def test_bccd_all_xml(shared_datasets: Path) -> None:
    report = DataReport()
    records = load_voc(_bccd(shared_datasets), report=report)
    assert len(records) == 364
    # 4888 objects in the files, minus the two zero-area boxes.
    assert sum(len(r["annotations"]) for r in records) == 4886
    assert report.counts == {"empty_bbox": 2}
    named = sorted(Path(e.path or "").name for e in report.examples("empty_bbox"))
    assert named == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert all(e.field == "bndbox" for e in report.examples("empty_bbox"))
    first = records[0]
    assert first["image_id"] == "BloodImage_00000"
    assert first["file_name"].endswith("JPEGImages/BloodImage_00000.jpg")
    assert (first["height"], first["width"]) == (480, 640)
    # BloodImage_00000.xml, object 0: WBC, xmin 260, ymin 177, xmax 491, ymax 376.
    # Classes sorted: Platelets 0, RBC 1, WBC 2.
    assert first["annotations"][0] == {
        "bbox": [259.0, 176.0, 491.0, 376.0],
        "category_id": 2,
        "iscrowd": 0,
        "difficult": False,
        "truncated": False,
    }
    labels = [a["category_id"] for r in records for a in r["annotations"]]
    # README counts: Platelets 361, RBC 4155 (two dropped), WBC 372.
    assert [labels.count(i) for i in range(3)] == [361, 4153, 372]
    assert not any(a["difficult"] for r in records for a in r["annotations"])


@pytest.mark.parametrize(
    ("split", "n"), [("train", 205), ("val", 87), ("trainval", 292), ("test", 72)]
)
def test_bccd_splits(shared_datasets: Path, split: str, n: int) -> None:
    root = _bccd(shared_datasets)
    records = load_voc(root, split)
    listed = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    assert len(records) == n and [r["image_id"] for r in records] == listed


def test_bccd_strict_names_the_file(shared_datasets: Path) -> None:
    with pytest.raises(DataError, match=r"BloodImage_00338\.xml: image BloodImage_00338: "
                       r"annotation \d+: field `bndbox`: zero-area box"):  # fmt: skip
        load_voc(_bccd(shared_datasets), "val", strict=True)


def test_bccd_given_class_names_reports_unknown(shared_datasets: Path) -> None:
    report = DataReport()
    records = load_voc(_bccd(shared_datasets), "test", class_names=("WBC", "RBC"), report=report)
    labels = {a["category_id"] for r in records for a in r["annotations"]}
    assert labels == {0, 1}
    assert set(report.counts) == {"unknown_class"}
    assert "class 'Platelets' is not in class_names" in str(report.examples("unknown_class")[0])


# ---------------------------------------------------------------------------------------------
# Synthetic folders


def _xml(filename: str, objects: list[tuple[str, list[int | str]]], size: bool = True) -> str:
    size_xml = "<size><width>40</width><height>30</height><depth>3</depth></size>" if size else ""
    objs = "".join(
        f"<object><name>{name}</name><truncated>1</truncated><difficult>1</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        "</bndbox></object>"
        for name, b in objects
    )
    return f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def _labelimg(tmp_path: Path) -> Path:
    """labels/*.xml next to pics/*.png; one XML names a file that is not there (stem lookup)."""
    (tmp_path / "labels").mkdir()
    (tmp_path / "pics").mkdir()
    for stem in ("b", "a"):
        Image.new("RGB", (40, 30)).save(tmp_path / "pics" / f"{stem}.png")
    (tmp_path / "labels" / "a.xml").write_text(_xml("a.png", [("dog", [1, 1, 10, 20])]))
    (tmp_path / "labels" / "b.xml").write_text(_xml("b.jpg", [("cat", [5, 6, 40, 30])]))
    return tmp_path


def test_labelimg_layout(tmp_path: Path) -> None:
    root = _labelimg(tmp_path)
    records = load_voc(root, annotations_dir="labels", images_dir="pics", strict=True)
    assert [r["image_id"] for r in records] == ["a", "b"]
    assert [Path(r["file_name"]).name for r in records] == ["a.png", "b.png"]
    a, b = (r["annotations"][0] for r in records)
    assert a["bbox"] == [0.0, 0.0, 10.0, 20.0] and a["category_id"] == 1  # cat 0, dog 1
    assert b["bbox"] == [4.0, 5.0, 40.0, 30.0] and b["category_id"] == 0
    assert a["difficult"] is True and a["truncated"] is True


def test_xml_beside_images(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "x.jpg")
    (tmp_path / "x.xml").write_text(_xml("x.jpg", [("dog", [1, 1, 10, 20])]))
    (record,) = load_voc(tmp_path, strict=True)
    assert record["file_name"] == str(tmp_path / "x.jpg")


def _problem(tmp_path: Path, xml: str, *, image: bool = True) -> tuple[list[dict], DataReport]:
    if image:
        Image.new("RGB", (40, 30)).save(tmp_path / "im.jpg")
    (tmp_path / "im.xml").write_text(xml)
    report = DataReport()
    return load_voc(tmp_path, class_names=("dog",), report=report), report


def test_malformed_xml(tmp_path: Path) -> None:
    xml = "<annotation>\n<size>\n<width>4</wid>\n</size></annotation>"
    records, report = _problem(tmp_path, xml)
    assert records == [] and report.counts == {"xml_syntax": 1}
    with pytest.raises(DataError, match=r"im\.xml: line 3, column \d+: malformed XML"):
        load_voc(tmp_path, strict=True)


def test_missing_size_falls_back_to_image_header(tmp_path: Path) -> None:
    (record,), report = _problem(tmp_path, _xml("im.jpg", [("dog", [1, 1, 5, 5])], size=False))
    assert (record["height"], record["width"]) == (30, 40)
    assert report.counts == {"missing_size": 1}
    assert "field `size`" in str(report.examples("missing_size")[0])


def test_missing_image(tmp_path: Path) -> None:
    records, report = _problem(tmp_path, _xml("im.jpg", [("dog", [1, 1, 5, 5])]), image=False)
    assert records == [] and report.counts == {"missing_image": 1}
    with pytest.raises(DataError, match=r"im\.xml: image im: field `filename`: no image file"):
        load_voc(tmp_path, strict=True)


def test_box_problems(tmp_path: Path) -> None:
    objects: list[tuple[str, list[int | str]]] = [
        ("dog", [1, 1, 50, 20]),  # x2 = 50 > 40: clipped, kept
        ("dog", [5, 5, 5, 9]),  # zero width in the file
        ("dog", [9, 5, 3, 9]),  # xmax < xmin
        ("dog", ["a", 5, 3, 9]),  # not a number
        ("cow", [1, 1, 5, 5]),  # unknown class
    ]
    (record,), report = _problem(tmp_path, _xml("im.jpg", objects))
    assert [a["bbox"] for a in record["annotations"]] == [[0.0, 0.0, 40.0, 20.0]]
    assert report.counts == {
        "bbox_outside_image": 1,
        "empty_bbox": 1,
        "invalid_bbox": 2,
        "unknown_class": 1,
    }
    assert "annotation 1: field `bndbox`" in str(report.examples("empty_bbox")[0])


def test_split_file_lists_missing_xml(tmp_path: Path) -> None:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "Annotations" / "a.xml").write_text(_xml("a.jpg", [("dog", [1, 1, 5, 5])]))
    (tmp_path / "ImageSets/Main/train.txt").write_text("a\nghost\n")
    report = DataReport()
    records = load_voc(tmp_path, "train", report=report)
    assert [r["image_id"] for r in records] == ["a"]
    assert report.counts == {"missing_annotation_file": 1}
    with pytest.raises(FileNotFoundError, match="val.txt"):
        load_voc(tmp_path, "val")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset folder"):
        load_voc(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no \\*.xml files"):
        load_voc(tmp_path)
    with pytest.raises(ValueError, match="class_names"):
        load_voc(tmp_path, class_names=())
    with pytest.raises(FileNotFoundError, match="images_dir"):
        load_voc(tmp_path, images_dir="missing")


def test_voc_classes() -> None:
    assert len(VOC_CLASSES) == 20 == len(set(VOC_CLASSES))
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"


def test_split_records() -> None:
    records = [{"image_id": i} for i in range(10)]
    train, val = split_records(records, 0.3, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert sorted(r["image_id"] for r in train + val) == list(range(10))
    assert [r["image_id"] for r in val] == sorted(r["image_id"] for r in val)  # input order
    assert split_records(records, 0.3, seed=1) == (train, val)
    splits = {
        tuple(r["image_id"] for r in split_records(records, 0.3, seed=s)[1]) for s in range(5)
    }
    assert len(splits) > 1  # the seed matters
    assert split_records(records, 0.0, seed=0) == (records, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_records(records, 1.5, seed=0)
    with pytest.raises(TypeError, match="seed"):
        split_records(records, 0.5, seed=None)  # type: ignore[arg-type]
