"""Deprecated: the pipeline moved to :mod:`prunescope.pipeline` (kept for one release)."""

import warnings

from prunescope.pipeline import *  # noqa: F401,F403
from prunescope.pipeline.stages import *  # noqa: F401,F403

warnings.warn("analysis.pipeline moved to prunescope.pipeline", DeprecationWarning, stacklevel=2)
