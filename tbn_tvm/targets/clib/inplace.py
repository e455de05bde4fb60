"""Which inputs a kernel may overwrite with its output (in-place tensors of the static arena).

A kernel's output ``Y`` may share the bytes of an input ``A`` (of the same shape and dtype)
when, in the scheduled TIR the C code is generated from:

* ``Y`` is written by exactly one ``BufferStore`` and never read (no reduction into it);
* every read of ``A`` lies in the value that store writes, at the very index it writes
  (``Y[i] = f(A[i], ...)``), and ``A``'s data pointer is used nowhere else.

Then each ``A[i]`` is read before ``Y[i]`` replaces it, and never again afterwards, whatever
the loop order: element-wise activations, residual adds and BatchNorm epilogues, fused after a
convolution or alone, qualify; a convolution's own input (read at neighbouring positions) does
not.  The driver (:mod:`tbn_tvm.targets.clib.driver`) then gives ``Y`` the bytes of ``A`` when
``A`` dies at that kernel (TFLite Micro's ``GreedyMemoryPlanner`` places tensors by size over
their lifetimes; sharing a dying input's buffer is what lets a residual block run in two
activations instead of three).

A kernel may also *require* it: the attribute ``tbn.inplace_of`` (an input index) marks a
kernel that writes only part of its output, the rest being that input's bytes (the patch-wise
stages of :mod:`tbn_tvm.targets.clib.patchwise` place each tile of a stage's output into the
full feature map this way).
"""

from __future__ import annotations

#: PrimFunc attribute: the index of the input whose buffer the output must share.
ATTR_INPLACE_OF = "tbn.inplace_of"

_SKIP_FIELDS = frozenset(("span", "reads", "writes", "annotations", "alloc_buffers", "ty"))


def _fields(obj):
    info = getattr(type(obj), "__tvm_ffi_type_info__", None)
    while info is not None:
        for f in info.fields:
            if f.name not in _SKIP_FIELDS:
                yield f.name
        info = info.parent_type_info


def _is_load(n) -> bool:
    return type(n).__name__ in ("TensorLoad", "BufferLoad")


def _source(load):
    """The buffer (in TVM 0.27 a buffer is a ``Var``) a load reads."""
    return load.source if hasattr(load, "source") else load.buffer


def _walk(node, visit, store=None) -> None:
    """Call ``visit(node, store)`` on every TIR node under ``node`` (pre-order); ``store`` is
    the ``BufferStore`` whose value the node lies in (None outside any).  The buffer a store
    writes or a load reads is not visited as a node (a ``Var`` met elsewhere is a use of its
    pointer)."""
    import tvm_ffi
    from tvm import tirx

    stack = [(node, store)]
    while stack:
        n, st = stack.pop()
        if n is None or isinstance(n, str | int | float | bool):
            continue
        if isinstance(n, list | tuple) or type(n).__name__ in ("Array", "List"):
            stack.extend((c, st) for c in n)
            continue
        if type(n).__name__ in ("Map", "Dict"):
            stack.extend((c, st) for c in n.values())
            continue
        if not isinstance(n, tvm_ffi.core.Object):
            continue
        visit(n, st)
        if isinstance(n, tirx.BufferStore):
            stack.append((n.value, n))
            stack.extend((i, st) for i in n.indices)
            continue
        if _is_load(n):
            stack.extend((i, st) for i in n.indices)
            continue
        if isinstance(n, tirx.Var):
            continue
        for name in _fields(n):
            try:
                stack.append((getattr(n, name), st))
            except Exception:  # noqa: BLE001 - a field without a Python getter
                continue


def writable_inputs(prim) -> list[int]:
    """Indices of the parameters of ``prim`` (inputs first, the output last: each a buffer)
    whose bytes the output may take over (see the module docstring); ``[]`` where the rules
    above do not prove it safe (a reduction into the output, an input read at another index,
    a buffer view)."""
    import tvm_ffi
    from tvm import tirx

    params = list(prim.params)
    if len(params) < 2:
        return []
    out = params[-1]
    stores, loads, bare = [], [], []
    views = []

    def visit(n, store):
        if isinstance(n, tirx.BufferStore):
            stores.append(n)
        elif _is_load(n):
            loads.append((n, store))
        elif isinstance(n, tirx.Var):
            bare.append(n)
        elif type(n).__name__ == "SBlock" and len(getattr(n, "match_buffers", []) or []):
            views.append(n)

    _walk(prim.body, visit)
    if views:
        return []
    y_stores = [s for s in stores if s.buffer.same_as(out)]
    if (
        len(y_stores) != 1
        or any(_source(ld).same_as(out) for ld, _ in loads)
        or any(v.same_as(out) for v in bare)
    ):
        return []
    (s,) = y_stores
    found = []
    for j, p in enumerate(params[:-1]):
        if str(getattr(p, "dtype", "")) != str(out.dtype):
            continue
        try:
            if [int(d) for d in p.shape] != [int(d) for d in out.shape]:
                continue
        except (TypeError, ValueError, AttributeError):
            continue
        if any(v.same_as(p) for v in bare):  # its pointer used outside a plain load
            continue
        mine = [(ld, st) for ld, st in loads if _source(ld).same_as(p)]
        if all(
            st is not None
            and st.same_as(s)
            and len(ld.indices) == len(s.indices)
            and all(tvm_ffi.structural_equal(a, b) for a, b in zip(ld.indices, s.indices, strict=True))
            for ld, st in mine
        ):
            found.append(j)
    return found


def required_input(prim) -> int | None:
    """The input index a kernel's ``tbn.inplace_of`` attribute names, else None."""
    attrs = prim.attrs
    if attrs is None or ATTR_INPLACE_OF not in attrs:
        return None
    return int(attrs[ATTR_INPLACE_OF])
