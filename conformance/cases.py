"""Collect ONNX's own node test cases and describe them: main operator, opset, schema version,
dtypes, whether it is a float32 case; plan the down-converted version cases; pick samples.

The onnx wheel ships the case generators (``onnx.backend.test.case.node``) but no data files:
:func:`collect` runs the generators (numpy references written by the ONNX authors) with fixed
random seeds, so every collection in every process yields the same models and data.

>>> cases = collect()                                   # doctest: +SKIP
>>> cases["test_relu"].op, cases["test_relu"].since_version   # doctest: +SKIP
('Relu', 14)
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import numpy as np
import onnx

#: Lowest default-domain opset a down-converted case is made for (the TVM importer's minimum).
MIN_CONVERT_OPSET = 7

#: dtypes allowed in a float32 case besides float32 itself (indices, shapes, conditions).
INDEX_DTYPES = frozenset({"int64", "int32", "bool"})

_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")
_DTYPE_NAMES = {
    "FLOAT": "float32",
    "DOUBLE": "float64",
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "BOOL": "bool",
    "STRING": "string",
    "COMPLEX64": "complex64",
    "COMPLEX128": "complex128",
}


@dataclass(frozen=True)
class Case:
    """One ONNX node test case (or a down-converted variant of one: ``convert_to`` is set)."""

    name: str  #: ``test_relu``, or ``test_relu@opset13`` for a down-converted variant
    base: str  #: the ONNX case name
    op: str  #: the operator under test (the function's name for an expanded case)
    domain: str  #: its domain ("" for the default ONNX domain)
    expanded: bool  #: a function-expanded case (the graph holds the function's body)
    opset: int | None  #: the default-domain opset of the model (after conversion)
    since_version: int | None  #: the op's schema version at the model's opset for its domain
    graph_ops: tuple[str, ...]  #: every op type in the graph, subgraphs included, sorted
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    float32: bool  #: see :func:`is_float32_case`
    single_float32_io: bool  #: exactly one input and one output, both float32 tensors
    convert_to: int | None = None  #: target opset of a down-converted variant
    const_inputs: bool = False  #: every input but the first made a constant (``@const``)
    model: onnx.ModelProto | None = field(default=None, repr=False, compare=False)
    inputs: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    outputs: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    rtol: float = 1e-3
    atol: float = 1e-7

    def describe(self) -> dict:
        """The JSON-able description of the case (no model, no data)."""
        return {
            "name": self.name,
            "base": self.base,
            "op": self.op,
            "domain": self.domain,
            "expanded": self.expanded,
            "opset": self.opset,
            "since_version": self.since_version,
            "convert_to": self.convert_to,
            "const_inputs": self.const_inputs,
            "graph_ops": list(self.graph_ops),
            "input_dtypes": list(self.input_dtypes),
            "output_dtypes": list(self.output_dtypes),
            "float32": self.float32,
            "single_float32_io": self.single_float32_io,
            "rtol": self.rtol,
            "atol": self.atol,
        }


# ---------------------------------------------------------------------------- types
def type_name(tp: onnx.TypeProto) -> str:
    """A short name of an ONNX type: ``float32``, ``int64``, ``seq(float32)``, ``optional(...)``."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return dtype_name(tp.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"seq({type_name(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_name(tp.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({dtype_name(tp.map_type.key_type)},{type_name(tp.map_type.value_type)})"
    return kind or "undefined"


def dtype_name(elem_type: int) -> str:
    """numpy-style name of an ONNX tensor element type (``float32``, ``float8e4m3fn``, ...)."""
    name = onnx.TensorProto.DataType.Name(elem_type)
    return _DTYPE_NAMES.get(name, name.lower())


def is_float32_case(input_dtypes: Sequence[str], output_dtypes: Sequence[str]) -> bool:
    """A *float32 case*: every graph input and output is a tensor of float32, or of int64/int32/bool
    (indices, shapes, axes, conditions), and at least one of them is float32.

    Anything else -- float16, bfloat16, float64, the 8-bit and smaller int/float types, strings,
    complex numbers, sequences, optionals -- makes it a non-float32 case."""
    dtypes = [*input_dtypes, *output_dtypes]
    return "float32" in dtypes and all(d == "float32" or d in INDEX_DTYPES for d in dtypes)


def _graph_ops(graph: onnx.GraphProto) -> set[str]:
    ops: set[str] = set()
    for node in graph.node:
        ops.add(f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= _graph_ops(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    ops |= _graph_ops(g)
    return ops


def opset_of(model: onnx.ModelProto, domain: str = "") -> int | None:
    """The model's opset import for ``domain`` (``""`` and ``"ai.onnx"`` are the same)."""
    domains = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
    return next((int(o.version) for o in model.opset_import if o.domain in domains), None)


def since_version(op: str, opset: int | None, domain: str = "") -> int | None:
    """The schema version of ``op`` in effect at ``opset`` (None when ONNX knows no such schema)."""
    if opset is None:
        return None
    try:
        return int(onnx.defs.get_schema(op, opset, domain).since_version)
    except Exception:
        return None


@cache
def schema_versions(op: str, domain: str = "") -> tuple[int, ...]:
    """Every since_version of ``op`` in ``domain``, ascending."""
    return tuple(
        sorted(
            {
                int(s.since_version)
                for s in onnx.defs.get_all_schemas_with_history()
                if s.name == op and s.domain == domain
            }
        )
    )


def to_numpy(value: Any) -> Any:
    """Inputs and outputs as the generators give them, with TensorProtos turned into arrays and
    numpy scalars into 0-d arrays (lists -- sequences -- keep their structure)."""
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, list | tuple):
        return [to_numpy(v) for v in value]
    return value


# ---------------------------------------------------------------------------- collection
def _describe(
    name: str,
    base: str,
    op: str,
    domain: str,
    expanded: bool,
    model: onnx.ModelProto,
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    rtol: float,
    atol: float,
    convert_to: int | None = None,
) -> Case:
    init = {t.name for t in model.graph.initializer}
    in_types = tuple(type_name(vi.type) for vi in model.graph.input if vi.name not in init)
    out_types = tuple(type_name(vi.type) for vi in model.graph.output)
    return Case(
        name=name,
        base=base,
        op=op,
        domain=domain,
        expanded=expanded,
        opset=opset_of(model),
        since_version=since_version(op, opset_of(model, domain), domain),
        graph_ops=tuple(sorted(_graph_ops(model.graph))),
        input_dtypes=in_types,
        output_dtypes=out_types,
        float32=is_float32_case(in_types, out_types),
        single_float32_io=in_types == ("float32",) and out_types == ("float32",),
        convert_to=convert_to,
        model=model,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        rtol=rtol,
        atol=atol,
    )


@lru_cache(maxsize=1)
def _collect() -> tuple[Case, ...]:
    # The generators draw from numpy's and Python's global generators: fix both, and collect
    # every case (a filtered collection would draw different numbers).
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(0)
    random.seed(0)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            from onnx.backend.test.case import node as node_cases

            testcases = list(node_cases.collect_testcases(None))
            nodes = dict(node_cases._existing_names)  # name -> the NodeProto under test
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    out = []
    for tc in testcases:
        if tc.kind != "node" or tc.model is None or not tc.data_sets:
            continue
        base = _EXPANDED.sub("", tc.name)
        node = nodes.get(base)
        op = node.op_type if node is not None else tc.model.graph.node[0].op_type
        domain = node.domain if node is not None else tc.model.graph.node[0].domain
        domain = "" if domain == "ai.onnx" else domain
        inputs, outputs = tc.data_sets[0]  # every node case has exactly one data set
        out.append(
            _describe(
                tc.name,
                tc.name,
                op,
                domain,
                base != tc.name,
                tc.model,
                [to_numpy(v) for v in inputs],
                [to_numpy(v) for v in outputs],
                float(tc.rtol),
                float(tc.atol),
            )
        )
    return tuple(sorted(out, key=lambda c: c.name))


def collect() -> dict[str, Case]:
    """Every node test case of the installed onnx, by name (sorted), collected once per process."""
    return {c.name: c for c in _collect()}


# ---------------------------------------------------------------------------- versions
def version_targets(case: Case) -> list[int]:
    """Opsets to down-convert ``case`` to: one per earlier schema version of its op that is in
    effect at some opset in ``[7, case opset)`` (that version's since_version, or 7 for versions
    older than 7 still in effect at 7).  Only for direct (not expanded) default-domain cases."""
    if case.expanded or case.domain != "" or case.opset is None or case.since_version is None:
        return []
    targets = set()
    for s in schema_versions(case.op, case.domain):
        if s >= case.since_version:
            continue
        v = max(s, MIN_CONVERT_OPSET)
        if v < case.opset and since_version(case.op, v, case.domain) == s:
            targets.add(v)
    return sorted(targets)


def version_variant(case: Case, opset: int) -> Case:
    """The description of ``case`` down-converted to ``opset`` (the conversion itself happens
    in the worker, which records a failed one as ``not_convertible``)."""
    return Case(
        name=f"{case.name}@opset{opset}",
        base=case.name,
        op=case.op,
        domain=case.domain,
        expanded=False,
        opset=opset,
        since_version=since_version(case.op, opset, case.domain),
        graph_ops=case.graph_ops,
        input_dtypes=case.input_dtypes,
        output_dtypes=case.output_dtypes,
        float32=case.float32,
        single_float32_io=case.single_float32_io,
        convert_to=opset,
        const_inputs=case.const_inputs,
        model=case.model,
        inputs=case.inputs,
        outputs=case.outputs,
        rtol=case.rtol,
        atol=case.atol,
    )


def const_variant(case: Case) -> Case | None:
    """``case`` with every graph input but the first turned into a constant (an initializer
    holding the case's data): how exported models use shapes, axes, pads, scales and second
    operands.  None when the case has fewer than two tensor inputs."""
    if case.model is None or len(case.inputs) < 2 or not all(isinstance(a, np.ndarray) for a in case.inputs):
        return None
    first_in = case.input_dtypes[:1]
    return dataclasses.replace(
        case,
        name=f"{case.name}@const",
        base=case.name,
        input_dtypes=first_in,
        float32=is_float32_case(first_in, case.output_dtypes),
        single_float32_io=first_in == ("float32",) and case.output_dtypes == ("float32",),
        const_inputs=True,
    )


def with_const_variants(cases: Iterable[Case]) -> list[Case]:
    """Each case followed by its :func:`const_variant` (when it has one)."""
    out = []
    for c in cases:
        out.append(c)
        v = const_variant(c)
        if v is not None:
            out.append(v)
    return out


def with_versions(cases: Iterable[Case]) -> list[Case]:
    """Each case followed by its down-converted variants."""
    out = []
    for c in cases:
        out.append(c)
        out.extend(version_variant(c, v) for v in version_targets(c))
    return out


# ---------------------------------------------------------------------------- selection
def stable_key(name: str, seed: int) -> str:
    """A hash of the name that does not depend on the process (unlike ``hash``)."""
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def sample(cases: Iterable[Case], n: int, seed: int = 0) -> list[Case]:
    """``n`` cases picked deterministically and spread over operators: one case per op first,
    then a second per op, and so on (round-robin), the ops and each op's cases taken in the order
    of :func:`stable_key` (so a sample smaller than the number of ops is not the first letters of
    the alphabet).  Returned sorted by name."""
    by_op: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_op[c.op].append(c)
    ops = sorted(by_op, key=lambda op: stable_key(op, seed))
    queues = [sorted(by_op[op], key=lambda c: stable_key(c.name, seed)) for op in ops]
    picked: list[Case] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(picked) < n:
                picked.append(q[depth])
        depth += 1
    return sorted(picked, key=lambda c: c.name)


def select_ops(cases: Iterable[Case], ops: Iterable[str]) -> list[Case]:
    """The cases whose operator is one of ``ops`` (case-sensitive ONNX names)."""
    wanted = set(ops)
    return [c for c in cases if c.op in wanted]
