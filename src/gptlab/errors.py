"""The one exception type that reaches the user as a plain line instead of a traceback."""


class UserError(Exception):
    """Bad input or an impossible request: the CLI prints each line of the message and exits with code 2.

    Raise it with a message that names the file, the key or value, and what is allowed.
    """

    exit_code = 2

    def __init__(self, *lines: str):
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


class OutOfSpace(UserError):
    """A write failed because the device is full; whatever was partly written has been removed."""


class BadFile(UserError, ValueError):
    """A file gptlab reads is empty, torn, not JSON or not of the expected shape. It is also a ValueError so
    that readers which treat an unreadable optional file as absent (`except ValueError`) keep doing so."""


class ReadOnly(UserError):
    """A write was refused because the file system (or the folder) is read-only."""


class NonFiniteWeights(UserError):
    """A model's weights hold NaN or infinite values: nothing it computes means anything (exit 3, as a run
    stopped by non-finite steps)."""

    exit_code = 3
