"""Reading ``.npy`` inputs a user (or anyone) handed over, safely.

:func:`read_npy` opens regular files only (a FIFO would block forever), checks the header before
any data is read (a header may declare terabytes; the file must hold every byte it declares),
never unpickles (object arrays are refused) and turns every failure into one :class:`TBNError`.

>>> import tempfile, pathlib, numpy as np
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.npy"
>>> np.save(p, np.arange(3, dtype=np.float32))
>>> read_npy(p)
array([0., 1., 2.], dtype=float32)
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError

_HINT = "pass a .npy file written by numpy.save"


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """The array in the ``.npy`` file at ``path`` (TBNError for anything else)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise TBNError(f"{p}: no such file", hint=_HINT) from None
    except (OSError, ValueError) as e:
        raise TBNError(
            f"{p}: cannot read the file ({getattr(e, 'strerror', None) or e})", hint=_HINT
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise TBNError(f"{p}: is a directory", hint=_HINT)
    if not stat.S_ISREG(st.st_mode):
        raise TBNError(f"{p}: not a regular file (a FIFO, device or socket)", hint=_HINT)
    fmt = np.lib.format
    try:
        with open(p, "rb") as f:
            head = f.read(6)
            if head[:2] == b"PK":
                raise TBNError(
                    f"{p}: is a .npz archive", hint="pass one .npy per input (--input NAME=FILE.npy)"
                )
            if head != b"\x93NUMPY":
                raise TBNError(f"{p}: not a .npy file", hint=_HINT)
            f.seek(0)
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=10_000)
            data_start = f.tell()
            if dtype.hasobject:
                raise TBNError(
                    f"{p}: holds Python objects (a pickle); tbn-tvm reads numeric arrays only and never unpickles",
                    hint=_HINT,
                )
            need = math.prod(shape) * dtype.itemsize
            if need > st.st_size - data_start:
                raise TBNError(
                    f"{p}: truncated (its header declares {need:,} bytes of data, the file holds "
                    f"{max(0, st.st_size - data_start):,})",
                    hint=_HINT,
                )
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except TBNError:
        raise
    except (ValueError, OSError, EOFError, TypeError, SyntaxError, MemoryError) as e:
        raise TBNError(
            f"{p}: not a readable .npy file ({' '.join(str(e).split())[:120]})", hint=_HINT
        ) from None
