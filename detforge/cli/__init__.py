"""The ``detforge`` command: train, eval, predict, browse, convert and benchmark subcommands.

Each subcommand is a thin layer over the library (see its module in ``detforge.cli``) and has
``--help``. Logging goes to stdout at INFO. Mistakes in the command line or its inputs (missing
files, unknown model names, bad overrides, checkpoints without metadata) end with a one-line
message on stderr and exit code 2; ``--traceback`` shows the full traceback instead.

Entry points: the ``detforge`` console script (``detforge.cli:main``) and
``python -m detforge.cli``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from detforge.checkpoint.io import CheckpointWriteError
from detforge.cli import benchmark, browse, evaluate, predict, train
from detforge.cli.datasets import CLIError
from detforge.data.errors import DataError
from detforge.engine.checkpointer import ResumeError

__all__ = ["CLIError", "build_parser", "main"]

logger = logging.getLogger(__name__)


class _CLIHandler(logging.StreamHandler):
    """The stdout handler ``main`` installs on the ``detforge`` logger (replaced on each call)."""


def _setup_logging() -> None:
    root = logging.getLogger("detforge")
    for handler in [h for h in root.handlers if isinstance(h, _CLIHandler)]:
        root.removeHandler(handler)
    handler = _CLIHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``detforge`` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="detforge",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show tracebacks for user errors too"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train, evaluate, predict, browse, benchmark):
        module.add_parser(sub)
    sub.add_parser(
        "convert",
        add_help=False,
        help="convert detectron2/torchvision weights (see `detforge convert --help`)",
    )
    return parser


def _convert(argv: list[str]) -> int:
    from detforge.checkpoint.convert import main as convert_main

    try:
        return int(convert_main(argv))
    except (OSError, KeyError, ValueError) as e:
        raise CLIError(str(e.args[0] if isinstance(e, KeyError) else e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``detforge`` command line.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a user error (message on stderr).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in args_list[:1]
    if show_traceback:
        args_list = args_list[1:]
    command = args_list[0] if args_list else None
    try:
        if command == "convert":
            _setup_logging()
            return _convert(args_list[1:])
        args = build_parser().parse_args(args_list)
        _setup_logging()
        return int(args.func(args))
    except (
        CLIError,
        DataError,
        FileNotFoundError,
        CheckpointWriteError,
        ResumeError,
        FloatingPointError,  # a diverged run: the message says what happened and what is kept
    ) as e:
        if show_traceback:
            raise
        message = " ".join(str(e).split())
        sys.stderr.write(f"detforge {command}: error: {message}\n")
        return 2
