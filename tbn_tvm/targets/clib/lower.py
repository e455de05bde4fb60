"""Lower a prepared Relax module to a flat list of kernel calls plus C source for the kernels.

Relax's own passes legalize and fuse the graph (:func:`tbn_tvm.passes.pipeline.lower_mcu`: bias
adds and activations are folded into the layer kernels); what is left in ``main`` is a straight
sequence of ``call_tir`` bindings (and free reshapes).  Each kernel is scheduled for a small core (intermediate stages inlined so
no scratch memory is needed), lowered by TVM and emitted with the C code generator.  TVM's C
calls every kernel through its packed convention; the generated ``#include``s of TVM headers are
replaced by the project's own minimal ABI header (:data:`ABI_HEADER`), so the library needs no
TVM file at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

ABI_HEADER = "tbn_abi.h"


@dataclass
class Value:
    """A tensor in the lowered graph: a model input, a constant, or a kernel output."""

    name: str
    kind: str  # "input" | "const" | "tensor"
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None  # for constants
    index: int = 0  # input position
    alias_of: str | None = None  # a reshape of another value (same bytes)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Step:
    kernel: str
    args: list[str]  # value names, inputs first then the outputs
    outs: list[str]  # the values the kernel writes (several for a fused kernel with a tuple result)
    layers: list[str] = field(default_factory=list)  # the model layers this call computes


@dataclass
class LoweredGraph:
    values: dict[str, Value]
    steps: list[Step]
    outputs: list[str]
    kernels: dict[str, object] = field(default_factory=dict)  # name -> PrimFunc

    def root(self, name: str) -> str:
        """Follow reshape aliases to the value that owns the bytes."""
        while self.values[name].alias_of is not None:
            name = self.values[name].alias_of
        return name


def extract(mod, const_names: dict[int, str] | None = None) -> LoweredGraph:
    """Turn a fused module's ``main`` into values and steps; constants are named from
    ``const_names`` (constant hash -> ``<layer>_<buffer>``) where known, else ``c<i>``; each
    step names the layers its call computes (:mod:`tbn_tvm.frontend.identity`)."""
    import tvm
    from tvm import relax, tirx

    from tbn_tvm.errors import TBNError
    from tbn_tvm.frontend.identity import layers_of

    func = mod["main"]
    values: dict[str, Value] = {}
    var_names: dict[object, str] = {}
    const_ids: dict[int, str] = {}

    def ty_of(expr):
        ty = expr.ty
        return tuple(int(d) for d in ty.shape), str(ty.dtype)

    for i, p in enumerate(func.params):
        shape, dtype = ty_of(p)
        name = f"in{i}"
        values[name] = Value(name, "input", shape, dtype, index=i)
        var_names[p] = name

    def value_of(expr) -> str:
        if isinstance(expr, tvm.ir.GenericConst):
            key = expr.__hash__()
            if key not in const_ids:
                arr = expr.value.numpy()
                name = (const_names or {}).get(key) or f"c{len(const_ids)}"
                if name in values:
                    name = f"{name}_{len(const_ids)}"
                const_ids[key] = name
                values[name] = Value(name, "const", tuple(arr.shape), str(arr.dtype), data=arr)
            return const_ids[key]
        if isinstance(expr, relax.Var) and expr in var_names:
            return var_names[expr]
        raise TBNError(f"the C back end cannot handle the expression {type(expr).__name__} in the graph")

    steps: list[Step] = []
    kernels: dict[str, object] = {}
    body = func.body
    for block in body.blocks:
        for binding in block.bindings:
            var, expr = binding.var, binding.value
            name = f"t{len(steps)}_{len(var_names)}"
            if (
                isinstance(expr, tvm.ir.Call)
                and isinstance(expr.op, tvm.ir.Op)
                and expr.op.name == "relax.call_tir"
            ):
                gv = expr.args[0]
                args = [value_of(a) for a in expr.args[1].fields]
                layers = layers_of(expr)  # the call site's layers (its span)
                prim = mod[gv]
                if not isinstance(prim, tirx.PrimFunc):
                    raise TBNError(f"the C back end expected a TIR kernel, got {gv.name_hint}")
                if _is_view(prim, args, var, values):
                    # a reshape kernel RewriteDataflowReshape left (the function's result): a
                    # view of its input's bytes, no copy
                    shape, dtype = ty_of(var)
                    src = args[0]
                    values[name] = Value(name, values[src].kind, shape, dtype, alias_of=src)
                    var_names[var] = name
                    continue
                kernels[gv.name_hint] = prim
                if isinstance(var.ty, relax.TupleType):  # a fused kernel with several outputs
                    outs = []
                    for k, field_ty in enumerate(var.ty.fields):
                        out_name = f"{name}_{k}"
                        values[out_name] = Value(
                            out_name, "tensor", tuple(int(d) for d in field_ty.shape), str(field_ty.dtype)
                        )
                        outs.append(out_name)
                    steps.append(Step(gv.name_hint, [*args, *outs], outs, layers))
                    var_names[var] = "(" + ",".join(outs) + ")"
                    continue
                shape, dtype = ty_of(var)
                values[name] = Value(name, "tensor", shape, dtype)
                steps.append(Step(gv.name_hint, [*args, name], [name], layers))
            elif (
                isinstance(expr, tvm.ir.Call)
                and isinstance(expr.op, tvm.ir.Op)
                and expr.op.name == "relax.reshape"
            ):
                src = value_of(expr.args[0])
                shape, dtype = ty_of(var)
                values[name] = Value(
                    name,
                    values[src].kind if values[src].kind == "const" else "tensor",
                    shape,
                    dtype,
                    alias_of=src,
                    data=None,
                )
            elif isinstance(expr, relax.Tuple):
                var_names[var] = "(" + ",".join(value_of(f) for f in expr.fields) + ")"
                continue
            elif isinstance(expr, relax.TupleGetItem):
                fields = value_of(expr.tuple_value)
                if not fields.startswith("("):
                    raise TBNError("the C back end found a tuple it cannot follow in the graph")
                var_names[var] = fields[1:-1].split(",")[int(expr.index)]
                continue
            elif isinstance(expr, relax.Var | tvm.ir.GenericConst):
                var_names[var] = value_of(expr)
                continue
            else:
                op = (
                    expr.op.name
                    if isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op)
                    else type(expr).__name__
                )
                raise TBNError(
                    f"the C back end cannot lower the Relax operation {op}",
                    hint="this operator has no TIR legalization in TVM 0.27",
                )
            var_names[var] = name
    ret = body.body
    if isinstance(ret, relax.Tuple):
        outputs = [value_of(f) for f in ret.fields]
    else:
        out = value_of(ret)
        outputs = out[1:-1].split(",") if out.startswith("(") else [out]
    return LoweredGraph(values, steps, outputs, kernels)


def _is_view(prim, args: list[str], var, values: dict) -> bool:
    """Whether a ``call_tir`` is a reshape of its one tensor argument (same dtype, same
    element count, row-major order kept: :func:`tvm.relax.analysis.has_reshape_pattern`)."""
    from tvm import relax

    if len(args) != 1 or not isinstance(var.ty, relax.TensorType):
        return False
    src = values[args[0]]
    try:
        shape = tuple(int(d) for d in var.ty.shape)
    except (TypeError, ValueError):
        return False
    if str(var.ty.dtype) != src.dtype or int(np.prod(shape)) != int(np.prod(src.shape)):
        return False
    return bool(relax.analysis.has_reshape_pattern(prim))


_INCLUDE = re.compile(r'^#include "tvm/[^"]+"\s*$', re.M)
_WORKSPACE = re.compile(r"TVMBackendAllocWorkspace\(\s*\d+\s*,\s*[^,]+,\s*\(uint64_t\)(\d+)")


@dataclass
class KernelSource:
    code: str
    symbols: dict[str, str]  # kernel name -> C symbol
    workspace_bytes: int  # scratch memory the kernels may ask for at once (bump allocator)
    scheduled: dict[str, object] = field(default_factory=dict)  # kernel name -> the PrimFunc emitted


def kernels_to_c(kernels: dict[str, object], schedule=None) -> KernelSource:
    """C source for the kernels (TVM's C code generator, asserts disabled); ``schedule`` maps a
    PrimFunc to its scheduled copy (the back end's choice; None keeps TVM's default loops)."""
    import tvm

    from tbn_tvm.targets.clib import intrin

    intrin.register()
    funcs = {}
    for name, prim in kernels.items():
        f = schedule(prim) if schedule is not None else prim
        funcs[name] = f.with_attr("global_symbol", name)
    mod = tvm.IRModule(funcs)
    from tbn_tvm.errors import TBNError
    from tbn_tvm.quiet import captured

    # a tuned schedule may vectorise loops; C for a Cortex-M has no vector types: serial loops
    config = {"tirx.disable_assert": True, "tirx.disable_vectorize": True}
    with captured(), tvm.transform.PassContext(opt_level=3, config=config):
        try:
            rt = tvm.tirx.build(mod, target=tvm.target.Target("c"))
        except Exception as e:  # noqa: BLE001 - an op TVM's C code generator cannot emit
            msg = " ".join(str(e).split())
            raise TBNError(
                f"the C code generator cannot emit the kernels ({msg[-200:]})",
                hint="this operator is not supported on Cortex-M; it builds for llvm",
            ) from None
    code = rt.inspect_source()
    code = _INCLUDE.sub("", code)
    code = code.replace("#define TVM_EXPORTS\n", f'#include "{ABI_HEADER}"\n', 1)
    # the library context pointer TVM declares is unused on a microcontroller
    code = re.sub(r"^void\* __tvm_ffi__library_ctx = NULL;\n", "", code, flags=re.M)
    workspace = 0
    for chunk in re.split(r"\nTVM_DLL int32_t ", code):
        need = sum((int(n) + 15) // 16 * 16 for n in _WORKSPACE.findall(chunk))
        workspace = max(workspace, need)
    return KernelSource(code, {n: f"__tvm_ffi_{n}" for n in kernels}, workspace, funcs)
