"""The one exception type users see: a problem with their input, reported in one line."""


class RepdispError(Exception):
    """Bad input or an unmet precondition; the CLI prints it on one line and exits with code 2."""
