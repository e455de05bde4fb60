"""The format contract: a new format is one module plus one registry line.

The test copies the package, adds ``tests/formats/plugin/int2grid.py`` as
``tbn_tvm/formats/int2grid.py`` and one line to ``FORMATS``, checks that this is the whole diff,
then compiles a model whose weight is on a 2-bit grid with the copy (in a subprocess), on llvm
and on QEMU Cortex-M4, and compares with the format's numpy decode.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = Path(__file__).resolve().parent / "plugin" / "int2grid.py"
REGISTRY_LINE = '    "tbn_tvm.formats.int2grid:Int2GridFormat",\n'


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pkg")
    shutil.copytree(REPO / "tbn_tvm", root / "tbn_tvm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PLUGIN, root / "tbn_tvm" / "formats" / "int2grid.py")
    init = root / "tbn_tvm" / "formats" / "__init__.py"
    lines = init.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("FORMATS: list[str] = [")) + 1
    init.write_text("".join([*lines[:at], REGISTRY_LINE, *lines[at:]]))
    return root


def _changed_files(a: Path, b: Path) -> dict[str, int]:
    """Relative path -> number of added/removed lines, over every .py of the two trees."""
    out = {}
    files = {p.relative_to(a) for p in a.rglob("*.py")} | {p.relative_to(b) for p in b.rglob("*.py")}
    for rel in sorted(files):
        if "__pycache__" in rel.parts:
            continue
        old = (a / rel).read_text().splitlines() if (a / rel).exists() else []
        new = (b / rel).read_text().splitlines() if (b / rel).exists() else []
        n = sum(
            1
            for d in difflib.unified_diff(old, new, lineterm="", n=0)
            if d[:1] in "+-" and d[:3] not in ("+++", "---")
        )
        if n:
            out[str(rel)] = n
    return out


def test_the_diff_is_one_module_and_one_line(package):
    changed = _changed_files(REPO / "tbn_tvm", package / "tbn_tvm")
    module_lines = len(PLUGIN.read_text().splitlines())
    assert changed == {"formats/__init__.py": 1, "formats/int2grid.py": module_lines}


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    import tbn_tvm
    from tbn_tvm.formats import detect_layer_weight
    target = sys.argv[1]
    rng = np.random.default_rng(0)
    q = rng.integers(-2, 2, size=(24, 40)).astype(np.float32)
    w = (np.float32(0.125) * q).astype(np.float32)          # Linear [out, in]
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24])],
        [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
    fmt = detect_layer_weight(np.ascontiguousarray(w.T), "matmul").format
    x = rng.standard_normal((1, 40)).astype(np.float32)
    ref = x.astype(np.float64) @ fmt.decode().astype(np.float64).T
    cm = tbn_tvm.compile(m, target)
    y = cm.run(x)
    print(json.dumps({"format": tbn_tvm.inspect(m).to_dict()["layers"][0]["format"],
                      "decode_equal": bool(np.array_equal(fmt.decode(), w)),
                      "max_rel": float(np.max(np.abs(y - ref)) / np.max(np.abs(ref))),
                      "weight_bytes": cm.report()["total"]["weight_bytes"]}))
    """
)


def _run(package: Path, target: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(package)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, target],
        capture_output=True,
        text=True,
        env=env,
        cwd=package,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_new_format_runs_on_llvm(package):
    got = _run(package, "llvm")
    assert got["format"] == "int2grid" and got["decode_equal"]
    assert got["max_rel"] <= 1e-6
    assert got["weight_bytes"] == (24 * 40 * 2 + 31) // 32 * 4 + 4


@pytest.mark.qemu
def test_new_format_runs_on_cortex_m4(package):
    got = _run(package, "cortex-m4")
    assert got["format"] == "int2grid" and got["max_rel"] <= 1e-6


def test_plugin_decode_against_numpy():
    """The format's own decode, before any compiler is involved (numpy reference)."""
    sys.path.insert(0, str(PLUGIN.parent))
    try:
        from int2grid import Int2GridFormat
    finally:
        sys.path.remove(str(PLUGIN.parent))
    rng = np.random.default_rng(1)
    w = (np.float32(0.25) * rng.integers(-2, 2, size=(5, 7))).astype(np.float32)
    fmt = Int2GridFormat.detect(w)
    assert fmt is not None and np.array_equal(fmt.decode(), w)
    assert Int2GridFormat.detect(w + np.float32(0.01)) is None
