"""The one exception family. Only the CLI entry point turns it into `error: ...` and exit code 1."""


class XdrecError(Exception):
    """A problem the user can fix: the message says what went wrong and what to do next."""
