"""How an array given to ``run`` maps onto samples: one rule for the CLI and the API.

For a model input of shape ``S`` an array is read as

* **one sample** when its shape is exactly ``S``: the outputs have exactly the output shapes;
* **N samples stacked on a new leading axis** when its shape is ``[N, *S]``: the outputs are
  ``[N, *output_shape]``;
* **N samples on the model's batch axis** when ``S`` starts with 1 and the array is
  ``[N, *S[1:]]`` (how onnxruntime, torch and tvmc users stack a batch): the outputs are
  ``[N, *output_shape[1:]]`` for an output whose leading dimension is 1 as well, else
  ``[N, *output_shape]``.

For N = 1 the last form is the first one.  Every input of a model is given in the same form (an
input whose leading dimension is not 1 goes stacked beside inputs on the batch axis).

>>> from tbn_tvm.frontend.onnx import TensorSpec
>>> x = TensorSpec("x", (1, 1, 28, 28), "float32")
>>> import numpy as np
>>> b = as_samples([x], {"x": np.zeros((4, 1, 28, 28), np.float32)})
>>> b.count, b.layout, b.arrays[0].shape
(4, 'batch', (4, 1, 1, 28, 28))
>>> restore_outputs([np.zeros((4, 1, 10), np.float32)], b.layout)[0].shape
(4, 10)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tbn_tvm.errors import TBNError

ONE, STACKED, BATCH = "one", "stacked", "batch"


@dataclass
class Samples:
    """Inputs as arrays ``[N, *input_shape]`` (one per model input, in the model's order), the
    sample count N and the form they were given in (:data:`ONE`, :data:`STACKED`, :data:`BATCH`)."""

    arrays: list[np.ndarray]
    count: int
    layout: str


def _dims(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def accepted_shapes(shape: Sequence[int]) -> str:
    """The array shapes an input of ``shape`` accepts, for messages."""
    s = _dims(shape)
    forms = [f"{s} (one sample)", f"N x {s}"]
    if len(shape) and shape[0] == 1:
        forms.append(f"N x {_dims(shape[1:])}" if len(shape) > 1 else "N")
    return ", ".join(forms[:-1]) + f" or {forms[-1]} (N samples)"


def layout_of(shape: Sequence[int], array_shape: Sequence[int]) -> str | None:
    """The form an array of ``array_shape`` has for an input of ``shape`` (None: no form)."""
    shape, got = tuple(shape), tuple(array_shape)
    if got == shape:
        return ONE
    if len(got) == len(shape) + 1 and got[1:] == shape:
        return STACKED
    if shape and shape[0] == 1 and len(got) == len(shape) and got[1:] == shape[1:]:
        return BATCH
    return None


def as_samples(specs, inputs: Mapping[str, np.ndarray]) -> Samples:
    """Check ``inputs`` (name -> array, every name of ``specs`` present, dtypes already right
    or checked by the caller) against the input ``specs`` and give them as ``[N, *shape]``.
    Raises :class:`TBNError` naming the input, its shape and the accepted shapes."""
    arrays, layouts, counts = [], [], []
    for spec in specs:
        a = np.asarray(inputs[spec.name])
        form = layout_of(spec.shape, a.shape)
        if form is None:
            raise TBNError(
                f"input '{spec.name}' has shape {_dims(a.shape)}; the model expects {accepted_shapes(spec.shape)}"
            )
        if form == BATCH:
            a = a.reshape(a.shape[0], *spec.shape)
        elif form == ONE:
            a = a[None]
        arrays.append(a)
        layouts.append(form)
        counts.append(a.shape[0])
    if len(set(counts)) > 1:
        raise TBNError(f"the inputs hold different sample counts: {counts}")
    forms = set(layouts)
    if len(forms) > 1:
        # beside inputs on the batch axis, an input without a leading 1 can only come stacked
        lone = all(
            form == BATCH or (form == STACKED and tuple(spec.shape[:1]) != (1,))
            for spec, form in zip(specs, layouts)
        )
        if not lone:
            raise TBNError(
                "give every input in the same form: one sample each, or N samples each "
                "(stacked on a new leading axis, or on the model's batch axis of 1)"
            )
        forms = {BATCH}
    layout = forms.pop() if forms else ONE
    return Samples(arrays, counts[0] if counts else 1, layout)


def restore_outputs(outputs: Sequence[np.ndarray], layout: str) -> list[np.ndarray]:
    """Outputs ``[N, *output_shape]`` in the form the inputs were given in (see the module)."""
    if layout == ONE:
        return [o[0] for o in outputs]
    if layout == STACKED:
        return list(outputs)
    return [o.reshape(o.shape[0], *o.shape[2:]) if o.shape[1:2] == (1,) else o for o in outputs]
