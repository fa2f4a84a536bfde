"""``detforge browse``: draw a dataset's ground truth (boxes, names, masks, keypoints) to a folder.

Use it before training to check that the annotations load and line up with the images.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from detforge.cli.datasets import CLIError, add_eval_data_arguments, load_data
from detforge.data.browse import browse_dataset

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """Run ``detforge browse``: write ``OUTPUT/<image stem>.jpg`` per record."""
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    data = load_data(args, voc_default="trainval")
    written = browse_dataset(data.records, data.metadata, args.output, limit=args.limit)
    logger.info(
        "browse: drew %d of %d images into %s", len(written), len(data.records), args.output
    )
    if not written:
        raise CLIError(f"browse: no image could be drawn (of {len(data.records)}); see above")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detforge browse``."""
    p = subparsers.add_parser(
        "browse",
        help="draw a dataset's annotations on its images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_eval_data_arguments(p, voc_default="trainval")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the drawings")
    p.add_argument("--limit", type=int, metavar="N", help="draw at most N images")
    p.set_defaults(func=run)
    return p
