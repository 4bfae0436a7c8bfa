"""Deprecated: seed comparison moved to :mod:`prunescope.pipeline.seeds` (kept for one release)."""

import warnings

from prunescope.pipeline.seeds import *  # noqa: F401,F403
from prunescope.pipeline.seeds import compare_finished_seeds, compare_seeds  # noqa: F401

warnings.warn("analysis.seeds moved to prunescope.pipeline.seeds", DeprecationWarning, stacklevel=2)
