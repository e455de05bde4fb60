"""Compare a model's outputs with the expected ones the way ONNX's backend test runner does.

ONNX's runner (``onnx.backend.test.runner.Runner.assert_similar_outputs``) checks the number of
outputs, each output's shape and dtype, then ``np.testing.assert_allclose(out, ref, rtol, atol)``
(which treats NaN as equal to NaN), comparing strings exactly and bfloat16 with
``rtol = max(rtol, 2**-6)``.  :func:`compare_outputs` does the same but reports every
difference instead of raising at the first: a list of :class:`Mismatch`, empty when all match.

>>> compare_outputs([np.float32([1, np.nan])], [np.float32([1, np.nan])], ["y"], 1e-3, 1e-7)
[]
>>> [m.kind for m in compare_outputs([np.int32([1])], [np.int64([1])], ["y"], 1e-3, 1e-7)]
['dtype']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class Mismatch:
    """One way an output differs from the expected one."""

    output: str  #: the output's name (``name[i]`` inside a sequence)
    kind: str  #: ``values``, ``shape``, ``dtype``, ``missing``, ``count`` or ``type``
    message: str
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    mismatched: int | None = None  #: elements outside the tolerance
    total: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _as_float(a: np.ndarray) -> np.ndarray:
    """Numbers as float64 / complex128 for the tolerance check (ml_dtypes types go via float32)."""
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype.kind in "biuf":
        return a.astype(np.float64)
    return a.astype(np.float32).astype(np.float64)  # bfloat16, float8, float4 (ml_dtypes)


def compare_values(
    name: str, actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float
) -> Mismatch | None:
    """Values of two arrays of one shape: ``assert_allclose`` semantics, NaN == NaN."""
    if expected.dtype == object or expected.dtype.kind in "US" or actual.dtype.kind in "OUS":
        same = (
            np.asarray(actual == expected, dtype=bool) if actual.shape == expected.shape else np.array(False)
        )
        bad = int(np.size(same) - np.count_nonzero(same))
        if bad == 0:
            return None
        return Mismatch(
            name, "values", f"{bad}/{expected.size} strings differ", mismatched=bad, total=expected.size
        )
    if expected.dtype.name == "bfloat16":
        rtol = max(rtol, 2**-6)
    try:
        a, e = _as_float(actual), _as_float(expected)
    except (TypeError, ValueError) as err:
        return Mismatch(name, "type", f"cannot compare {actual.dtype} with {expected.dtype}: {err}")
    close = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    bad = int(close.size - np.count_nonzero(close))
    if bad == 0:
        return None
    with np.errstate(all="ignore"):
        err = np.abs(a - e)
        both_nan = np.isnan(a) & np.isnan(e)
        err = np.where(both_nan | (a == e), 0.0, err)  # equal infinities differ by nan otherwise
        err = np.where(np.isnan(err), np.inf, err)
        rel = np.where(np.abs(e) > 0, err / np.abs(e), np.where(err > 0, np.inf, 0.0))
    max_abs, max_rel = float(np.max(err)), float(np.max(rel))
    idx = np.unravel_index(int(np.argmin(close.ravel())), close.shape) if close.ndim else ()
    first = f"; first at {list(map(int, idx))}: got {actual[idx]!r}, expected {expected[idx]!r}"
    return Mismatch(
        name,
        "values",
        f"{bad}/{close.size} values differ, max abs err {_fmt(max_abs)}, max rel err {_fmt(max_rel)}{first}",
        max_abs_err=max_abs,
        max_rel_err=max_rel,
        mismatched=bad,
        total=int(close.size),
    )


def compare_one(name: str, actual: Any, expected: Any, rtol: float, atol: float) -> list[Mismatch]:
    """Compare one output (an array, a sequence of arrays, or None for an empty optional)."""
    if expected is None:
        return (
            [] if actual is None else [Mismatch(name, "type", f"got {type(actual).__name__}, expected None")]
        )
    if isinstance(expected, list | tuple):
        if not isinstance(actual, list | tuple):
            return [Mismatch(name, "type", f"got {type(actual).__name__}, expected a sequence")]
        if len(actual) != len(expected):
            return [Mismatch(name, "count", f"sequence of {len(actual)} tensors, expected {len(expected)}")]
        out: list[Mismatch] = []
        for i, (a, e) in enumerate(zip(actual, expected)):
            out += compare_one(f"{name}[{i}]", a, e, rtol, atol)
        return out
    expected = np.asarray(expected)
    if actual is None or not hasattr(actual, "shape") or not hasattr(actual, "dtype"):
        return [Mismatch(name, "type", f"got {type(actual).__name__}, expected an array")]
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return [Mismatch(name, "shape", f"shape {list(actual.shape)}, expected {list(expected.shape)}")]
    out = []
    if actual.dtype != expected.dtype:
        out.append(Mismatch(name, "dtype", f"dtype {actual.dtype}, expected {expected.dtype}"))
    values = compare_values(name, actual, expected, rtol, atol)
    if values is not None:
        out.append(values)
    return out


def outputs_as_list(result: Any, names: Sequence[str]) -> tuple[list[Any], list[Mismatch]]:
    """What :meth:`tbn_tvm.CompiledModel.run` returned (one array for one output, else a dict
    name -> array) as a list in graph-output order, with a mismatch for each missing output."""
    if len(names) == 1 and not isinstance(result, Mapping):
        return [result], []
    if not isinstance(result, Mapping):
        return [None] * len(names), [
            Mismatch(
                "*", "count", f"got one {type(result).__name__} for {len(names)} outputs, expected a dict"
            )
        ]
    missing = [n for n in names if n not in result]
    problems = [Mismatch(n, "missing", f"output '{n}' missing (got {sorted(result)})") for n in missing]
    extra = sorted(set(result) - set(names))
    if extra:
        problems.append(Mismatch("*", "count", f"unexpected outputs {extra}"))
    return [result.get(n) for n in names], problems


def compare_outputs(
    actual: Sequence[Any], expected: Sequence[Any], names: Sequence[str], rtol: float, atol: float
) -> list[Mismatch]:
    """Every mismatch between ``actual`` and ``expected`` outputs (in graph order)."""
    if len(actual) != len(expected):
        return [Mismatch("*", "count", f"{len(actual)} outputs, expected {len(expected)}")]
    out: list[Mismatch] = []
    for name, a, e in zip(names, actual, expected):
        out += compare_one(name, a, e, rtol, atol)
    return out
