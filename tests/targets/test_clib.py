"""The static C library: memory plan, and the generated C run on the host against onnxruntime."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx_zoo as zoo
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tbn_tvm.targets.clib.memory_plan import Interval, check, plan


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 20), st.integers(0, 5)), min_size=1, max_size=25)
)
def test_memory_plan_never_overlaps_live_tensors(items):
    ivs = [Interval(f"t{i}", size, first, first + span) for i, (size, first, span) in enumerate(items)]
    offsets, total = plan(ivs)
    check(ivs, offsets)
    assert all(o % 16 == 0 for o in offsets.values())
    assert total <= sum((iv.size + 15) // 16 * 16 for iv in ivs)
    # at the busiest step the arena holds at least the live tensors
    for step in range(0, 26):
        live = sum(iv.size for iv in ivs if iv.first <= step <= iv.last)
        assert total >= live


def test_memory_plan_reuses_dead_space():
    offsets, total = plan([Interval("a", 1024, 0, 1), Interval("b", 1024, 1, 2), Interval("c", 1024, 2, 3)])
    assert offsets["a"] == offsets["c"] and total == 2048


HOST_MAIN = r"""
#include <stdio.h>
#include "model.h"
int main(void) {
  static float in[TBN_MODEL_INPUT_SIZE], out[TBN_MODEL_OUTPUT_SIZE];
  while (fread(in, sizeof(float), TBN_MODEL_INPUT_SIZE, stdin) == TBN_MODEL_INPUT_SIZE) {
    if (tbn_model_run(in, out) != 0) return 3;
    fwrite(out, sizeof(float), TBN_MODEL_OUTPUT_SIZE, stdout);
  }
  return 0;
}
"""


def _build_and_run(model, x: np.ndarray, tmp_path, reuse_rows: bool = True) -> np.ndarray:
    from tbn_tvm.frontend.onnx import load_onnx, to_relax
    from tbn_tvm.passes.pipeline import lower_mcu, prepare
    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu
    from tbn_tvm.targets.clib.driver import write_library
    from tbn_tvm.targets.clib.lower import extract, kernels_to_c

    graph = extract(lower_mcu(prepare(to_relax(load_onnx(model)), reuse_rows=reuse_rows, simd=False).mod))
    lib = tmp_path / "lib"
    lib.mkdir()
    write_library(graph, kernels_to_c(graph.kernels, schedule_prim_mcu), lib)
    (lib / "main.c").write_text(HOST_MAIN)
    exe = tmp_path / "model"
    srcs = [str(lib / n) for n in ("model.c", "weights.c", "kernels.c", "main.c")]
    build = subprocess.run(
        ["cc", "-std=gnu11", "-O1", "-Wall", "-Werror", f"-I{lib}", *srcs, "-o", str(exe), "-lm"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    n = x.shape[0]
    res = subprocess.run(
        [str(exe)], input=np.ascontiguousarray(x, np.float32).tobytes(), capture_output=True, check=True
    )
    return np.frombuffer(res.stdout, np.float32).reshape(n, -1)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a host C compiler")
@pytest.mark.parametrize(
    "name",
    [
        "gemm_tiled_bias",
        "conv2d_tiled",
        "conv1d_tiled",
        "cnn",
        "bn_folded_conv",
        "gemm_l_k_coprime",
        "conv_bn",
        "matmul_3d",
    ],
)
@pytest.mark.parametrize("reuse_rows", [True, False])
def test_c_library_matches_onnxruntime(name, reuse_rows, tmp_path):
    case = getattr(zoo, name)()
    feeds = case.sample(seed=3, n=4)[case.input_name]
    got = _build_and_run(case.model, feeds.reshape(4, -1), tmp_path, reuse_rows)
    ref = np.stack([zoo.run_onnxruntime(case.model, {case.input_name: x})[0].reshape(-1) for x in feeds])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
