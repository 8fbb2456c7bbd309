"""The one user-error type; the CLI prints it as a single line and exits with status 2."""


class EdgefpError(Exception):
    """A problem with the user's input or environment, worded as what is wrong and what to do."""
