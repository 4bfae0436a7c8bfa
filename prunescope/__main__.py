"""``python -m prunescope ...``: the same as the ``prunescope`` command."""

import sys

from prunescope.cli import main

sys.exit(main())
