"""The one exception type users see: a problem with their input, reported in one line."""


class RepdispError(Exception):
    """Bad input or an unmet precondition; the CLI prints it on one line and exits with code 2.

    Examples
    --------
    >>> from repdisp import RepdispError, dispersion
    >>> try:
    ...     dispersion([[1.0, 0.0]])
    ... except RepdispError as e:
    ...     print(e)
    dispersion needs at least 2 vectors, got 1
    """
