"""Dataset arguments shared by the subcommands, and the CLI's user-error type.

Two kinds of data are read from the command line:

* **COCO**: ``--coco-json J --image-root R`` (validation: ``--val-coco-json``/``--val-image-root``);
* **Pascal VOC XML**: ``--voc DIR``, either a VOCdevkit year folder (``DIR/Annotations``,
  ``DIR/JPEGImages``, ``DIR/ImageSets/Main/<split>.txt``) or a labelImg-style folder of XML files
  and images without split files. ``--voc-split`` picks the split file (training default
  ``trainval``, used when that file exists; otherwise every XML is read); the validation split is
  ``--voc-val-split`` (default ``test``, used when that file exists).

Without a validation split, ``--val-fraction F`` holds out a seeded random fraction of the
training records. Every problem a user can cause (missing files, contradictory flags, unreadable
annotations) is raised as :class:`CLIError`, which the entry point turns into a one-line message
and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from detforge.data.catalog import DatasetMetadata
from detforge.data.datasets.coco import load_coco_json, load_coco_metadata
from detforge.data.datasets.voc import load_voc, split_records

__all__ = [
    "DATA_KEYS",
    "CLIError",
    "DataSplit",
    "add_data_arguments",
    "add_eval_data_arguments",
    "data_arguments",
    "load_data",
    "load_train_data",
]

logger = logging.getLogger(__name__)

#: Names of the dataset arguments (stored in ``config.yaml`` so a resumed run can reuse them).
DATA_KEYS = (
    "coco_json",
    "image_root",
    "voc",
    "voc_split",
    "class_names",
    "val_coco_json",
    "val_image_root",
    "voc_val_split",
    "val_fraction",
    "split_seed",
)


class CLIError(Exception):
    """A mistake in the command line or its inputs: reported as one line, exit code 2."""


@dataclass
class DataSplit:
    """Records of one dataset split and what evaluating or drawing them needs.

    Attributes:
        records: dataset records (see ``detforge.data``); boxes are xyxy absolute pixels.
        metadata: class names (the K contiguous labels), colours, COCO id mapping.
        kind: ``"coco"`` or ``"voc"``: selects COCO AP or VOC AP at evaluation.
        json_file: COCO ground truth for evaluation; ``None`` builds it from ``records``.
        use_07_metric: VOC2007's 11-point AP (set for folders whose name contains 2007).
        source: a short description for logs and ``config.yaml``.
    """

    records: list[dict[str, Any]]
    metadata: DatasetMetadata
    kind: Literal["coco", "voc"]
    json_file: str | None = None
    use_07_metric: bool = False
    source: str = ""

    @property
    def has_segmentation(self) -> bool:
        """Whether any annotation has a ``segmentation`` (polygons or RLE)."""
        return any("segmentation" in a for r in self.records for a in r.get("annotations", []))


def _class_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--class-names needs comma-separated names")
    return names


def _source_arguments(group: argparse._ArgumentGroup, *, eval_aliases: bool) -> None:
    coco = ["--coco-json", "--val-coco-json"] if eval_aliases else ["--coco-json"]
    root = ["--image-root", "--val-image-root"] if eval_aliases else ["--image-root"]
    group.add_argument(*coco, dest="coco_json", metavar="JSON", help="COCO annotation file")
    group.add_argument(*root, dest="image_root", metavar="DIR", help="folder of the COCO images")
    group.add_argument(
        "--voc", metavar="DIR", help="VOCdevkit year folder (e.g. VOC2007) or labelImg folder"
    )
    group.add_argument(
        "--class-names",
        type=_class_list,
        metavar="A,B,...",
        help="VOC only: the classes in label order (default: sorted names found in the data)",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training + validation dataset flags (``detforge train``)."""
    g = parser.add_argument_group("data")
    _source_arguments(g, eval_aliases=False)
    g.add_argument(
        "--voc-split", metavar="NAME", help="VOC split file (default: trainval when it exists)"
    )
    g.add_argument("--val-coco-json", metavar="JSON", help="COCO validation annotation file")
    g.add_argument("--val-image-root", metavar="DIR", help="folder of the validation images")
    g.add_argument(
        "--voc-val-split", metavar="NAME", help="VOC validation split (default: test if present)"
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="without a validation split: hold out this fraction of the training images",
    )
    g.add_argument("--split-seed", type=int, default=0, help="seed of --val-fraction's split")


def add_eval_data_arguments(parser: argparse.ArgumentParser, *, voc_default: str) -> None:
    """Add the flags of one dataset split (``eval``, ``browse``).

    ``--val-coco-json``/``--val-image-root``/``--voc-val-split`` are accepted as aliases, so
    ``detforge eval`` takes the same flags as the validation data of ``detforge train``.
    """
    g = parser.add_argument_group("data")
    _source_arguments(g, eval_aliases=True)
    g.add_argument(
        "--voc-split",
        "--voc-val-split",
        dest="voc_split",
        metavar="NAME",
        help=f"VOC split file (default: {voc_default} when it exists, else every XML)",
    )


def data_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset arguments of ``args`` as a plain dict (for ``config.yaml``; absolute paths)."""
    out = {k: getattr(args, k) for k in DATA_KEYS if hasattr(args, k)}
    for k in ("coco_json", "image_root", "voc", "val_coco_json", "val_image_root"):
        if out.get(k) is not None:
            out[k] = str(Path(out[k]).absolute())
    return out


def _coco(json_file: str, image_root: str | None, flag: str) -> DataSplit:
    if image_root is None:
        raise CLIError(
            f"{flag} {json_file} needs the folder of its images ({flag[:-5]}-image-root)"
        )
    if not Path(image_root).is_dir():
        raise CLIError(f"image folder {image_root} of {json_file} does not exist")
    try:
        records = load_coco_json(json_file, image_root)
        metadata = DatasetMetadata.from_coco(load_coco_metadata(json_file), json_file=json_file)
    except (OSError, ValueError) as e:
        raise CLIError(f"{flag} {json_file}: {e}") from e
    return DataSplit(records, metadata, "coco", json_file=str(json_file), source=str(json_file))


def _voc_root(voc: str) -> Path:
    root = Path(voc)
    if not root.is_dir():
        raise CLIError(f"--voc {voc}: no such folder")
    years = sorted(p.name for p in root.glob("VOC20*") if p.is_dir())
    if years and not (root / "Annotations").is_dir() and not any(root.glob("*.xml")):
        raise CLIError(
            f"--voc {voc} is a VOCdevkit; give a year folder, e.g. --voc {root / years[0]}"
        )
    return root


def _voc_split(root: Path, requested: str | None, default: str | None, flag: str) -> str | None:
    """The split to read: the requested one (must exist), else ``default`` if its file exists."""
    folder = root / "ImageSets" / "Main"
    if requested is not None:
        if not (folder / f"{requested}.txt").is_file():
            have = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
            raise CLIError(
                f"{flag} {requested}: {folder / (requested + '.txt')} does not exist "
                f"(available: {', '.join(have) or 'none'})"
            )
        return requested
    if default is not None and (folder / f"{default}.txt").is_file():
        return default
    return None


def _voc_class_names(root: Path) -> list[str]:
    """Sorted object names over every XML file of the folder (train and val splits alike)."""
    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    names: set[str] = set()
    for xml in ann_dir.glob("*.xml"):
        try:
            tree = ET.parse(xml)
        except ET.ParseError:
            continue  # load_voc reports it with the line and column
        names.update(n.text.strip() for n in tree.iterfind("object/name") if n.text)
    if not names:
        raise CLIError(f"--voc {root}: no <object><name> in any XML file of {ann_dir}")
    return sorted(names)


def _voc(root: Path, split: str | None, class_names: Sequence[str]) -> DataSplit:
    try:
        records = load_voc(root, split, class_names=class_names)
    except (OSError, ValueError) as e:
        raise CLIError(f"--voc {root}: {e}") from e
    return DataSplit(
        records,
        DatasetMetadata(tuple(class_names), evaluator_type="pascal_voc"),
        "voc",
        use_07_metric="2007" in root.name,
        source=f"{root} ({split or 'every XML'})",
    )


def _check_source(args: argparse.Namespace) -> None:
    if args.coco_json is not None and args.voc is not None:
        raise CLIError("give either --coco-json (with --image-root) or --voc, not both")
    if args.coco_json is None and args.voc is None:
        raise CLIError("no data: give --coco-json J --image-root R, or --voc DIR")
    if args.coco_json is not None and getattr(args, "class_names", None):
        raise CLIError("--class-names is for VOC data; COCO files name their classes")


def load_data(
    args: argparse.Namespace, *, voc_default: str, class_names: Sequence[str] | None = None
) -> DataSplit:
    """Read the one split that ``add_eval_data_arguments`` describes.

    Args:
        args: parsed arguments (``coco_json``, ``image_root``, ``voc``, ``voc_split``,
            ``class_names``).
        voc_default: VOC split used when ``--voc-split`` is absent and its file exists (else
            every XML file).
        class_names: the classes a model was trained on: VOC labels follow this order, and a
            COCO file must have the same classes.

    Returns:
        DataSplit: the records and their metadata.
    """
    _check_source(args)
    if args.coco_json is not None:
        data = _coco(args.coco_json, args.image_root, "--coco-json")
        if class_names is not None and list(data.metadata.class_names) != list(class_names):
            raise CLIError(
                f"the classes of {args.coco_json} {list(data.metadata.class_names)} differ from "
                f"the model's {list(class_names)}"
            )
        return data
    root = _voc_root(args.voc)
    split = _voc_split(root, args.voc_split, voc_default, "--voc-split")
    names = args.class_names or class_names or _voc_class_names(root)
    return _voc(root, split, names)


def _split_off(train: DataSplit, fraction: float, seed: int) -> tuple[DataSplit, DataSplit]:
    if not 0.0 < fraction < 1.0:
        raise CLIError(f"--val-fraction must be in (0, 1), got {fraction}")
    kept, held = split_records(train.records, fraction, seed=seed)
    if not held or not kept:
        raise CLIError(
            f"--val-fraction {fraction} of {len(train.records)} images leaves an empty split"
        )
    logger.info(
        "held out %d of %d training images for validation", len(held), len(kept) + len(held)
    )
    source = f"{train.source} (val: {fraction:g} split, seed {seed})"
    val = DataSplit(held, train.metadata, train.kind, None, train.use_07_metric, source)
    return DataSplit(kept, train.metadata, train.kind, None, train.use_07_metric, source), val


def load_train_data(args: argparse.Namespace) -> tuple[DataSplit, DataSplit | None]:
    """Read the training split and the validation split (if any) of ``add_data_arguments``.

    Returns:
        ``(train, val)``; ``val`` is ``None`` without validation data.
    """
    _check_source(args)
    has_val_split = args.val_coco_json is not None or args.voc_val_split is not None
    if args.val_fraction is not None and has_val_split:
        raise CLIError("--val-fraction splits the training data; it excludes a validation split")
    val: DataSplit | None = None
    if args.coco_json is not None:
        train = _coco(args.coco_json, args.image_root, "--coco-json")
        if args.val_coco_json is not None:
            val = _coco(args.val_coco_json, args.val_image_root, "--val-coco-json")
            if val.metadata.class_names != train.metadata.class_names:
                raise CLIError(
                    f"--val-coco-json {args.val_coco_json} has other classes than --coco-json"
                )
    else:
        root = _voc_root(args.voc)
        names = args.class_names or _voc_class_names(root)
        train = _voc(root, _voc_split(root, args.voc_split, "trainval", "--voc-split"), names)
        val_split = _voc_split(root, args.voc_val_split, "test", "--voc-val-split")
        if val_split is not None and args.val_fraction is None:
            val = _voc(root, val_split, names)
    if not train.records:
        raise CLIError(f"no training images in {train.source}")
    if args.val_fraction is not None:
        train, val = _split_off(train, args.val_fraction, args.split_seed)
    return train, val
