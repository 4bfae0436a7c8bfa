"""One exception type for mistakes a user can fix.

The CLI prints its message on one line and exits with status 2; Python callers can catch it.
Every message says what was wrong and what to do about it.
"""


class PrunescopeError(ValueError):
    """Bad input: a missing path, an unsupported model, an out-of-range layer index, ...

    >>> raise PrunescopeError("layer 40 is out of range: the model has 30 layers (0-29)")
    Traceback (most recent call last):
    ...
    prunescope.core.errors.PrunescopeError: layer 40 is out of range: the model has 30 layers (0-29)
    """
