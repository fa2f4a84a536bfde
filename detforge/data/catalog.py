"""Dataset catalog: an explicit name -> (record loader, metadata) mapping.

:class:`DatasetCatalog` is a plain object the user creates and fills; importing detforge
registers nothing. :func:`register_builtin` adds the standard COCO and VOC names under a data
root when called::

    catalog = DatasetCatalog()
    register_builtin(catalog)                       # root: $DETFORGE_DATASETS or ./datasets
    catalog.register("my_train", lambda: load_voc("data/mine"), DatasetMetadata(("cat",)))
    records = catalog.get("coco_2017_val")          # files are read only now

Expected layout under the root (the detectron2 one)::

    coco/annotations/instances_{train,val}2017.json, person_keypoints_{train,val}2017.json,
        image_info_test2017.json, instances_{train,val,minival}2014.json
    coco/{train,val,test}2017/, coco/{train,val}2014/
    VOC2007/{Annotations,ImageSets,JPEGImages}/, VOC2012/...
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from detforge.data.datasets.coco import CocoCategories, load_coco_json, load_coco_metadata
from detforge.data.datasets.voc import VOC_CLASSES, load_voc
from detforge.utils.visualizer import palette

__all__ = [
    "COCO_CATEGORIES",
    "COCO_PERSON_KEYPOINT_FLIP_PAIRS",
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_SKELETON",
    "DatasetCatalog",
    "DatasetMetadata",
    "class_palette",
    "infer_flip_pairs",
    "register_builtin",
    "register_coco_instances",
    "register_voc",
]

logger = logging.getLogger(__name__)

COCO_PERSON_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
"""The 17 COCO person keypoints, in the file's order."""

COCO_PERSON_KEYPOINT_FLIP_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (f"left_{part}", f"right_{part}")
    for part in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
)
"""Keypoints that swap under a horizontal flip."""

COCO_PERSON_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
"""COCO's person skeleton as 0-based keypoint index pairs (the file's list is 1-based)."""

COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip
"""The 80 COCO detection categories as ``(dataset id, name)``, sorted by id."""


def class_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """One colour per class: :func:`detforge.utils.visualizer.palette`."""
    return palette(num_classes)


def infer_flip_pairs(keypoint_names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Pairs ``(left_X, right_X)`` (also ``l_X``/``r_X``) found among ``keypoint_names``.

    Args:
        keypoint_names: the P keypoint names.

    Returns:
        the pairs, in the order their left member appears.
    """
    names = set(keypoint_names)
    pairs = []
    for name in keypoint_names:
        for left, right in (("left_", "right_"), ("l_", "r_"), ("left", "right")):
            if name.startswith(left) and right + name[len(left) :] in names:
                pairs.append((name, right + name[len(left) :]))
                break
    return tuple(pairs)


@dataclass(frozen=True)
class DatasetMetadata:
    """What a dataset's consumers need besides its records.

    Attributes:
        class_names: the K class names, in contiguous-label order (stored as a tuple).
        class_colors: K ``(r, g, b)`` colours for visualisation; default :func:`class_palette`.
        dataset_id_to_contiguous: the file's category id -> contiguous label (COCO), if any.
        keypoint_names: the P keypoint names (empty without keypoints).
        keypoint_flip_pairs: name pairs that swap under a horizontal flip.
        skeleton: 0-based keypoint index pairs drawn as limbs.
        json_file: the COCO JSON, for COCO-style evaluation.
        evaluator_type: hint for the evaluation code: ``"coco"``, ``"pascal_voc"`` or ``None``.
        voc_year: VOC year, which selects the AP definition (11-point for 2007).
    """

    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...] = ()
    dataset_id_to_contiguous: dict[int, int] | None = None
    keypoint_names: tuple[str, ...] = ()
    keypoint_flip_pairs: tuple[tuple[str, str], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    json_file: str | None = None
    evaluator_type: str | None = None
    voc_year: int | None = None

    def __post_init__(self) -> None:
        fn = "DatasetMetadata"
        if isinstance(self.class_names, str):
            raise TypeError(f"{fn}: `class_names` must be a sequence of str, not a str")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        k = len(self.class_names)
        if not self.class_colors:
            object.__setattr__(self, "class_colors", class_palette(k))
        elif len(self.class_colors) != k:
            raise ValueError(f"{fn}: {len(self.class_colors)} `class_colors` for {k} classes")
        names = set(self.keypoint_names)
        for pair in self.keypoint_flip_pairs:
            if not set(pair) <= names:
                raise ValueError(f"{fn}: `keypoint_flip_pairs` entry {pair} not in keypoint_names")
        p = len(self.keypoint_names)
        for a, b in self.skeleton:
            if not (0 <= a < p and 0 <= b < p):
                raise ValueError(f"{fn}: `skeleton` pair {(a, b)} out of range for {p} keypoints")

    def flip_indices(self) -> list[int]:
        """Keypoint permutation for a horizontal flip: ``flipped[:, i] = kps[:, perm[i]]``."""
        index = {name: i for i, name in enumerate(self.keypoint_names)}
        perm = list(range(len(self.keypoint_names)))
        for a, b in self.keypoint_flip_pairs:
            perm[index[a]], perm[index[b]] = index[b], index[a]
        return perm

    @classmethod
    def from_coco(
        cls, categories: CocoCategories, *, json_file: str | Path | None = None
    ) -> DatasetMetadata:
        """Metadata from :func:`detforge.data.datasets.coco.load_coco_metadata`'s result.

        Args:
            categories: the file's categories.
            json_file: the file, kept for COCO evaluation.

        Returns:
            DatasetMetadata with flip pairs inferred from the keypoint names.
        """
        return cls(
            class_names=categories.class_names,
            dataset_id_to_contiguous=dict(categories.dataset_id_to_contiguous),
            keypoint_names=categories.keypoint_names,
            keypoint_flip_pairs=infer_flip_pairs(categories.keypoint_names),
            skeleton=categories.skeleton,
            json_file=None if json_file is None else str(json_file),
            evaluator_type="coco",
        )


RecordsFn = Callable[[], list[dict[str, Any]]]
MetadataLike = DatasetMetadata | Callable[[], DatasetMetadata]


class DatasetCatalog:
    """Maps dataset names to a zero-argument record loader and a :class:`DatasetMetadata`.

    Nothing is cached: :meth:`get` calls the loader every time (wrap it in
    ``functools.cache`` yourself to keep the records). Metadata may be given lazily as a
    zero-argument function; it is then computed on the first :meth:`metadata` call and kept.
    """

    def __init__(self) -> None:
        self._loaders: dict[str, RecordsFn] = {}
        self._metadata: dict[str, MetadataLike] = {}

    def register(self, name: str, fn: RecordsFn, metadata: MetadataLike) -> None:
        """Register ``name``.

        Args:
            name: a new, non-empty dataset name.
            fn: zero-argument function returning the list of records.
            metadata: the metadata, or a zero-argument function returning it.

        Raises:
            ValueError: ``name`` is empty or already registered.
            TypeError: ``fn`` is not callable, or ``metadata`` is neither metadata nor callable.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"DatasetCatalog.register: `name` must be a non-empty str, got {name!r}"
            )
        if name in self._loaders:
            raise ValueError(f"DatasetCatalog.register: dataset {name!r} is already registered")
        if not callable(fn):
            raise TypeError(f"DatasetCatalog.register: `fn` for {name!r} must be callable")
        if not isinstance(metadata, DatasetMetadata) and not callable(metadata):
            msg = f"`metadata` for {name!r} must be a DatasetMetadata or a function returning one"
            raise TypeError(f"DatasetCatalog.register: {msg}, got {type(metadata).__name__}")
        self._loaders[name] = fn
        self._metadata[name] = metadata

    def _check(self, name: str, fn: str) -> None:
        if name not in self._loaders:
            close = difflib.get_close_matches(name, list(self._loaders), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"DatasetCatalog.{fn}: unknown dataset {name!r}{hint}")

    def get(self, name: str) -> list[dict[str, Any]]:
        """Call ``name``'s loader and return its records (see ``detforge/data/__init__.py``)."""
        self._check(name, "get")
        records = self._loaders[name]()
        if not isinstance(records, list):
            msg = f"loader of {name!r} must return a list of records, got {type(records).__name__}"
            raise TypeError(f"DatasetCatalog.get: {msg}")
        return records

    def metadata(self, name: str) -> DatasetMetadata:
        """The :class:`DatasetMetadata` of ``name``."""
        self._check(name, "metadata")
        meta = self._metadata[name]
        if not isinstance(meta, DatasetMetadata):
            meta = meta()
            if not isinstance(meta, DatasetMetadata):
                msg = f"metadata function of {name!r} returned {type(meta).__name__}"
                raise TypeError(f"DatasetCatalog.metadata: {msg}")
            self._metadata[name] = meta
        return meta

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._loaders)

    def remove(self, name: str) -> None:
        """Unregister ``name``."""
        self._check(name, "remove")
        del self._loaders[name], self._metadata[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaders

    def __len__(self) -> int:
        return len(self._loaders)


def register_coco_instances(
    catalog: DatasetCatalog,
    name: str,
    *,
    json_file: str | Path,
    image_root: str | Path,
    metadata: DatasetMetadata | None = None,
) -> None:
    """Register a COCO-format dataset; nothing is read now.

    Args:
        catalog: where to register.
        name: the dataset name.
        json_file: the COCO JSON.
        image_root: folder the images' ``file_name`` entries are relative to.
        metadata: the metadata; ``None`` reads it from ``json_file`` on the first
            ``catalog.metadata(name)`` call.
    """
    json_path, root = Path(json_file), Path(image_root)

    def records() -> list[dict[str, Any]]:
        return load_coco_json(json_path, root, dataset_name=name)

    def read_metadata() -> DatasetMetadata:
        return DatasetMetadata.from_coco(load_coco_metadata(json_path), json_file=json_path)

    catalog.register(name, records, read_metadata if metadata is None else metadata)


def register_voc(
    catalog: DatasetCatalog,
    name: str,
    *,
    root: str | Path,
    split: str,
    class_names: Sequence[str] = VOC_CLASSES,
    year: int | None = None,
) -> None:
    """Register a VOCdevkit-layout dataset split; nothing is read now.

    Args:
        catalog: where to register.
        name: the dataset name.
        root: the ``VOC<year>`` folder.
        split: the ``ImageSets/Main/<split>.txt`` name.
        class_names: the classes in label order.
        year: VOC year (2007 selects the 11-point AP in evaluation).
    """
    folder, names = Path(root), tuple(class_names)

    def records() -> list[dict[str, Any]]:
        return load_voc(folder, split, class_names=names)

    meta = DatasetMetadata(class_names=names, evaluator_type="pascal_voc", voc_year=year)
    catalog.register(name, records, meta)


_COCO_SPLITS: dict[str, tuple[str, str]] = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "keypoints_coco_2017_train": (
        "coco/train2017",
        "coco/annotations/person_keypoints_train2017.json",
    ),
    "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
}

_VOC_SPLITS: dict[str, tuple[str, str, int]] = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2007_test": ("VOC2007", "test", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
}


def register_builtin(catalog: DatasetCatalog, root: str | Path | None = None) -> None:
    """Register the standard COCO and VOC names under a data root; nothing is read now.

    Names: ``coco_2014_{train,val,minival}``, ``coco_2017_{train,val,test}``,
    ``keypoints_coco_2017_{train,val}``, ``voc_2007_{trainval,test}``, ``voc_2012_trainval``.
    The layout is given in the module docstring.

    Args:
        catalog: where to register.
        root: the data root; default ``$DETFORGE_DATASETS``, else ``./datasets``.
    """
    base = Path(root if root is not None else os.environ.get("DETFORGE_DATASETS", "datasets"))
    instances = DatasetMetadata(
        class_names=tuple(n for _, n in COCO_CATEGORIES),
        dataset_id_to_contiguous={cid: i for i, (cid, _) in enumerate(COCO_CATEGORIES)},
        evaluator_type="coco",
    )
    person = DatasetMetadata(
        class_names=("person",),
        dataset_id_to_contiguous={1: 0},
        keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
        keypoint_flip_pairs=COCO_PERSON_KEYPOINT_FLIP_PAIRS,
        skeleton=COCO_PERSON_SKELETON,
        evaluator_type="coco",
    )
    for name, (images, json_file) in _COCO_SPLITS.items():
        template = person if name.startswith("keypoints_") else instances
        meta = replace(template, json_file=str(base / json_file))
        register_coco_instances(
            catalog, name, json_file=base / json_file, image_root=base / images, metadata=meta
        )
    for name, (folder, split, year) in _VOC_SPLITS.items():
        register_voc(catalog, name, root=base / folder, split=split, year=year)
    logger.info(
        "registered %d builtin datasets under %s", len(_COCO_SPLITS) + len(_VOC_SPLITS), base
    )
