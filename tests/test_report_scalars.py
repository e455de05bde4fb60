"""``inspect`` counts the scalar constants TVM's importer makes of some operators' attributes
(HardSwish's 3 and 6, LayerNormalization's epsilon ...), so that its constant bytes equal the
build's (issue 20: a MobileNetV3's HardSwish and HardSigmoid gates made the totals disagree).
Checked on ONNX's own node tests of every operator :data:`tbn_tvm.report.IMPORTER_SCALARS`
lists, plus Gemm, PRelu and LayerNormalization (whose count depends on the node), with and
without constant second inputs; and on a ConvNeXt-style LayerNormalization without its extra
outputs (``tests/test_layer_identity.py`` checks a MobileNetV3's HardSwish and HardSigmoid)."""

from __future__ import annotations

import pytest

from tbn_tvm.report import IMPORTER_SCALARS

OPS = sorted({*IMPORTER_SCALARS, "Gemm", "PRelu", "LayerNormalization"})


def _cases():
    from conformance.cases import collect, with_const_variants

    return [
        c
        for c in with_const_variants(collect().values())
        if c.op in OPS and c.float32 and not c.expanded and c.domain in ("", "ai.onnx")
    ]


def test_every_listed_operator_has_node_tests():
    assert {c.op for c in _cases()} == set(OPS)


@pytest.mark.parametrize("op", OPS)
def test_inspect_counts_the_constants_the_build_keeps(op):
    from conformance.worker import freeze_inputs
    from tbn_tvm.errors import TBNError
    from tbn_tvm.frontend.onnx import load_onnx, to_relax
    from tbn_tvm.passes.pipeline import prepare
    from tbn_tvm.quiet import captured
    from tbn_tvm.report import inspect

    checked = 0
    for case in (c for c in _cases() if c.op == op):
        model = freeze_inputs(case.model, list(case.inputs)[1:]) if case.const_inputs else case.model
        try:
            with captured():
                loaded = load_onnx(model, None)
                report = inspect(loaded)
                built = prepare(to_relax(loaded, [lr.layer for lr in report.layers])).constant_bytes()
        except TBNError:  # a use tbn-tvm refuses: nothing built
            continue
        assert report.totals()["constant_bytes"] == built, case.name
        checked += 1
    assert checked, f"no {op} case built"


def test_layer_norm_without_its_statistics_outputs_adds_no_scalar():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tbn_tvm.frontend.onnx import load_onnx, to_relax
    from tbn_tvm.passes.pipeline import prepare
    from tbn_tvm.report import inspect

    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        [
            numpy_helper.from_array(np.ones(8, np.float32), "g"),
            numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        ],
    )
    loaded = load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), None)
    report = inspect(loaded)
    assert report.totals()["constant_bytes"] == 64
    assert prepare(to_relax(loaded)).constant_bytes() == 64
