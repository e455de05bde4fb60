"""End to end on the host: ONNX -> tbn_tvm.compile(target="llvm") -> run, against onnxruntime.

Each zoo model (tests/onnx_zoo.py) is compiled once per module; the tests then check the
outputs against onnxruntime, the per-layer formats in ``report()`` / ``inspect()`` against what
the model was built with, that the built module keeps only the compact constants, batching,
save/load, the x86 and aarch64 triples, the user errors, and the authors' MNIST MLP.
"""

from __future__ import annotations

import platform

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

api = zoo.require_module("tbn_tvm.api")
import tbn_tvm  # noqa: E402


# ---------------------------------------------------------------------------------------------
# shared compiled models
# ---------------------------------------------------------------------------------------------
class _Cache:
    def __init__(self):
        self._zoo: dict[str, zoo.ZooModel] = {}
        self._built: dict[str, object] = {}

    def model(self, name: str) -> zoo.ZooModel:
        if name not in self._zoo:
            self._zoo[name] = {**zoo.ZOO, **zoo.MULTI_IO}[name]()
        return self._zoo[name]

    def compiled(self, name: str):
        if name not in self._built:
            self._built[name] = tbn_tvm.compile(self.model(name).model, target="llvm")
        return self._built[name]


@pytest.fixture(scope="module")
def cache() -> _Cache:
    return _Cache()


def _single(zm: zoo.ZooModel, feeds: dict) -> np.ndarray:
    assert len(feeds) == 1
    return next(iter(feeds.values()))


# ---------------------------------------------------------------------------------------------
# every zoo model
# ---------------------------------------------------------------------------------------------
ZOO_NAMES = sorted(zoo.ZOO)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_matches_onnxruntime(cache, name):
    zm = cache.model(name)
    cm = cache.compiled(name)
    for seed in (0, 1):
        feeds = zm.sample(seed)
        want = zoo.run_onnxruntime(zm.model, feeds)[0]
        got = cm.run(_single(zm, feeds))
        assert isinstance(got, np.ndarray)
        assert got.dtype == np.float32
        zoo.assert_close(got, want, what=name)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_report_formats(cache, name):
    zm = cache.model(name)
    rep = cache.compiled(name).report()
    assert "llvm" in str(rep["target"])
    zoo.check_layers(rep["layers"], zm)
    zoo.check_total(rep["total"], rep["layers"], zm)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_built_module_keeps_only_compact_constants(cache, name):
    """Tile words + scales + biases (+ dense weights, BatchNorm parameters), within 1 %."""
    zm = cache.model(name)
    built = cache.compiled(name).report()["total"]["built_constant_bytes"]
    assert 0 < built <= zm.built_constant_budget, (
        f"{name}: {built} constant bytes in the built module, budget {zm.built_constant_budget:.1f}"
    )
    # inspect (ONNX alone, no TVM) predicts the constants of the build exactly
    assert tbn_tvm.inspect(zm.model).to_dict()["total"]["constant_bytes"] == built


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_inspect_without_compiling(cache, name, tmp_path):
    zm = cache.model(name)
    d = tbn_tvm.inspect(zm.model).to_dict()
    assert set(d) >= {"layers", "total"}
    zoo.check_layers(d["layers"], zm)
    zoo.check_total(d["total"], d["layers"], zm)
    # a path gives the same answer
    path = zm.save(tmp_path / f"{name}.onnx")
    assert tbn_tvm.inspect(str(path)).to_dict()["layers"] == d["layers"]


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 24),
    cols=st.integers(2, 70),
    p=st.sampled_from([1, 2, 3, 4, 8]),
    alpha=st.sampled_from(zoo.ALPHAS),
    seed=st.integers(0, 1000),
)
def test_random_tiled_gemm(rows, cols, p, alpha, seed):
    """Any shape, p, alpha kind and tile length (dividing the row length or not)."""
    assume((rows * cols) % p == 0 and rows * cols // p >= 2)
    zm = zoo.random_tiled_gemm(rows, cols, p, alpha, seed)
    cm = tbn_tvm.compile(zm.model, target="llvm")
    zoo.check_layers(cm.report()["layers"], zm)
    x = zm.sample(seed)["x"]
    zoo.assert_close(cm.run(x), zoo.run_onnxruntime(zm.model, {"x": x})[0], what=zm.name)
    assert cm.report()["total"]["built_constant_bytes"] <= zm.built_constant_budget


# ---------------------------------------------------------------------------------------------
# batching, several inputs/outputs, save/load, inputs as paths
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn", "matmul_3d", "conv1d_tiled"])
def test_stacked_samples_equal_per_sample_runs(cache, name):
    zm = cache.model(name)
    cm = cache.compiled(name)
    xs = _single(zm, zm.sample(seed=5, n=4))
    assert xs.shape == (4, *zm.input_shape)
    stacked = cm.run(xs)
    assert stacked.shape == (4, *zm.output_shape)
    for i in range(4):
        one = cm.run(xs[i])
        assert one.shape == zm.output_shape
        np.testing.assert_allclose(stacked[i], one, rtol=1e-6, atol=1e-6 * float(np.abs(one).max()))
        zoo.assert_close(stacked[i], zoo.run_onnxruntime(zm.model, {zm.input_name: xs[i]})[0])


def test_two_inputs_dict(cache):
    zm = cache.model("two_inputs")
    cm = cache.compiled("two_inputs")
    feeds = zm.sample(3)
    got = cm.run(feeds)
    zoo.assert_close(got, zoo.run_onnxruntime(zm.model, feeds)[0])
    zoo.check_layers(cm.report()["layers"], zm)


def test_two_outputs_dict(cache):
    zm = cache.model("two_outputs")
    cm = cache.compiled("two_outputs")
    feeds = zm.sample(4)
    got = cm.run(feeds["x"])
    assert isinstance(got, dict) and set(got) == set(zm.outputs)
    want = zoo.run_onnxruntime(zm.model, feeds)
    for (out_name, _), w in zip(zm.outputs.items(), want, strict=True):
        zoo.assert_close(got[out_name], w, what=out_name)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_save_load_run(cache, name, tmp_path):
    zm = cache.model(name)
    cm = cache.compiled(name)
    out = tmp_path / "artifact"
    cm.save(out)
    assert (out / "manifest.json").is_file()
    loaded = tbn_tvm.load(out)
    x = _single(zm, zm.sample(7))
    np.testing.assert_array_equal(loaded.run(x), cm.run(x))
    zoo.assert_close(loaded.run(x), zoo.run_onnxruntime(zm.model, {zm.input_name: x})[0])
    assert [layer["format"] for layer in loaded.report()["layers"]] == [e.format for e in zm.layers]
    xs = _single(zm, zm.sample(8, n=3))
    np.testing.assert_array_equal(loaded.run(xs), cm.run(xs))


def test_compile_from_path(cache, tmp_path):
    zm = cache.model("gemm_tiled_bias")
    path = zm.save(tmp_path / "m.onnx")
    x = _single(zm, zm.sample(9))
    want = zoo.run_onnxruntime(zm.model, {"x": x})[0]
    for arg in (path, str(path)):
        zoo.assert_close(tbn_tvm.compile(arg, target="llvm").run(x), want)


def test_default_target_is_llvm(cache):
    zm = cache.model("gemm_binary")
    cm = tbn_tvm.compile(zm.model)
    assert "llvm" in str(cm.report()["target"])
    x = _single(zm, zm.sample(2))
    zoo.assert_close(cm.run(x), zoo.run_onnxruntime(zm.model, {"x": x})[0])


# ---------------------------------------------------------------------------------------------
# targets as LLVM triples
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"),
    reason="host is not x86_64 Linux",
)
def test_x86_triple_runs_on_host(cache):
    zm = cache.model("mlp")
    cm = tbn_tvm.compile(zm.model, target="x86_64-linux-gnu")
    x = _single(zm, zm.sample(11))
    zoo.assert_close(cm.run(x), zoo.run_onnxruntime(zm.model, {"x": x})[0])
    zoo.check_layers(cm.report()["layers"], zm)


def test_aarch64_cross_compile_saves(cache, tmp_path):
    zm = cache.model("cnn")
    cm = tbn_tvm.compile(zm.model, target="aarch64-linux-gnu")
    rep = cm.report()
    assert "aarch64" in str(rep["target"])
    zoo.check_layers(rep["layers"], zm)
    out = tmp_path / "arm"
    cm.save(out)
    manifest = (out / "manifest.json").read_text()
    assert "aarch64" in manifest
    libs = [f for f in out.rglob("*") if f.is_file() and f.name != "manifest.json" and f.stat().st_size > 0]
    assert libs, f"no library written next to the manifest: {list(out.iterdir())}"


# ---------------------------------------------------------------------------------------------
# user errors raise TBNError
# ---------------------------------------------------------------------------------------------
def test_error_missing_file(tmp_path):
    with pytest.raises(tbn_tvm.TBNError):
        tbn_tvm.compile(tmp_path / "nope.onnx")
    with pytest.raises(tbn_tvm.TBNError):
        tbn_tvm.inspect(str(tmp_path / "nope.onnx"))


def test_error_truncated_file(tmp_path):
    data = zoo.mlp().model.SerializeToString()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(tbn_tvm.TBNError):
        tbn_tvm.compile(bad)


def test_error_unsupported_op():
    model, op, node = zoo.unsupported_op_model()
    with pytest.raises(tbn_tvm.TBNError) as e:
        tbn_tvm.compile(model)
    assert op in str(e.value) and node in str(e.value)


def test_error_dynamic_shape():
    with pytest.raises(tbn_tvm.TBNError):
        tbn_tvm.compile(zoo.dynamic_batch_model())


def test_error_unknown_target(cache):
    with pytest.raises(tbn_tvm.TBNError):
        tbn_tvm.compile(cache.model("gemm_binary").model, target="no-such-target")


def test_error_wrong_input_shape_and_dtype(cache):
    zm = cache.model("mlp")
    cm = cache.compiled("mlp")
    x = _single(zm, zm.sample(0))
    for bad in (
        x[..., :-1],
        x.reshape(-1),
        np.zeros((2, 3, *zm.input_shape), np.float32),
        x.astype(np.float64),
    ):
        with pytest.raises(tbn_tvm.TBNError):
            cm.run(bad)
    with pytest.raises(tbn_tvm.TBNError):
        cm.run({"not_an_input": x})


def test_compile_does_not_mutate_the_model():
    """compile() must not mutate the caller's ModelProto."""
    zm = zoo.expand_form_gemm()
    before = zm.model.SerializeToString()
    tbn_tvm.compile(zm.model)
    assert zm.model.SerializeToString() == before
    assert onnx.load_from_string(before).graph.node[0].op_type == "Expand"


# ---------------------------------------------------------------------------------------------
# the authors' MNIST MLP
# ---------------------------------------------------------------------------------------------
authors = pytest.mark.skipif(
    not zoo.AUTHORS_MLP_NPZ.exists(),
    reason="tbn_tvm/data/tbn-authors-mnist-mlp.npz not in the package yet (the lead copies it)",
)


@pytest.fixture(scope="module")
def authors_mlp():
    zm = zoo.authors_mnist_mlp()
    if zm is None:
        pytest.skip("tbn_tvm/data/tbn-authors-mnist-mlp.npz not in the package yet")
    return zm, tbn_tvm.compile(zm.model, target="llvm")


@authors
def test_authors_mlp_inspect():
    zm = zoo.authors_mnist_mlp()
    d = tbn_tvm.inspect(zm.model).to_dict()
    fc1, fc2 = d["layers"]
    assert (fc1["format"], fc1["p"], fc1["alpha"]) == ("tiled", 4, "per_copy")
    assert fc1["bytes"] == 3136 + 4 * 4  # 25,088 tile bits + 4 alphas
    assert (fc2["format"], fc2["p"]) == ("binary", 1)
    assert d["total"]["weight_bytes"] == pytest.approx(zoo.AUTHORS_WEIGHT_BYTES, abs=10)
    zoo.check_layers(d["layers"], zm)


@authors
def test_authors_mlp_mnist(authors_mlp):
    data = zoo.load_mnist_test()
    if data is None:
        pytest.skip("MNIST test set not in tbn_tvm/data/mnist/ (nor tbn_tvm.datasets) yet")
    zm, cm = authors_mlp
    images, labels = data
    logits = cm.run(images.reshape(-1, 1, 784))
    assert logits.shape == (10000, 1, 10)
    pred = logits.reshape(-1, 10).argmax(1)
    want = zoo.authors_mlp_numpy_logits(images).argmax(1)
    assert int(np.sum(pred != want)) == 0
    assert float(np.mean(pred == labels)) == pytest.approx(zoo.AUTHORS_ACCURACY, abs=5e-5)
    rep = cm.report()
    zoo.check_layers(rep["layers"], zm)
    assert rep["total"]["built_constant_bytes"] <= zm.built_constant_budget
