"""Errors a user can act on. The CLI prints them as one line and exits non-zero, without a traceback."""


class Ds4cError(Exception):
    """A problem with the user's input: names the file (if any) and what is wrong with it."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
