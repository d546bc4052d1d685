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
