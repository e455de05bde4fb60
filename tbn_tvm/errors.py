"""The one user-facing error type.

Anything a user can cause (a bad file, an unsupported operator, a wrong input shape, an unknown
target, a model too large for the board) raises :class:`TBNError`.  The CLI prints it as a
single line ``error: <message>`` on stderr and exits with status 2; the Python API lets it
propagate so callers can catch it.

>>> try:
...     raise TBNError("model.onnx: no such file", hint="check the path")
... except TBNError as e:
...     print(e.render())
error: model.onnx: no such file (check the path)
"""

from __future__ import annotations


class TBNError(Exception):
    """An error caused by the user's input, reported as one line."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    def render(self) -> str:
        """The single line the CLI prints."""
        return "error: " + " ".join(str(self).split())
