"""The CUDA back end (``tbn_tvm.targets.cuda``) and its schedules (``tbn_tvm.schedules.cuda``).

Without a GPU: the authors' MNIST MLP and a tiled CNN compile for ``cuda`` (sm_90, and sm_80)
with nvcc to PTX and cubin; the artifact and the generated code hold only the tile words and
the scales (no dense weight: no float constant of a weight's size, no run of a dense weight's
bytes in any output file); every layer kernel gets its hand schedule; the schedules' numerics,
run through the OpenCL executor (``tbn_tvm.targets.gpu_check``, the same scheduled TIR on
PoCL), match onnxruntime within 1e-5 relative, at batch 1 (GEMV) and batched (GEMM, conv);
running needs a GPU and says so in one line; ``benchmarks/gpu.py`` runs end to end in its
numerics-only mode.  With a GPU (``tvm.cuda(0).exist``): the built and the loaded module run on
it and match onnxruntime.  Skips name what is missing (nvcc, pyopencl / PoCL, a GPU).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest
from onnx import TensorProto, helper, numpy_helper

import tbn_tvm
from tbn_tvm.errors import TBNError
from tbn_tvm.targets import cuda, gpu_check, resolve_target

MLP = zoo.REPO_ROOT / "examples" / "tbn-mnist-mlp.onnx"
HAS_GPU = cuda.gpu_present()


def _nvcc_missing() -> str | None:
    try:
        cuda.find_nvcc()
    except TBNError as e:
        return e.message
    return None


NVCC_MISSING = _nvcc_missing()
OPENCL_MISSING = gpu_check.unavailable()
needs_nvcc = pytest.mark.skipif(NVCC_MISSING is not None, reason=f"nvcc absent: {NVCC_MISSING}")
needs_opencl = pytest.mark.skipif(
    OPENCL_MISSING is not None, reason=f"OpenCL check unavailable: {OPENCL_MISSING}"
)
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU here (tvm.cuda(0).exist is False)")


def tiled_cnn(batch: int = 1) -> onnx.ModelProto:
    """[B,3,16,16] -> Conv 3->16 3x3 pad 1 (tiled p=4, BatchNorm folded: per-channel scales, bias)
    -> Relu -> Conv 16->32 3x3 stride 2 pad 1 (tiled p=4, per-copy scales, bias) -> Relu ->
    Flatten -> Gemm 2048->10 (tiled p=4, bias)."""
    rng = np.random.default_rng(7)
    w1 = zoo.tiled_weight((16, 3, 3, 3), 4, "per_channel", rng)
    w2 = zoo.tiled_weight((32, 16, 3, 3), 4, "per_copy", rng)
    w3 = zoo.tiled_weight((10, 2048), 4, "per_copy", rng)
    inits = [
        numpy_helper.from_array(w1, "conv1.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "conv1.bias"),
        numpy_helper.from_array(w2, "conv2.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, 32).astype(np.float32), "conv2.bias"),
        numpy_helper.from_array(w3, "fc.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "fc.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1] * 4, strides=[2, 2]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiled_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", zoo.OPSET)])
    model.ir_version = zoo.IR_VERSION
    onnx.checker.check_model(model)
    return model


def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    return out


def ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return zoo.run_onnxruntime(model, {model.graph.input[0].name: x})[0]


def rel_err(y, ref) -> float:
    return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def mlp_build():
    if NVCC_MISSING:
        pytest.skip(f"nvcc absent: {NVCC_MISSING}")
    return tbn_tvm.compile(str(MLP), target="cuda", arch="sm_90")


@pytest.fixture(scope="module")
def cnn_build():
    if NVCC_MISSING:
        pytest.skip(f"nvcc absent: {NVCC_MISSING}")
    return tbn_tvm.compile(tiled_cnn(), target="cuda")


@pytest.fixture(scope="module")
def saved(mlp_build, cnn_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    return {"mlp": mlp_build.save(root / "mlp"), "cnn": cnn_build.save(root / "cnn")}


# ------------------------------------------------------------------------------ targets
@pytest.mark.parametrize(
    ("target", "mcpu", "arch"),
    [
        ("cuda", None, "sm_90"),
        ("cuda", "sm_80", "sm_80"),
        ("cuda-sm80", None, "sm_80"),
        ("cuda -arch=sm_80", None, "sm_80"),
        ("nvidia/nvidia-a100", None, "sm_80"),
        ("nvidia/nvidia-h100", None, "sm_90"),
        ({"kind": "cuda", "arch": "sm_80"}, None, "sm_80"),
    ],
)
def test_target_names_resolve_to_an_architecture(target, mcpu, arch):
    spec = resolve_target(target, mcpu)
    assert spec.family == "cuda" and spec.cpu == arch
    assert spec.tvm_target["kind"] == "cuda" and spec.tvm_target["arch"] == arch


def test_unknown_architecture_is_one_clear_error():
    with pytest.raises(TBNError, match="sm_80, sm_90"):
        resolve_target("cuda", "sm_75")


def test_target_limits_are_those_of_tvms_tags():
    import tvm

    for arch, tag in cuda.ARCHES.items():
        ours = cuda.cuda_target(arch)
        theirs = dict(tvm.target.Target(tag).export())
        for key in ("max_num_threads", "thread_warp_size", "max_shared_memory_per_block"):
            assert ours[key] == theirs[key], (arch, key)


# ------------------------------------------------------------------------------ build
@needs_nvcc
def test_mlp_builds_for_sm90_with_nvcc(mlp_build, saved):
    rep = mlp_build.report()["cuda"]
    assert rep["arch"] == "sm_90" and rep["ptx_bytes"] > 1000 and rep["cubin_bytes"] > 1000
    # every layer kernel got its hand schedule (one warp per distinct row at batch 1)
    assert set(rep["kernels"].values()) == {"gemv"}, rep["kernels"]
    out = saved["mlp"]
    for name in ("model.so", "kernels.cu", "kernels.ptx", "kernels.cubin", "manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "kernels.cubin").read_bytes()[:4] == b"\x7fELF"
    assert re.search(r"^\.target sm_90\b", (out / "kernels.ptx").read_text(), re.M)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["family"] == "cuda" and manifest["arch"] == "sm_90"


@needs_nvcc
def test_cnn_builds_for_sm80_and_sm90(cnn_build, saved):
    rep = cnn_build.report()["cuda"]
    assert rep["arch"] == "sm_90"
    layer_kernels = {k: v for k, v in rep["kernels"].items() if "tbn_" in k}
    assert len(layer_kernels) == 3 and set(layer_kernels.values()) == {"conv", "gemv"}, rep["kernels"]
    assert re.search(r"^\.target sm_90\b", (saved["cnn"] / "kernels.ptx").read_text(), re.M)
    sm80 = tbn_tvm.compile(tiled_cnn(), target="cuda", arch="sm_80")
    assert sm80.report()["cuda"]["arch"] == "sm_80" and sm80.report()["cuda"]["cubin_bytes"] > 1000
    assert re.search(r"^\.target sm_80\b", sm80.backend.ptx.decode(), re.M)
    # the generated source is also valid for the other architecture
    assert cuda.nvcc_compile(cnn_build.backend.source, "sm_80", "cubin")[:4] == b"\x7fELF"


def _holds_dense_weight(blob: bytes, weights: list[np.ndarray]) -> bool:
    """Whether ``blob`` contains 64 consecutive bytes of a weight, as stored or transposed (the
    layout a Gemm weight takes once TVM folds ``permute_dims``), from its start or middle."""
    for w in weights:
        for layout in (w, w.T) if w.ndim == 2 else (w,):
            raw = np.ascontiguousarray(layout, np.float32).tobytes()
            if any(raw[i : i + 64] in blob for i in (0, len(raw) // 2)):
                return True
    return False


def _dense_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in model.graph.initializer if numpy_helper.to_array(t).ndim >= 2]


@needs_nvcc
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_artifact_holds_tile_words_and_scales_not_dense_weights(which, mlp_build, cnn_build, saved):
    from tvm import relax

    built = {"mlp": mlp_build, "cnn": cnn_build}[which]
    model = onnx.load(MLP) if which == "mlp" else tiled_cnn()
    weights = _dense_weights(model)
    smallest = min(w.size for w in weights)
    # 1. the constants the GPU module holds: uint32 tile words, and floats far smaller than any
    #    weight (scales, biases)
    consts = []

    @relax.expr_functor.visitor
    class Collect(relax.PyExprVisitor):
        def visit_generic_const_(self, const) -> None:
            consts.append(const.value.numpy())

    Collect().visit_expr(built.backend.scheduled["main"])
    floats = [c for c in consts if c.dtype.kind == "f"]
    words = [c for c in consts if c.dtype == np.uint32]
    assert words, "no tile words in the module"
    assert max(c.size for c in floats) < smallest // 4, [c.shape for c in floats]
    # 2. every layer kernel reads tile words (uint32) and no float constant larger than its
    #    scales and bias
    from tbn_tvm.schedules.cuda import ATTR
    from tbn_tvm.targets.clib.lower import extract

    graph = extract(built.backend.scheduled)
    layer_steps = [
        st for st in graph.steps if str(graph.kernels[st.kernel].attrs.get(ATTR)) in ("gemv", "gemm", "conv")
    ]
    assert len(layer_steps) == len(weights)
    for step in layer_steps:
        const = [
            graph.values[graph.root(a)] for a in step.args if graph.values[graph.root(a)].kind == "const"
        ]
        assert any(v.dtype == "uint32" for v in const), step.kernel
        assert all(v.dtype == "uint32" or np.prod(v.shape) < smallest // 4 for v in const), step.kernel
    # 3. no output file holds a run of any dense weight's bytes
    blobs = {p.name: p.read_bytes() for p in saved[which].iterdir() if p.name != "manifest.json"}
    for name, blob in blobs.items():
        assert not _holds_dense_weight(blob, weights), f"{name} holds dense weight bytes"
    # 4. the CUDA kernels read the row words from shared memory and reduce with warp shuffles
    src = built.backend.source
    assert "__shared__" in src and "__shfl_down_sync" in src
    assert not re.search(r"float\s+\w+\[\d+\]\s*=\s*\{", src), "a float array literal in the source"


@needs_nvcc
def test_the_dense_weight_probe_finds_an_uncompressed_build(tmp_path):
    dense = tbn_tvm.compile(str(MLP), target="cuda", compress=False)
    out = dense.save(tmp_path / "dense")
    assert _holds_dense_weight((out / "model.so").read_bytes(), _dense_weights(onnx.load(MLP)))


# ------------------------------------------------------------------------------ numerics (OpenCL)
@needs_nvcc
@needs_opencl
def test_mlp_numerics_on_opencl_match_onnxruntime(mlp_build):
    model = onnx.load(MLP)
    images = zoo.load_mnist_test()
    rng = np.random.default_rng(0)
    xs = [images[0][i : i + 1] for i in (0, 1, 2)] if images else []
    xs.append(rng.random((1, 784), dtype=np.float32))
    for x in xs:
        y = mlp_build.backend.check_numerics([x])[0]
        zoo.assert_close(y, ort(model, x), rtol=1e-5, what="MLP batch 1 on OpenCL")


@needs_nvcc
@needs_opencl
def test_cnn_numerics_on_opencl_match_onnxruntime(cnn_build):
    model = tiled_cnn()
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        y = cnn_build.backend.check_numerics([x])[0]
        zoo.assert_close(y, ort(model, x), rtol=1e-5, what="CNN batch 1 on OpenCL")


def _subbit_model(fmt: str) -> onnx.ModelProto:
    """A conv whose 3x3 sign kernels are 16 codewords (codebook τ=4), or a Gemm whose weight is
    1/16 times 6-bit integers (bitplane k=6)."""
    rng = np.random.default_rng(5)
    if fmt == "codebook":
        book = np.where(rng.random((16, 9)) < 0.5, -1.0, 1.0)
        while len({tuple(r) for r in book}) < 16:
            book = np.where(rng.random((16, 9)) < 0.5, -1.0, 1.0)
        idx = rng.integers(0, 16, size=(32, 16))
        idx.flat[:16] = np.arange(16)
        w = (book[idx].reshape(32, 16, 3, 3) * rng.uniform(0.05, 1.0, (32, 1, 1, 1))).astype(np.float32)
        node = helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])
        shapes = ([1, 16, 8, 8], [1, 32, 8, 8])
    else:
        w = (rng.integers(-31, 32, size=(24, 40)) / 16).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
        shapes = ([1, 40], [1, 24])
    graph = helper.make_graph(
        [node],
        fmt,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shapes[0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shapes[1])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", zoo.OPSET)])
    model.ir_version = zoo.IR_VERSION
    return model


@needs_nvcc
@needs_opencl
@pytest.mark.parametrize(("fmt", "label"), [("codebook", "codebook τ=4"), ("bitplane", "bitplane k=6")])
def test_subbit_formats_on_opencl_match_onnxruntime(fmt, label):
    """The SNN codebook's look-up conv and the bit-plane decode-in-kernel GEMV, scheduled for
    CUDA and run through the OpenCL executor."""
    model = _subbit_model(fmt)
    built = tbn_tvm.compile(model, target="cuda")
    assert built.report()["layers"][0]["label"] == label
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    zoo.assert_close(built.backend.check_numerics([x])[0], ort(model, x), rtol=1e-5, what=f"{fmt} on OpenCL")


@needs_nvcc
@needs_opencl
@pytest.mark.parametrize(("which", "batch"), [("mlp", 32), ("cnn", 8)])
def test_batched_numerics_on_opencl_match_onnxruntime(which, batch):
    model = with_batch(onnx.load(MLP), batch) if which == "mlp" else tiled_cnn(batch)
    built = tbn_tvm.compile(model, target="cuda")
    schedules = set(built.report()["cuda"]["kernels"].values())
    assert "gemm" in schedules, schedules  # the batched dense layers tile (batch x row)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    y = built.backend.check_numerics([x])[0]
    zoo.assert_close(y, ort(model, x), rtol=1e-5, what=f"{which} batch {batch} on OpenCL")


# ------------------------------------------------------------------------------ running
@needs_nvcc
@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: the model runs")
def test_running_without_a_gpu_is_one_clear_error(mlp_build, saved):
    x = np.zeros((1, 784), np.float32)
    for model in (mlp_build, tbn_tvm.load(saved["mlp"])):
        with pytest.raises(TBNError, match="needs an NVIDIA GPU") as info:
            model.run(x)
        assert "nvcc" in str(info.value) and "OpenCL" in str(info.value)


@needs_nvcc
def test_cli_compiles_for_cuda_and_run_says_what_it_needs(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(zoo.REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "tbn_tvm", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=zoo.REPO_ROOT,
            env=env,
            timeout=300,
        )

    out = tmp_path / "mlp80"
    proc = cli("compile", MLP, "--target", "cuda", "--mcpu", "sm_80", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["arch"] == "sm_80"
    assert re.search(r"^\.target sm_80\b", (out / "kernels.ptx").read_text(), re.M)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 784), np.float32))
    proc = cli("run", out, "--input", x)
    if HAS_GPU:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "GPU" in lines[0], proc.stderr


@needs_gpu
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_gpu_runs_match_onnxruntime(which, mlp_build, cnn_build, saved):
    built = {"mlp": mlp_build, "cnn": cnn_build}[which]
    model = onnx.load(MLP) if which == "mlp" else tiled_cnn()
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(3).standard_normal([4, *shape]).astype(np.float32)
    ref = np.stack([ort(model, x[i]) for i in range(4)])
    zoo.assert_close(built.run(x), ref, rtol=1e-5, what=f"{which} on the GPU")
    zoo.assert_close(tbn_tvm.load(saved[which]).run(x), ref, rtol=1e-5, what=f"{which} loaded, on the GPU")


@needs_nvcc
def test_the_gpu_gets_the_binaries_built_here(mlp_build, saved):
    src = mlp_build.backend.source
    assert cuda.binary_for(src, "sm_90") == mlp_build.backend.cubin
    assert cuda.binary_for(src, "sm_100") == mlp_build.backend.ptx  # the driver compiles the PTX
    assert cuda.binary_for(src, "sm_80") is None  # an older GPU: compiled again for it
    assert cuda.binary_for(src + "//", "sm_90") is None
    tbn_tvm.load(saved["mlp"])  # a loaded artifact brings its own binaries
    on_disk = (saved["mlp"] / "kernels.cu").read_text()
    assert cuda.binary_for(on_disk, "sm_90") == (saved["mlp"] / "kernels.cubin").read_bytes()


# ------------------------------------------------------------------------------ the benchmark
@needs_nvcc
@pytest.mark.skipif(
    OPENCL_MISSING is not None and not HAS_GPU, reason=f"neither a GPU nor OpenCL: {OPENCL_MISSING}"
)
def test_gpu_benchmark_runs_end_to_end(tmp_path, capsys):
    if str(zoo.REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(zoo.REPO_ROOT))
    out = tmp_path / "gpu.json"
    sys.dont_write_bytecode, before = True, sys.dont_write_bytecode  # nothing written into the checkout
    try:
        from benchmarks import gpu as bench

        argv = ["--quick", "--models", "mnist,resnet8", "--batches", "1,32", "--json", str(out)]
        status = bench.main(argv)
    finally:
        sys.dont_write_bytecode = before
    text = capsys.readouterr().out
    assert status == 0, text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("mnist", 1),
        ("mnist", 32),
        ("resnet8", 1),
        ("resnet8", 32),
    ]
    for r in rows:
        assert r["ok"] and r["err"] <= 1e-5 and r["weight_bytes"] < r["fp32_bytes"] and r["cubin_bytes"] > 0
        assert r["checked_on"] == ("gpu" if HAS_GPU else "opencl")
    assert text.count("\n| ") >= 5  # header, separator and one line per row
    if not HAS_GPU:
        assert "no GPU here" in text and "numerics only" in text


@needs_nvcc
def test_cli_arch_is_cudas_word_for_the_architecture(tmp_path):
    """``compile --target cuda --arch sm_80`` (CUDA's, nvcc's and TVM's word) builds for sm_80;
    ``--mcpu`` stays an alias; ``--arch`` on a CPU target is one clear error."""
    from test_cli import cli, ok, user_error

    model = zoo.gemm_tiled_bias().save(tmp_path / "g.onnx")
    out = tmp_path / "g-sm80"
    ok(cli("compile", model, "--target", "cuda", "--arch", "sm_80", "-o", out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cuda"]["arch"] == "sm_80"
    assert re.search(r"^\.target sm_80\b", (out / "kernels.ptx").read_text(), re.M)
    user_error(cli("compile", model, "--arch", "sm_80", "-o", tmp_path / "x"), "--arch", "--mcpu")
    user_error(
        cli("compile", model, "--target", "cuda", "--arch", "sm_80", "--mcpu", "sm_90", "-o", tmp_path / "x"),
        "disagree",
    )
    assert not (tmp_path / "x").exists()
