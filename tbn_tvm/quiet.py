"""Keep TVM's own chatter away from users: its C++ log lines and Python prints go to a buffer.

TVM writes warnings straight to file descriptor 2 from C++ (``BlockBuilder destroyed with
remaining blocks!``, ``Warning: Scope Saving:`` ...) and its ONNX importer prints to stdout
before re-raising a conversion error.  :func:`captured` redirects both descriptors for the
duration of a block and hands the text back, so a caller can show what matters inside one
clean ``error:`` line (or drop it).  ``TBN_TVM_DEBUG=1`` turns the capture off.

>>> with captured() as out:
...     print("noise")
>>> out.text
'noise\\n'
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Captured:
    """What a :func:`captured` block wrote (filled when the block ends)."""

    text: str = ""

    def last_lines(self, n: int = 3) -> str:
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return " | ".join(lines[-n:])


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """Redirect file descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr``) into a buffer."""
    result = Captured()
    if os.environ.get("TBN_TVM_DEBUG"):
        yield result
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as buf:
        saved = []
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(buf.fileno(), fd)
                except OSError:  # no such descriptor (embedded interpreters): nothing to hide
                    pass
            py_out, py_err = sys.stdout, sys.stderr
            sink = open(buf.fileno(), "w", closefd=False, encoding="utf-8", errors="replace")  # noqa: SIM115
            sys.stdout = sys.stderr = sink
            try:
                yield result
            finally:
                with contextlib.suppress(Exception):
                    sink.flush()
                sys.stdout, sys.stderr = py_out, py_err
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            buf.seek(0)
            result.text = buf.read().decode("utf-8", errors="replace")
