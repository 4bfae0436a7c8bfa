"""Deprecated: the CLI moved to :mod:`prunescope.cli` (``prunescope`` / ``python -m prunescope``)."""

import sys
import warnings

from prunescope.cli import build_parser, format_layer_ranking, format_sweep_table, main  # noqa: F401

__all__ = ["build_parser", "format_layer_ranking", "format_sweep_table", "main"]

warnings.warn("analysis.cli moved to prunescope.cli", DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    sys.exit(main())
