"""``python -m detforge.cli``: the same as the ``detforge`` command."""

import sys

from detforge.cli import main

if __name__ == "__main__":
    sys.exit(main())
