"""Each fault the robustness corpus found, as its smallest case (issue 15)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from cases import BASE, _npy_header, _Pwn, gemm, make, mlp, tiled  # noqa: E402
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402

from tbn_tvm.cli import main  # noqa: E402
from tbn_tvm.errors import TBNError  # noqa: E402


def _clean_error(capsys, argv, match: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error:") and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.fixture
def built(tmp_path):
    """A host build of the 16 -> 8 Gemm and one input sample."""
    model = tmp_path / "g.onnx"
    model.write_bytes(BASE)
    out = tmp_path / "out"
    assert main(["compile", str(model), "-o", str(out)]) == 0
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 1, 16), np.float32))
    return out, x


# ------------------------------------------------------------------ models
def test_invalid_utf8_node_name_is_a_clean_error(tmp_path, capsys):
    raw = mlp(node_names=("AAAfc1", "relu", "fc2")).SerializeToString().replace(b"AAAfc1", b"\xff\xfefc1!")
    model = tmp_path / "m.onnx"
    model.write_bytes(raw)
    _clean_error(capsys, ["compile", str(model), "-o", str(tmp_path / "out")], "not valid UTF-8")
    _clean_error(capsys, ["inspect", str(model)], "not valid UTF-8")


def test_external_data_location_with_nul_is_refused_unread(tmp_path, capsys):
    m = gemm()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "w\x00.bin"
    model = tmp_path / "m.onnx"
    model.write_bytes(m.SerializeToString())
    _clean_error(capsys, ["compile", str(model), "-o", str(tmp_path / "out")], "outside the model's folder")


def test_duplicate_node_names_and_outputs_are_refused(tmp_path, capsys):
    m = make(
        [h.make_node("Relu", ["x"], ["a"], name="n"), h.make_node("Neg", ["a"], ["y"], name="n")],
        [("x", T.FLOAT, [1, 4])],
        [("y", T.FLOAT, [1, 4])],
    )
    model = tmp_path / "m.onnx"
    model.write_bytes(m.SerializeToString())
    _clean_error(capsys, ["compile", str(model), "-o", str(tmp_path / "out")], "two nodes are named 'n'")
    m = gemm()
    m.graph.output.append(h.make_tensor_value_info("y", T.FLOAT, [1, 8]))
    model.write_bytes(m.SerializeToString())
    _clean_error(capsys, ["compile", str(model), "-o", str(tmp_path / "out")], "lists output 'y' twice")


def test_integer_gemm_is_refused_like_onnxruntime(tmp_path, capsys):
    m = make(
        [h.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", T.INT64, [1, 4])],
        [("y", T.INT64, [1, 2])],
        [("W", np.ones((2, 4), np.int64))],
    )
    model = tmp_path / "m.onnx"
    model.write_bytes(m.SerializeToString())
    _clean_error(capsys, ["compile", str(model), "-o", str(tmp_path / "out")], "floating-point tensors only")


# ------------------------------------------------------------------ OUT_DIR
def test_out_dir_name_too_long_is_a_clean_error(tmp_path, capsys):
    model = tmp_path / "g.onnx"
    model.write_bytes(BASE)
    _clean_error(capsys, ["compile", str(model), "-o", str(tmp_path / ("o" * 300))], "longer than 255")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


def test_out_dir_name_of_255_bytes_builds(tmp_path):
    model = tmp_path / "g.onnx"
    model.write_bytes(BASE)
    assert main(["compile", str(model), "-o", str(tmp_path / ("o" * 255))]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "o" * 255]


# ------------------------------------------------------------------ run inputs
def test_npy_pickle_is_never_unpickled(built, tmp_path, capsys):
    out, _ = built
    x = tmp_path / "evil.npy"
    marker = tmp_path / "PWNED"
    np.save(x, np.array([_Pwn(str(marker))], dtype=object), allow_pickle=True)
    _clean_error(
        capsys, ["run", str(out), "--input", str(x), "-o", str(tmp_path / "y.npy")], "never unpickles"
    )
    assert not marker.exists() and not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (_npy_header((1 << 40, 1, 16)) + b"\0" * 64, "truncated"),
        (_npy_header((-1, 1, 16)), "not a readable .npy"),
        (b"PK\x03\x04rest", ".npz archive"),
        (b"hello", "not a .npy file"),
    ],
    ids=["header-64TiB", "negative-dim", "npz", "not-npy"],
)
def test_npy_header_is_checked_before_reading(built, tmp_path, capsys, content, match):
    out, _ = built
    x = tmp_path / "bad.npy"
    x.write_bytes(content)
    _clean_error(capsys, ["run", str(out), "--input", str(x)], match)


def test_npy_fifo_is_not_opened(built, tmp_path, capsys):
    out, _ = built
    x = tmp_path / "fifo.npy"
    os.mkfifo(x)  # opening it would block for ever: no writer
    _clean_error(capsys, ["run", str(out), "--input", str(x)], "not a regular file")


def test_run_output_path_faults_are_clean_errors(built, tmp_path, capsys):
    out, x = built
    (tmp_path / "ydir").mkdir()
    _clean_error(capsys, ["run", str(out), "--input", str(x), "-o", str(tmp_path / "ydir")], "is a directory")
    (tmp_path / "afile").write_text("mine")
    _clean_error(
        capsys, ["run", str(out), "--input", str(x), "-o", str(tmp_path / "afile" / "y.npy")], "cannot write"
    )
    assert (tmp_path / "afile").read_text() == "mine"


# ------------------------------------------------------------------ artifacts
def _edit_manifest(out: Path, fn) -> None:
    m = json.loads((out / "manifest.json").read_text())
    fn(m)
    (out / "manifest.json").write_text(json.dumps(m))


def test_run_loads_only_manifest_listed_files_inside_out_dir(built, tmp_path, capsys):
    out, x = built
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.so").write_bytes((out / "model.so").read_bytes())
    _edit_manifest(out, lambda m: m.update(artifact="../evil/model.so"))
    _clean_error(capsys, ["run", str(out), "--input", str(x)], "not a file the manifest lists")
    _edit_manifest(
        out, lambda m: (m.update(artifact="model.so"), m["files"].update({"../evil/model.so": "0" * 64}))
    )
    _clean_error(capsys, ["run", str(out), "--input", str(x)], "outside the output directory")


def test_run_checks_sha256_before_loading(built, capsys):
    out, x = built
    so = out / "model.so"
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0xFF
    so.write_bytes(bytes(data))
    _clean_error(capsys, ["run", str(out), "--input", str(x)], "SHA-256 differs")


def test_truncated_library_with_matching_hash_is_refused_not_sigbus(built, capsys):
    out, x = built
    so = out / "model.so"
    so.write_bytes(so.read_bytes()[:4096])
    _edit_manifest(
        out, lambda m: m["files"].update({"model.so": hashlib.sha256(so.read_bytes()).hexdigest()})
    )
    _clean_error(capsys, ["run", str(out), "--input", str(x)], "truncated")


@pytest.mark.parametrize("edit", ["dtype", "files", "shape"])
def test_manifest_that_does_not_validate_is_refused(built, capsys, edit):
    out, x = built
    fix = {
        "dtype": lambda m: m["inputs"][0].update(dtype="float99"),
        "files": lambda m: m.pop("files"),
        "shape": lambda m: m["inputs"][0].update(shape=[-5, 16]),
    }[edit]
    _edit_manifest(out, fix)
    _clean_error(capsys, ["run", str(out), "--input", str(x)], "manifest")


# ------------------------------------------------------------------ non-finite weights
def test_c_back_end_writes_non_finite_weights():
    from tbn_tvm.targets.clib.driver import _c_literal

    assert _c_literal("float32", np.float32("nan")) == '__builtin_nanf("")'
    assert _c_literal("float32", np.float32("inf")) == "__builtin_inff()"
    assert _c_literal("float32", np.float32("-inf")) == "-__builtin_inff()"
    assert _c_literal("float64", float("-inf")) == "-__builtin_inf()"
    assert _c_literal("float16", np.float16("nan")).startswith("0x7e")


@pytest.mark.qemu
def test_nan_weight_builds_dense_and_runs_on_cortex_m_like_onnxruntime(tmp_path):
    """One rule for both targets: a weight with a NaN or an infinity stays dense; outputs as
    onnxruntime gives them (NaN where it gives NaN)."""
    from reports import ort

    w = tiled((8, 16), 4)
    w[1, 3], w[5, 0] = np.nan, np.inf
    m = gemm(w=w)
    model = tmp_path / "g.onnx"
    model.write_bytes(m.SerializeToString())
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    want = ort(m, {"x": x})[0]
    np.save(tmp_path / "x.npy", x[None])
    for target in ("llvm", "cortex-m4"):
        out = tmp_path / target
        extra = ["--no-measure"] if target.startswith("cortex") else []
        assert main(["compile", str(model), "-o", str(out), "--target", target, *extra]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert [layer["format"] for layer in manifest["layers"]] == ["dense"], manifest["layers"]
        y = tmp_path / f"y-{target}.npy"
        assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(y)]) == 0
        got = np.load(y)[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_read_npy_refuses_without_tbn_tvm_cli():
    from tbn_tvm.npyio import read_npy

    with pytest.raises(TBNError, match="no such file"):
        read_npy("/nonexistent/x.npy")


# ------------------------------------------------------------------ signals
@pytest.mark.parametrize(
    "signum, code, line", [(15, 143, "error: terminated"), (2, 130, "error: interrupted")]
)
def test_signal_wrapped_by_tvm_still_ends_as_interrupted(capsys, signum, code, line):
    """TVM turns the exception a signal handler raises inside its C++ into an error of its own,
    which the step then reports as a failure ("folding the model's constants failed"): the run
    must still end as interrupted, not as a refused model."""
    import time

    from tbn_tvm.cli import guarded

    def run() -> int:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(1)
        except BaseException as e:  # what TVM's FFI does with it
            raise TBNError("folding the model's constants failed: ") from e
        return 0

    import signal

    # as in a shell's foreground process (a pytest-xdist worker ignores SIGINT, and guarded()
    # leaves an ignored SIGINT alone, as it should)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert guarded(run) == code
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == line
