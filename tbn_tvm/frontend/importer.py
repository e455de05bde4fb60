"""TVM's Relax ONNX importer with the project's converters in front and every failure named.

:class:`_Importer` is TVM's ``ONNXGraphImporter`` with two changes: an operator listed in
:data:`tbn_tvm.frontend.converters.CONVERTERS` is converted by the project's own converter (for
ops where TVM's result is wrong), and any exception raised while converting a node becomes a
:class:`~tbn_tvm.errors.TBNError` naming the node and operator.  TVM's prints and C++ log lines
are captured (:mod:`tbn_tvm.quiet`) and shown only as the tail of such an error.  The call
that computes each weighted layer is given a span naming the layer
(:mod:`tbn_tvm.frontend.identity`): the layer's identity from the import to the C arrays.
"""

from __future__ import annotations

import gc

import onnx

from tbn_tvm.errors import TBNError


class _NodeError(Exception):
    def __init__(self, node, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.node = node
        self.cause = cause


def _importer_class():
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    from tbn_tvm.frontend.converters import CONVERTERS

    class _Importer(ONNXGraphImporter):
        _current = None

        def _parse_value_proto(self, value_proto):
            if isinstance(value_proto, onnx.NodeProto):
                self._current = value_proto  # the node about to be converted
            return super()._parse_value_proto(value_proto)

        graph_outputs: frozenset = frozenset()
        layer_names: dict = {}  # ONNX output name of a weighted node -> its layer name

        def _layer_call(self, op_name, inputs, attrs, opset, name):
            """TVM's conversion of a weighted node with its layer's call tagged before the
            result is normalized (normalizing binds the inner calls, out of reach)."""
            from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

            from tbn_tvm.frontend.identity import tag_layer_call

            convert_map = _get_convert_map()
            if op_name not in convert_map:
                raise NotImplementedError(f"Operator {op_name} not implemented.")
            sym = convert_map[op_name].get_converter(opset)(
                self.bb, inputs, attrs, [self._nodes, self._params]
            )
            sym, _ = tag_layer_call(sym, name, self.bb)
            return self.bb.normalize(sym) if isinstance(sym, relax.Expr) else sym

        def _convert_operator(self, op_name, inputs, attrs, opset):
            node = self._current
            try:
                own = CONVERTERS.get(op_name)
                sym = own(self.bb, inputs, attrs, opset, node) if own is not None else None
                layer = self.layer_names.get(node.output[0]) if node is not None and node.output else None
                if sym is None and layer is not None:
                    sym = self._layer_call(op_name, inputs, attrs, opset, layer)
                elif sym is None:
                    sym = super()._convert_operator(op_name, inputs, attrs, opset)
                elif isinstance(sym, relax.Expr):
                    sym = self.bb.normalize(sym)
                if (
                    isinstance(sym, relax.Expr)
                    and isinstance(sym.ty, relax.ShapeType)
                    and node is not None
                    and node.output[0] in self.graph_outputs
                ):
                    # a shape computed at import time (Shape, Size...) returned as a graph output
                    sym = self.bb.normalize(relax.op.shape_to_tensor(sym))
                return sym
            except TBNError:
                raise
            except Exception as e:  # noqa: BLE001 - TVM raises many types; each becomes one line
                raise _NodeError(node, e) from None

    return _Importer


def import_model(proto: onnx.ModelProto, loaded, inputs=None, layer_names=None):
    """Relax IRModule of ``proto`` (weights as constants) for the static input specs ``inputs``
    (default: those of ``loaded``, whose ``source`` names the model in errors); raises TBNError
    naming the failing node.  ``layer_names`` maps the output of each weighted node to its layer
    name, given to the call computing it (:mod:`tbn_tvm.frontend.identity`)."""
    from tbn_tvm.frontend.onnx import _printable
    from tbn_tvm.quiet import captured

    inputs = loaded.inputs if inputs is None else inputs
    importer = _importer_class()(
        {t.name: list(t.shape) for t in inputs},
        {t.name: t.dtype for t in inputs},
        keep_params_in_input=False,
        sanitize=True,
    )
    importer.graph_outputs = frozenset(o.name for o in proto.graph.output)
    importer.layer_names = dict(layer_names or {})
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    error: TBNError | None = None
    mod = None
    with captured():
        try:
            mod = importer.from_onnx(proto.graph, opset)
        except TBNError as e:
            error = TBNError(e.message, e.hint)
        except _NodeError as e:
            node = e.node
            what = (
                f"{node.op_type} node '{_printable(node.name or (node.output[0] if node.output else '?'))}'"
            )
            msg = " ".join(f"{type(e.cause).__name__}: {e.cause}".split())
            error = TBNError(
                f"{loaded.source}: cannot convert {what}: {msg[:240]}",
                hint="this use of the operator is not supported by tbn-tvm; change it in the exporter "
                "or report it with the model",
            )
        except Exception as e:  # noqa: BLE001 - outside any node: assembling the function
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            error = TBNError(
                f"{loaded.source}: the import failed: {msg[:240]}", hint="report it with the model"
            )
        # a failed import leaves TVM's BlockBuilder mid-function; it warns when destroyed, so
        # drop every reference to it (the exception's frames included) inside the capture
        importer = None
        gc.collect()
    if error is not None:
        raise error
    return mod
