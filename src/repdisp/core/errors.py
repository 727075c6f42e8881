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


def warn(message: str) -> None:
    """One ``repdisp: warning: ...`` line on stderr: something was skipped, the run goes on."""
    import sys

    print(f"repdisp: warning: {message}", file=sys.stderr)


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception from a library, for one-line errors."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no details'}"
