"""Write the static C library: ``model.h``, ``model.c`` (driver + arena), ``weights.c`` and
``kernels.c`` (TVM-generated), plus the ABI header.

Everything is deterministic (names, order, number formatting), so the same model gives the
same bytes every time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.clib.lower import ABI_HEADER, KernelSource, LoweredGraph
from tbn_tvm.targets.clib.memory_plan import Interval, check, plan

_DL_CODE = {"i": 0, "u": 1, "f": 2, "b": 1}
_C_TYPE = {
    "float32": "float",
    "uint32": "uint32_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "int8": "int8_t",
    "float64": "double",
    "float16": "uint16_t",  # stored as IEEE binary16 bit patterns; kernels read them as half
    "int16": "int16_t",
    "uint16": "uint16_t",
    "bool": "uint8_t",
}


@dataclass
class LibraryInfo:
    """Sizes the driver knows before compiling anything."""

    arena_bytes: int
    workspace_bytes: int
    weight_bytes: int  # const arrays (flash)
    input_size: int
    output_size: int
    constants: dict[str, int]  # C array name -> bytes
    step_constants: list[list[str]]  # per step: the C arrays it reads
    step_arena: list[int] = None  # per step: arena bytes in use while it runs (high-water mark)
    step_in_place: list[str | None] = None  # per step: the input whose bytes its output took over
    tensors: list[dict] = None  # the arena plan: each tensor's bytes, offset, lifetime, buffer shared


def _non_finite(f: float, suffix: str) -> str:
    """NaN and infinities as constant expressions gcc and clang accept in an initializer (a
    non-finite weight is kept as it is, like onnxruntime does: it reaches the outputs)."""
    if np.isnan(f):
        return f'{"-" if np.signbit(f) else ""}__builtin_nan{suffix}("")'
    return f"{'-' if f < 0 else ''}__builtin_inf{suffix}()"


def _c_literal(dtype: str, v) -> str:
    if dtype == "float32":
        f = float(v)
        if not np.isfinite(f):
            return _non_finite(f, "f")
        return f"{f.hex()}f" if f != 0 else ("-0.0f" if np.signbit(f) else "0.0f")
    if dtype in ("float64",):
        f = float(v)
        return float(v).hex() if np.isfinite(f) else _non_finite(f, "")
    if dtype == "float16":  # bit patterns: NaN and infinities too
        return f"0x{int(np.float16(v).view(np.uint16)):04x}u"
    if dtype == "bool":
        return "1u" if v else "0u"
    if dtype.startswith("u"):
        return f"0x{int(v):08x}u" if dtype == "uint32" else f"{int(v)}u"
    return str(int(v))


def _array(name: str, arr: np.ndarray, per_line: int = 6) -> str:
    dtype = str(arr.dtype)
    if dtype not in _C_TYPE:
        raise TBNError(f"constant of dtype {dtype} is not supported by the C back end")
    flat = arr.reshape(-1)
    items = [_c_literal(dtype, v) for v in flat] or ["0"]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n  ".join(lines)
    return (
        f"/* {dtype}{list(arr.shape)} */\n"
        f"const {_C_TYPE[dtype]} {name}[{max(flat.size, 1)}] __attribute__((aligned(16))) = {{\n  {body}\n}};\n"
    )


def _dtype_struct(dtype: str) -> str:
    dt = np.dtype(dtype)
    return f"{{{_DL_CODE[dt.kind]}, {dt.itemsize * 8}, 1}}"


def _in_place(graph: LoweredGraph, scheduled: dict, last_use: dict, out_name: str, in_name: str):
    """In-place tensors (:mod:`tbn_tvm.targets.clib.inplace`): ``{value: the value whose buffer
    it takes over}`` (followed to the first owner).  A step's output takes the buffer of an
    input it may overwrite when that input is an arena tensor of the same size that dies at
    this step (not the model's input, not a constant); a kernel marked ``tbn.inplace_of`` must
    get it."""
    from tbn_tvm.targets.clib.inplace import required_input, writable_inputs

    owner: dict[str, str] = {}
    for i, step in enumerate(graph.steps):
        if len(step.outs) != 1:
            continue
        out_root = graph.root(step.outs[0])
        prim = scheduled.get(step.kernel) or graph.kernels.get(step.kernel)
        if prim is None:
            continue
        required = required_input(prim)
        candidates = [required] if required is not None else writable_inputs(prim)
        roots = [graph.root(a) for a in step.args[:-1]]
        chosen = None
        for j in candidates:
            a = roots[j]
            v = graph.values[a]
            if (
                out_root == out_name
                or v.kind != "tensor"
                or a in (out_name, in_name)
                or last_use.get(a) != i
                or v.nbytes != graph.values[out_root].nbytes
                or any(r == a and k not in candidates for k, r in enumerate(roots))
            ):
                continue
            chosen = a
            break
        if chosen is None:
            if required is not None:
                raise TBNError(
                    f"kernel {step.kernel} must write into its input {required}, which is still needed",
                    hint="report it with the model",
                )
            continue
        owner[out_root] = owner.get(chosen, chosen)
    return owner


@dataclass
class ArenaPlan:
    """Where every arena tensor lives (:func:`arena_plan`)."""

    offsets: dict[str, int]  # value -> byte offset in the arena
    arena: int  # bytes
    intervals: list[Interval]  # one per buffer (its owner's name)
    groups: dict[str, list[str]]  # buffer owner -> the values sharing the buffer
    shares: dict[str, str]  # value -> the owner whose buffer it took over (in place)
    first_def: dict[str, int]
    last_use: dict[str, int]


def arena_plan(graph: LoweredGraph, scheduled: dict | None = None) -> ArenaPlan:
    """The static arena of ``graph``: each intermediate tensor's lifetime (from the step that
    writes it to the last that reads it), outputs in place of a dying input where the kernel
    allows it (``scheduled``: kernel name -> the PrimFunc emitted, else the graph's own), then
    TFLite Micro's greedy placement by size (:mod:`tbn_tvm.targets.clib.memory_plan`)."""
    if len(graph.outputs) != 1 or sum(1 for v in graph.values.values() if v.kind == "input") != 1:
        raise TBNError("the Cortex-M back end supports models with exactly one input and one output")
    inp = next(v for v in graph.values.values() if v.kind == "input")
    out_name = graph.root(graph.outputs[0])
    last_use: dict[str, int] = {}
    first_def: dict[str, int] = {}
    for i, step in enumerate(graph.steps):
        for a in step.args[:-1]:
            last_use[graph.root(a)] = i
        for o in step.outs:
            first_def.setdefault(graph.root(o), i)
    if out_name == graph.root(inp.name):
        raise TBNError("the model's output is its input; nothing to compile")
    shares = _in_place(graph, scheduled or {}, last_use, out_name, graph.root(inp.name))
    groups: dict[str, list[str]] = {}  # the value owning a buffer -> the values sharing it
    for name in first_def:
        if name != out_name:
            groups.setdefault(shares.get(name, name), []).append(name)
    intervals = []
    for owner, members in groups.items():
        intervals.append(
            Interval(
                owner,
                max(graph.values[m].nbytes for m in members),
                min(first_def[m] for m in members),
                max(last_use.get(m, first_def[m]) for m in members),
            )
        )
    offsets, arena = plan(intervals)
    check(intervals, offsets)
    for owner, members in groups.items():
        for m in members:
            offsets[m] = offsets[owner]
    arena = max(arena, 16)
    return ArenaPlan(offsets, max(arena, 16), intervals, groups, shares, first_def, last_use)


def write_library(
    graph: LoweredGraph, kernels: KernelSource, out: Path, model_name: str = "model"
) -> LibraryInfo:
    """Write the library files into ``out`` (an existing directory)."""
    if len(graph.outputs) != 1 or sum(1 for v in graph.values.values() if v.kind == "input") != 1:
        raise TBNError("the Cortex-M back end supports models with exactly one input and one output")
    inp = next(v for v in graph.values.values() if v.kind == "input")
    out_name = graph.root(graph.outputs[0])
    out_val = graph.values[graph.outputs[0]]
    for v in (inp, out_val):
        if v.dtype != "float32":
            raise TBNError(f"the Cortex-M back end needs float32 inputs and outputs, got {v.dtype}")

    ap = arena_plan(graph, kernels.scheduled)
    offsets, arena, intervals, groups, shares = ap.offsets, ap.arena, ap.intervals, ap.groups, ap.shares
    first_def, last_use = ap.first_def, ap.last_use
    step_arena = [
        max(
            (offsets[iv.name] + iv.size for iv in intervals if iv.first <= i <= iv.last),
            default=0,
        )
        for i in range(len(graph.steps))
    ]
    step_in_place = []
    for step in graph.steps:
        out_root = graph.root(step.outs[0]) if len(step.outs) == 1 else None
        owner = shares.get(out_root) if out_root is not None else None
        shared = next(
            (
                graph.root(a)
                for a in step.args[:-1]
                if owner is not None and shares.get(graph.root(a), graph.root(a)) == owner
            ),
            None,
        )
        step_in_place.append(shared)
    tensors = [
        {
            "name": m,
            "bytes": graph.values[m].nbytes,
            "offset": offsets[m],
            "first_step": first_def[m],
            "last_step": last_use.get(m, first_def[m]),
            **({"shares_buffer_of": owner} if owner != m else {}),
        }
        for owner, members in groups.items()
        for m in members
    ]
    tensors.sort(key=lambda t: (t["first_step"], t["name"]))

    # ---------------------------------------------------------------- C names for values
    cname: dict[str, str] = {}
    constants: dict[str, int] = {}
    weights_c = [
        f"/* Weights of {model_name}, generated by tbn-tvm: const, so they live in flash. */",
        "#include <stdint.h>",
        "",
    ]
    for name, v in graph.values.items():
        if v.kind == "const" and v.alias_of is None:
            c = f"tbn_{name}"
            cname[name] = c
            constants[c] = int(v.data.nbytes)
            weights_c.append(_array(c, np.ascontiguousarray(v.data)))
    weight_bytes = sum(constants.values())

    def pointer(name: str) -> str:
        root = graph.root(name)
        v = graph.values[root]
        if root == graph.root(inp.name):
            return "(void *)in"
        if root == out_name:
            return "(void *)out"
        if v.kind == "const":
            return f"(void *){cname[root]}"
        return f"(void *)(tbn_arena + {offsets[root]})"

    # ---------------------------------------------------------------- driver
    decls, shapes, calls = [], [], []
    symbols = sorted({kernels.symbols[s.kernel] for s in graph.steps})
    for sym in symbols:
        decls.append(f"int32_t {sym}(void *self, void *args, int32_t num_args, void *result);")
    step_constants = []
    for i, step in enumerate(graph.steps):
        lines = [f"  /* step {i}: {step.kernel} */", "  {"]
        used = []
        for j, a in enumerate(step.args):
            v = graph.values[a]
            shp = f"tbn_shape_{i}_{j}"
            dims = ", ".join(str(d) for d in v.shape) or "1"
            shapes.append(f"static const int64_t {shp}[{max(len(v.shape), 1)}] = {{{dims}}};")
            lines.append(
                f"    DLTensor t{j} = {{{pointer(a)}, {{1, 0}}, {len(v.shape)}, {_dtype_struct(v.dtype)}, "
                f"(int64_t *){shp}, NULL, 0}};"
            )
            if graph.values[graph.root(a)].kind == "const":
                used.append(cname[graph.root(a)])
        step_constants.append(used)
        n = len(step.args)
        args = ", ".join(f"{{.type_index = TBN_ARG_DLTENSOR_PTR, .v_ptr = &t{j}}}" for j in range(n))
        lines.append(f"    TVMFFIAny args[{n}] = {{{args}}};")
        lines.append(f"    if ({kernels.symbols[step.kernel]}(NULL, args, {n}, NULL) != 0) return -{i + 1};")
        lines.append("  }")
        calls.extend(lines)

    ws = kernels.workspace_bytes
    model_c = [
        f"/* {model_name}: graph driver generated by tbn-tvm.  No heap, no TVM runtime. */",
        '#include "model.h"',
        f'#include "{ABI_HEADER}"',
        "",
        "/* Intermediate tensors, placed by a static memory plan that reuses space. */",
        "static uint8_t tbn_arena[TBN_MODEL_ARENA_BYTES] __attribute__((aligned(16), unused));",
        "",
        *[
            f"extern const {_C_TYPE[graph.values[n].dtype]} {c}[];"
            for n, c in sorted(cname.items(), key=lambda t: t[1])
        ],
        "",
        *decls,
        "",
        *shapes,
        "",
    ]
    if ws:
        model_c += [
            f"/* Scratch memory some kernels request (largest need of any one kernel: {ws} bytes). */",
            f"static uint8_t tbn_workspace[{ws}] __attribute__((aligned(16)));",
            "static uint32_t tbn_workspace_top;",
            "void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {",
            "  (void)device_type; (void)device_id; (void)code; (void)bits;",
            "  uint32_t size = (uint32_t)((nbytes + 15u) & ~(uint64_t)15u);",
            f"  if (tbn_workspace_top + size > {ws}u) return NULL;",
            "  void *p = tbn_workspace + tbn_workspace_top;",
            "  tbn_workspace_top += size;",
            "  return p;",
            "}",
            "int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {",
            "  (void)device_type; (void)device_id;",
            "  tbn_workspace_top = (uint32_t)((uint8_t *)ptr - tbn_workspace);",
            "  return 0;",
            "}",
            "",
        ]
    model_c += ["int tbn_model_run(const float *in, float *out) {", *calls, "  return 0;", "}", ""]

    guard = "TBN_MODEL_H_"
    in_shape = "x".join(map(str, inp.shape))
    out_shape = "x".join(map(str, out_val.shape))
    model_h = [
        f"/* {model_name}: compiled by tbn-tvm for a microcontroller.",
        f" * input  float32[{in_shape}], output float32[{out_shape}] (row-major). */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        f"#define TBN_MODEL_INPUT_SIZE {int(np.prod(inp.shape))}",
        f"#define TBN_MODEL_OUTPUT_SIZE {int(np.prod(out_val.shape))}",
        f"#define TBN_MODEL_ARENA_BYTES {arena}",
        f"#define TBN_MODEL_WORKSPACE_BYTES {ws}",
        f"#define TBN_MODEL_WEIGHT_BYTES {weight_bytes}",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        "/* Run one inference: reads TBN_MODEL_INPUT_SIZE floats from in, writes TBN_MODEL_OUTPUT_SIZE",
        " * floats to out.  Returns 0, or a negative step number if a kernel failed.  Not reentrant. */",
        "int tbn_model_run(const float *in, float *out);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {guard} */",
        "",
    ]
    (out / "model.h").write_text("\n".join(model_h))
    (out / "model.c").write_text("\n".join(model_c))
    (out / "weights.c").write_text("\n".join(weights_c))
    code = kernels.code
    code = re.sub(r"[ \t]+$", "", code, flags=re.M)
    # TVM's packed calling convention gives every kernel parameters it may not read: the file
    # builds warning-free under -Wall -Wextra -Werror as a plain source (gcc; clang, which may
    # not know -Wunused-but-set-variable)
    pragmas = (
        '#if defined(__clang__)\n#pragma clang diagnostic ignored "-Wunknown-warning-option"\n#endif\n'
        '#if defined(__GNUC__)\n#pragma GCC diagnostic ignored "-Wunused-parameter"\n'
        '#pragma GCC diagnostic ignored "-Wunused-variable"\n'
        '#pragma GCC diagnostic ignored "-Wunused-but-set-variable"\n#endif\n'
    )
    (out / "kernels.c").write_text(f"/* Kernels generated by Apache TVM for tbn-tvm. */\n{pragmas}{code}")
    abi = resources.files("tbn_tvm.targets.clib").joinpath(ABI_HEADER).read_text()
    (out / ABI_HEADER).write_text(abi)
    return LibraryInfo(
        arena,
        ws,
        weight_bytes,
        int(np.prod(inp.shape)),
        int(np.prod(out_val.shape)),
        constants,
        step_constants,
        step_arena,
        step_in_place,
        tensors,
    )
