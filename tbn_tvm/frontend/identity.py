"""A layer's identity on the IR: the span of the call that computes it.

The importer (:mod:`tbn_tvm.frontend.importer`) gives the ``matmul`` / ``conv`` call of every
weighted ONNX node (:func:`tbn_tvm.frontend.layers.weighted_layers`) a span naming its layer.
Every rewrite after it keeps that span on the call that computes the layer, whatever happens to
the weight's bytes: FoldConstant rebuilds calls with their span, FoldAffine
(:mod:`tbn_tvm.passes.fold_affine`) scales the weight and keeps it, CompressWeights names the
kernel, its C arrays and its report entry from it and gives it to the ``call_tir`` it emits,
Legalize (:mod:`tbn_tvm.passes.legalize`) gives it to the ``call_tir`` of a dense layer, and
:func:`tbn_tvm.passes.pipeline.fuse` to the call of the fused kernel that computes the layer.
The back ends read it per call site (:func:`layers_of`): a kernel called by several layers, or
two layers with the same weight, are told apart.

The span's source name is ``tbn.layers:`` followed by the JSON list of the layer names (one
name, or several for a kernel that computes several layers); no other span of TVM's importer
starts so.

>>> from tvm import relax
>>> x = relax.Var("x", relax.TensorType((1, 4), "float32"))
>>> call = with_layers(relax.op.nn.relu(x), ["fc1"])
>>> layers_of(call)
['fc1']
"""

from __future__ import annotations

import json
from collections.abc import Sequence

PREFIX = "tbn.layers:"

#: Relax operators that compute a weighted layer (what the importer tags).
LAYER_OPS = frozenset(
    {
        "relax.matmul",
        "relax.nn.conv1d",
        "relax.nn.conv2d",
        "relax.nn.conv3d",
        "relax.nn.conv1d_transpose",
        "relax.nn.conv2d_transpose",
        "relax.nn.conv3d_transpose",
    }
)


def layer_span(names: Sequence[str]):
    """The span that names ``names`` (a ``tvm.ir.Span``)."""
    import tvm

    return tvm.ir.Span(tvm.ir.SourceName(PREFIX + json.dumps(list(names))), 1, 1, 0, 0)


def names_in_span(span) -> list[str]:
    """The layer names a span carries ([] for any other span or None)."""
    if span is None:
        return []
    source = str(span.source_name.name) if span.source_name is not None else ""
    if not source.startswith(PREFIX):
        return []
    try:
        names = json.loads(source[len(PREFIX) :])
    except ValueError:
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def layers_of(expr) -> list[str]:
    """The layers the call ``expr`` computes, from its span ([] when it names none)."""
    return names_in_span(getattr(expr, "span", None))


def with_span(call, span):
    """A copy of the Relax call ``call`` with ``span`` (the same call when it has it already)."""
    from tvm import relax

    if span is None or (call.span is not None and call.span.same_as(span)):
        return call
    return relax.Call(call.op, call.args, call.attrs, call.ty_args, span)


def with_layers(call, names: Sequence[str]):
    """A copy of the Relax call ``call`` naming ``names`` as the layers it computes."""
    return with_span(call, layer_span(names)) if names else call


def tag_layer_call(expr, name: str, bb):
    """``expr`` (what a converter returned for a weighted node, not normalized yet) with its
    layer call, the first :data:`LAYER_OPS` call found in it outside emitted bindings, naming
    ``name``; returns the expression and whether a call was found.  The layer call's operands
    are bound first (with ``bb``, a ``relax.BlockBuilder``): normalizing a call whose operands
    are not bound yet rebuilds it without its span."""
    import tvm
    from tvm import relax

    if isinstance(expr, relax.Call):
        if isinstance(expr.op, tvm.ir.Op) and expr.op.name in LAYER_OPS:
            args = [bb.emit(a) if isinstance(a, relax.Call | relax.Tuple) else a for a in expr.args]
            call = relax.Call(expr.op, args, expr.attrs, expr.ty_args, expr.span)
            return with_layers(call, [name]), True
        args = list(expr.args)
        for i, arg in enumerate(args):
            new, found = tag_layer_call(arg, name, bb)
            if found:
                args[i] = new
                return relax.Call(expr.op, args, expr.attrs, expr.ty_args, expr.span), True
        return expr, False
    if isinstance(expr, relax.Tuple):
        fields = list(expr.fields)
        for i, f in enumerate(fields):
            new, found = tag_layer_call(f, name, bb)
            if found:
                fields[i] = new
                return relax.Tuple(fields), True
    return expr, False
