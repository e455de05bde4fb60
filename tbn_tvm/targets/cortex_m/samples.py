"""Shape checks shared by the QEMU and UART runners."""

from __future__ import annotations

import numpy as np

from tbn_tvm.errors import TBNError


def as_batch(inputs: np.ndarray, input_size: int) -> np.ndarray:
    """``inputs`` as a C-contiguous float32 array ``[N, input_size]``.

    Accepts one sample (``input_size`` values in any shape whose size matches) or a batch whose
    trailing dimensions hold ``input_size`` values (``[N, 1, 28, 28]`` for 784 inputs).

    >>> as_batch(np.zeros((2, 1, 2, 2)), 4).shape
    (2, 4)
    """
    x = np.asarray(inputs)
    if x.dtype.kind not in "fiub":
        raise TBNError(f"inputs must be numbers, got dtype {x.dtype}")
    if x.ndim == 0 or x.size == 0:
        raise TBNError("no input samples given")
    if x.ndim == 1 or int(np.prod(x.shape[1:])) != input_size:
        if x.size != input_size:
            raise TBNError(
                f"inputs of shape {x.shape} do not hold {input_size} values per sample",
                hint="give an array [N, ...] whose trailing dimensions match the model input",
            )
        x = x.reshape(1, input_size)  # a single sample, in any shape
    return np.ascontiguousarray(x.reshape(x.shape[0], input_size), dtype="<f4")
