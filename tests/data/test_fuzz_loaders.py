"""Property-based fuzzing of the COCO and VOC loaders with hypothesis.

Random mutations of a small valid file (values replaced by values of any JSON type, NaN, inf,
huge or negative numbers, strings where numbers go, nested containers; fields removed, wrapped,
duplicated; the text cut short) must give either records whose boxes are valid, or a
``DataError``: no other exception, in lenient and in strict mode. ``derandomize=True`` makes
every run test the same examples, so CI is reproducible; ``database=None`` keeps hypothesis from
writing a ``.hypothesis`` folder into the checkout.
"""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from detforge.data.datasets.coco import load_coco_json, load_coco_metadata
from detforge.data.datasets.voc import load_voc
from detforge.data.errors import DataError, DataReport

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    # The autouse RNG-seeding fixture of conftest.py is function-scoped; it is harmless here.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

COCO_KEYS = (
    "id", "image_id", "category_id", "bbox", "segmentation", "size", "counts", "keypoints",
    "iscrowd", "area", "file_name", "height", "width", "name", "skeleton", "images",
    "annotations", "categories",
)  # fmt: skip
ODD_NUMBERS = (
    0, -1, 1, 2, 2**31, 2**63, 10**400, -(10**400), 0.5, -0.0, 1e308, -1e308, 5e-324,
    math.nan, math.inf, -math.inf,
)  # fmt: skip
ODD_STRINGS = ("", "1", "3", "nan", "inf", "x" * 300, "hb0", "h", "../1.png", "1.png", "\x00")

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.sampled_from(ODD_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=6),
)
json_values = st.recursive(
    leaves,
    lambda kids: (
        st.lists(kids, max_size=5)
        | st.dictionaries(st.sampled_from(COCO_KEYS) | st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
)

# ---------------------------------------------------------------------------------------------
# COCO


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode()}


def _valid_coco() -> dict[str, Any]:
    blob = np.zeros((20, 30), dtype=bool)
    blob[5:12, 8:20] = True
    return {
        "images": [
            {"id": 1, "file_name": "1.png", "height": 20, "width": 30},
            {"id": 2, "file_name": "2.png", "height": 16, "width": 16},
        ],
        "categories": [
            {"id": 1, "name": "person", "keypoints": ["a", "b"], "skeleton": [[1, 2]]},
            {"id": 7, "name": "ball"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 5], "iscrowd": 0,
             "area": 50.0, "keypoints": [3, 4, 2, 9, 5, 1],
             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [8, 5, 12, 7], "iscrowd": 0,
             "segmentation": _rle(blob)},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 16, 4], "iscrowd": 1,
             "segmentation": {"size": [16, 16], "counts": [0] + [4, 12] * 16}},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [1.5, 2.5, 3, 4]},
        ],
    }  # fmt: skip


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every position in a JSON tree, as key/index tuples (the root is ``()``)."""
    yield prefix
    if isinstance(node, (dict, list)):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            yield from _paths(child, (*prefix, key))


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _odd_numbers(node: int | float) -> st.SearchStrategy[Any]:
    """Mutations of a number: its negation, a huge multiple, a fraction, as a str or nested."""
    try:
        huge: Any = node * 1e300
        half: Any = node + 0.5
    except OverflowError:  # an int beyond float range already
        huge, half = node * 10**300, node + 1
    return st.sampled_from([-node, huge, half, str(node), [node], {"v": node}])


@st.composite
def mutated_coco(draw: st.DrawFn) -> dict[str, Any]:
    data = _valid_coco()
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        paths += 3 * [p for p in paths if p[:1] == ("annotations",)]  # most of the fuzzing there
        path = draw(st.sampled_from(paths))
        node = _get(data, path)
        ops = ["replace", "wrap_list", "wrap_dict", "stringify", "empty"]
        if path:
            ops += ["delete", "duplicate"]
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            ops += ["number"] * 3
        op = draw(st.sampled_from(ops))
        if op == "replace":
            new = draw(json_values)
        elif op == "wrap_list":
            new = [node]
        elif op == "wrap_dict":
            new = {"id": node}
        elif op == "stringify":
            new = json.dumps(node, allow_nan=True)
        elif op == "empty":
            new = type(node)() if isinstance(node, (dict, list, str)) else None
        elif op == "number":
            new = draw(_odd_numbers(node) | st.sampled_from(ODD_NUMBERS))
        if not path:
            data = new
            continue
        parent, key = _get(data, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "duplicate":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(node))
            else:
                parent[draw(st.sampled_from(COCO_KEYS))] = copy.deepcopy(node)
        else:
            parent[key] = new
    return data


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_images")
    Image.new("RGB", (30, 20)).save(root / "1.png")
    Image.new("RGB", (16, 16)).save(root / "2.png")
    return root


def _check_box(box: Any, height: Any, width: Any) -> None:
    assert isinstance(box, list) and len(box) == 4, box
    assert all(isinstance(v, float) and math.isfinite(v) for v in box), box
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (box, width, height)


def _check_records(records: list[dict[str, Any]], num_classes: int) -> None:
    for rec in records:
        h, w = rec["height"], rec["width"]
        assert isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0
        for ann in rec["annotations"]:
            _check_box(ann["bbox"], h, w)
            assert ann["category_id"] in range(num_classes)
            assert ann["iscrowd"] in (0, 1)
            seg = ann.get("segmentation")
            if isinstance(seg, dict):
                assert seg["size"] == [h, w] and isinstance(seg["counts"], (str, list))
            elif seg is not None:
                assert seg and all(len(p) >= 6 and len(p) % 2 == 0 for p in seg)
                assert all(isinstance(v, float) and math.isfinite(v) for p in seg for v in p)
            kps = ann.get("keypoints")
            if kps is not None:
                assert len(kps) % 3 == 0 and all(math.isfinite(v) for v in kps)


def _load_coco(path: Path, image_root: Path, strict: bool, check_sizes: bool) -> None:
    try:
        num_classes = len(load_coco_metadata(path).class_names)
    except DataError:
        num_classes = 0
    report = DataReport()
    try:
        records = load_coco_json(
            path, image_root, strict=strict, report=report, check_image_sizes=check_sizes
        )
    except DataError as e:
        assert str(e).startswith(f"{path}: ")  # every error names the file
        event(f"DataError {e.kind}")
        return
    event("records" + (" with problems" if report else ""))
    assert num_classes > 0  # metadata and records agree on whether the file is usable
    _check_records(records, num_classes)
    for kind in report.counts:
        assert all(str(e).startswith(f"{path}: ") for e in report.examples(kind))


@FUZZ
@given(data=mutated_coco(), strict=st.booleans(), check_sizes=st.booleans())
def test_fuzz_coco_json(
    image_root: Path, data: dict[str, Any], strict: bool, check_sizes: bool
) -> None:
    path = image_root / "fuzz.json"
    path.write_text(json.dumps(data, allow_nan=True))
    _load_coco(path, image_root, strict, check_sizes)


@FUZZ
@given(cut=st.integers(0, 10_000), insert=st.text(max_size=3), strict=st.booleans())
def test_fuzz_coco_json_text(image_root: Path, cut: int, insert: str, strict: bool) -> None:
    text = json.dumps(_valid_coco())
    cut %= len(text)
    path = image_root / "fuzz_text.json"
    path.write_text(text[:cut] + insert + text[cut + 1 :], errors="surrogatepass")
    _load_coco(path, image_root, strict, check_sizes=False)


def test_valid_coco_loads_without_problems(image_root: Path) -> None:
    path = image_root / "valid.json"
    path.write_text(json.dumps(_valid_coco()))
    report = DataReport()
    records = load_coco_json(path, image_root, check_image_sizes=True, report=report)
    assert len(report) == 0, report.summary()
    assert [len(r["annotations"]) for r in records] == [2, 2]
    _check_records(records, 2)


# ---------------------------------------------------------------------------------------------
# VOC

VOC_XML = """<annotation>
  <folder>fuzz</folder>
  <filename>a.png</filename>
  <size><width>30</width><height>20</height><depth>3</depth></size>
  <object>
    <name>cell</name><difficult>0</difficult><truncated>1</truncated>
    <bndbox><xmin>3</xmin><ymin>4</ymin><xmax>12</xmax><ymax>9</ymax></bndbox>
  </object>
  <object>
    <name>dog</name>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>30</xmax><ymax>20</ymax></bndbox>
  </object>
</annotation>
"""
VOC_TAGS = (
    "annotation", "filename", "size", "width", "height", "depth", "object", "name", "difficult",
    "truncated", "bndbox", "xmin", "ymin", "xmax", "ymax",
)  # fmt: skip
VOC_TEXTS = (
    "", "0", "-1", "1", "3.5", "12", "30", "nan", "inf", "-inf", "1e400", "99999999999999999999",
    "x", "a.png", "b.png", "../a.png", "/", "x" * 300, "cell", "dog", " 7 ",
)  # fmt: skip
xml_texts = st.sampled_from(VOC_TEXTS) | st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=6
)


@st.composite
def mutated_voc(draw: st.DrawFn) -> bytes:
    root = ET.fromstring(VOC_XML)
    for _ in range(draw(st.integers(1, 4))):
        parents = {child: parent for parent in root.iter() for child in parent}
        elements = list(root.iter())
        node = draw(st.sampled_from(elements))
        ops = ["text", "text", "add_child", "rename", "clear"]
        if node is not root:
            ops += ["remove", "duplicate"]
        op = draw(st.sampled_from(ops))
        if op == "text":
            node.text = draw(xml_texts)
        elif op == "add_child":
            child = ET.SubElement(node, draw(st.sampled_from(VOC_TAGS)))
            child.text = draw(xml_texts)
        elif op == "rename":
            node.tag = draw(st.sampled_from(VOC_TAGS))
        elif op == "clear":
            node.clear()
        elif op == "remove":
            parents[node].remove(node)
        elif op == "duplicate":
            parents[node].append(copy.deepcopy(node))
    text = ET.tostring(root)
    if draw(st.integers(0, 5)) == 0:  # now and then, a file cut short or with a stray byte
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.binary(max_size=2)) + text[cut + 1 :]
    return text


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_voc")
    Image.new("RGB", (30, 20)).save(root / "a.png")
    Image.new("RGB", (8, 6)).save(root / "b.png")
    return root


@FUZZ
@given(
    xml=mutated_voc(),
    class_names=st.sampled_from([None, ("cell", "dog"), ("cell",)]),
    strict=st.booleans(),
)
def test_fuzz_voc_xml(
    voc_root: Path, xml: bytes, class_names: tuple[str, ...] | None, strict: bool
) -> None:
    (voc_root / "a.xml").write_bytes(xml)
    report = DataReport()
    try:
        records = load_voc(voc_root, class_names=class_names, strict=strict, report=report)
    except DataError as e:
        assert e.path is not None and "a.xml" in str(e)
        event(f"DataError {e.kind}")
        return
    event("records" + (" with problems" if report else ""))
    assert len(records) <= 1
    for rec in records:
        assert Path(rec["file_name"]).is_file()
        for ann in rec["annotations"]:
            _check_box(ann["bbox"], rec["height"], rec["width"])
            assert isinstance(ann["category_id"], int) and ann["category_id"] >= 0
            if class_names is not None:
                assert ann["category_id"] < len(class_names)


def test_valid_voc_loads_without_problems(voc_root: Path) -> None:
    (voc_root / "a.xml").write_text(VOC_XML)
    report = DataReport()
    (rec,) = load_voc(voc_root, report=report)
    assert len(report) == 0, report.summary()
    assert [a["bbox"] for a in rec["annotations"]] == [
        [2.0, 3.0, 12.0, 9.0],
        [0.0, 0.0, 30.0, 20.0],
    ]
