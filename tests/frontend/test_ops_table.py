"""The project's supported-operator table and the op check (tbn_tvm.frontend.ops)."""

from __future__ import annotations

import pytest
from onnx import TensorProto as T
from onnx import helper as h

from tbn_tvm.errors import TBNError
from tbn_tvm.frontend import ops


def _model(op_types, opset=17):
    nodes, prev = [], "x"
    for i, op in enumerate(op_types):
        nodes.append(h.make_node(op, [prev], [f"t{i}"], name=f"n{i}"))
        prev = f"t{i}"
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, [2])],
        [h.make_tensor_value_info(prev, T.FLOAT, [2])],
    )
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def test_table_is_the_conformance_table():
    table = ops.supported()
    for op in ("Conv", "Gemm", "MatMul", "Relu", "Add", "Reshape", "BatchNormalization", "ConvTranspose"):
        assert op in table, op
    assert all(isinstance(v, int) for vs in table.values() for v in vs)


def test_versions_not_verified_are_refused(monkeypatch):
    monkeypatch.setattr(ops, "supported", lambda: {"Relu": [14], "Abs": [13]})
    ops.check_nodes(_model(["Relu", "Abs"]), 17, "m")
    with pytest.raises(TBNError) as err:
        ops.check_nodes(_model(["Relu", "Abs", "Neg", "Neg"], opset=13), 13, "m")
    line = err.value.render()
    assert (
        "Relu-13 (supported: 14)" in line
        and "Neg (nodes 'n2', 'n3')" in line
        and "Abs" not in line.split("supported:")[0]
    )


def test_versions_built_for_the_host_only_are_refused_for_cortex_m(monkeypatch):
    monkeypatch.setattr(ops, "supported", lambda: {"Relu": [14], "Abs": [13]})
    monkeypatch.setattr(ops, "host_only", lambda: {"Abs": [13]})
    ops.check_nodes(_model(["Relu", "Abs"]), 17, "m")  # the host
    ops.check_nodes(_model(["Relu", "Abs"]), 17, "m", "host")
    with pytest.raises(TBNError) as err:
        ops.check_nodes(_model(["Relu", "Abs"]), 17, "m", "cortex-m")
    assert "Abs-13 (builds for the host, not for Cortex-M) (node 'n1')" in err.value.render()
    assert "Relu" not in err.value.render()


def test_a_cortex_m_run_is_merged_as_its_section():
    from conformance.report import merged_table

    host = {
        "target": "llvm",
        "ops": {"Abs": {"versions": [6, 13]}, "Relu": {"versions": [6, 14]}, "Erf": {"versions": [13]}},
        "failing": {},
    }
    mcu = {
        "target": "cortex-m4",
        "date": "d",
        "ops": {"Relu": {"versions": [14], "full": [14]}},
        "failing": {
            "Abs": {"13": {"reasons": [{"status": "wrong", "message": "y: 1/4 values differ"}]}},
            "Relu": {"6": {"reasons": [{"status": "refused", "message": "the model's output is its input"}]}},
            "Neg": {"13": {"reasons": [{"status": "internal", "message": "boom"}]}},
            "Erf": {
                "13": {"reasons": [{"status": "refused", "message": "the C code generator cannot emit it"}]}
            },
        },
    }
    merged = merged_table(host, mcu)
    assert merged["ops"] == host["ops"] and merged["target"] == "llvm"
    assert merged["cortex_m"]["host_only"] == {"Abs": [13], "Erf": [13]}  # Neg: not on the host
    assert merged["cortex_m"]["ops"] == mcu["ops"] and merged["cortex_m"]["target"] == "cortex-m4"
    again = merged_table(merged, {**host, "ops": {"Abs": {"versions": [6]}}})  # a later host run
    assert again["cortex_m"]["host_only"] == {} and again["cortex_m"]["ops"] == mcu["ops"]


def test_all_ops_switch_keeps_foreign_domains_out(monkeypatch):
    monkeypatch.setattr(ops, "supported", lambda: {})
    monkeypatch.setenv("TBN_TVM_ALL_OPS", "1")
    ops.check_nodes(_model(["Relu"]), 17, "m")
    m = _model(["Relu"])
    m.graph.node[0].domain = "com.microsoft"
    with pytest.raises(TBNError, match="com.microsoft.Relu"):
        ops.check_nodes(m, 17, "m")


def test_inspect_does_not_import_tvm():
    import subprocess
    import sys

    code = (
        "import sys, tbn_tvm\n"
        "tbn_tvm.inspect('examples/tbn-mnist-mlp.onnx').table()\n"
        "print(any(m == 'tvm' or m.startswith('tvm.') for m in sys.modules))"
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert out.stdout.strip() == "False"
