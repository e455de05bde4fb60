"""The user-facing surface of issue 14: CLI flags and commands, manifest, API rough edges.

CLI (as a subprocess): ``--version`` with the tool versions, ``tbn-tvm targets``, TVM target
strings and ``--mcpu`` (plain ``llvm`` portable), ``compile --board NAME`` implying its target,
``--uart-driver FILE.c``, ``run --fill`` / ``--print-top`` / default output file,
``--timeout-per-sample``, progress bars, 2,000 samples in one QEMU run, the manifest's versions,
model hash and relative source name.  API: option validation naming the valid ones, the board
implying the target, ``run(x, count_instructions=True)``, ``repr``, no TVM chatter on save/load.
Bad input: exit 2 and one ``error: ...`` line (checked with test_cli's helpers).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import numpy as np
import onnx_zoo as zoo
import pytest
from test_cli import cli, ok, user_error

import tbn_tvm
from tbn_tvm.errors import TBNError

HAL = zoo.REPO_ROOT / "tests" / "targets" / "cortex_m" / "fixtures" / "stm32_usart_hal.c"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("usability")


@pytest.fixture(scope="module")
def mlp(work):
    zm = zoo.mlp()
    return zm, zm.save(work / "mlp.onnx")


@pytest.fixture(scope="module")
def host_art(work, mlp):
    _, path = mlp
    out = work / "mlp-llvm"
    ok(cli("compile", path, "-o", out))
    return out


@pytest.fixture(scope="module")
def m4_art(work, mlp):
    _, path = mlp
    out = work / "mlp-m4"
    tbn_tvm.compile(path, "cortex-m4", measure=False).save(out)
    return out


def manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


# ---------------------------------------------------------------------------------------------
# --version, targets
# ---------------------------------------------------------------------------------------------
def test_version_lists_tvm_onnx_gcc_qemu():
    from tbn_tvm.versions import package_versions, toolchain_versions

    text = ok(cli("--version")).stdout
    assert text.splitlines()[0] == f"tbn-tvm {tbn_tvm.__version__}"
    for label, value in (
        ("Apache TVM", package_versions()["tvm"]),
        ("ONNX", package_versions()["onnx"]),
        ("Arm gcc", toolchain_versions()["arm_gcc"]),
        ("QEMU", toolchain_versions()["qemu"]),
    ):
        assert any(
            line.split(maxsplit=len(label.split()))[:-1] == label.split() for line in text.splitlines()
        )
        assert value in text


def test_targets_command_lists_boards_with_flash_and_ram():
    from tbn_tvm.targets.cortex_m.boards import BOARDS

    assert "targets" in ok(cli("--help")).stdout
    table = ok(cli("targets")).stdout
    for name in BOARDS:
        assert name in table
    assert "256 KiB" in table and "1 MiB" in table  # nrf52840's RAM and flash
    assert [line for line in table.splitlines() if line != line.rstrip()] == []  # no trailing spaces
    data = json.loads(ok(cli("targets", "--json")).stdout)
    got = {b["board"]: (b["target"], b["flash_bytes"], b["ram_bytes"]) for b in data["boards"]}
    assert got == {b.name: (b.cpu, b.flash_bytes, b.ram_bytes) for b in BOARDS.values()}
    assert {"host", "cortex-m"} <= set(data["targets"])


# ---------------------------------------------------------------------------------------------
# compile: manifest, host target strings, --board, --uart-driver
# ---------------------------------------------------------------------------------------------
def test_manifest_has_versions_hash_and_relative_source(host_art, mlp, work):
    _, path = mlp
    m = manifest(host_art)
    assert m["source"] == "mlp.onnx"
    assert m["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert {"tbn_tvm", "tvm", "onnx"} <= set(m["versions"])
    assert str(work) not in (host_art / "manifest.json").read_text()  # no machine path
    # plain llvm is this machine: its CPU pinned, its instruction sets recorded
    from tbn_tvm.targets.host import _native_cpu

    assert m["target"]["tvm_target"]["mcpu"] == _native_cpu()
    assert m["cpu"] == _native_cpu() and "sse2" in m["cpu_features"]


def test_build_refused_on_a_cpu_without_its_instructions(host_art, mlp, work):
    """A build whose instruction sets this CPU lacks is refused at load time (one error line
    naming them and the way out), not run into SIGILL; --mcpu generic builds portable code."""
    import json
    import shutil

    zm, path = mlp
    moved = work / "mlp-other-cpu"
    shutil.copytree(host_art, moved)
    m = json.loads((moved / "manifest.json").read_text())
    m["cpu"], m["cpu_features"] = "futurecpu", [*m["cpu_features"], "avx9000"]
    (moved / "manifest.json").write_text(json.dumps(m))
    x = zm.sample(seed=1, n=1)["x"]
    np.save(work / "cpu-x.npy", x)
    line = user_error(cli("run", moved, "--input", work / "cpu-x.npy"), "futurecpu", "avx9000")
    assert "--mcpu generic" in line
    with pytest.raises(TBNError, match="avx9000"):
        tbn_tvm.load(moved)
    out = work / "mlp-generic"
    ok(cli("compile", path, "--mcpu", "generic", "-o", out))
    g = manifest(out)
    assert g["target"]["tvm_target"]["mcpu"] == "generic"
    assert not any(f.startswith("avx") for f in g["cpu_features"])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 CPU names")
@pytest.mark.parametrize(
    "args, cpu",
    [
        (["--target", "llvm -mcpu=skylake"], "skylake"),
        (["--target", "llvm", "--mcpu", "x86-64-v3"], "x86-64-v3"),
    ],
)
def test_compile_tvm_target_string_and_mcpu(work, mlp, args, cpu):
    zm, path = mlp
    out = work / f"mlp-{cpu}"
    ok(cli("compile", path, *args, "-o", out))
    assert manifest(out)["target"]["tvm_target"]["mcpu"] == cpu
    x = zm.sample(seed=1, n=2)["x"]
    zoo.assert_close(tbn_tvm.load(out).run(x)[1], zoo.run_onnxruntime(zm.model, {"x": x[1]})[0])


@pytest.mark.qemu
def test_compile_board_implies_its_target(work, mlp):
    _, path = mlp
    out = work / "mlp-nrf"
    proc = ok(cli("compile", path, "--board", "nrf52840", "--no-measure", "-o", out))
    m = manifest(out)
    assert m["target"]["name"] == "cortex-m4" and m["board"] == "nrf52840"
    assert "nrf52840" in proc.stdout
    assert "firmware_uart" not in m  # no shipped UART driver for it, none given
    assert m["versions"]["arm_gcc"].startswith("arm-none-eabi-gcc") and "qemu" not in m["versions"]


@pytest.mark.qemu
def test_compile_uart_driver_builds_uart_firmware(work, mlp):
    _, path = mlp
    out = work / "mlp-stm"
    proc = ok(cli("compile", path, "--board", "stm32f746", "--uart-driver", HAL, "--no-measure", "-o", out))
    m = manifest(out)
    assert m["target"]["name"] == "cortex-m7" and m["board"] == "stm32f746"
    assert (out / m["firmware_uart"]).is_file()
    assert m["uart_driver"] == {"file": HAL.name, "sha256": hashlib.sha256(HAL.read_bytes()).hexdigest()}
    assert str(HAL.parent) not in (out / "manifest.json").read_text()
    assert HAL.name in proc.stdout
    from tbn_tvm.targets.cortex_m import firmware_info

    assert firmware_info(out / m["firmware_uart"]).mode == "uart"


# ---------------------------------------------------------------------------------------------
# run: --fill, --print-top, default output file
# ---------------------------------------------------------------------------------------------
def test_run_fill_print_top_and_default_output(host_art, mlp):
    zm, _ = mlp
    default = host_art.parent / f"{host_art.name}-outputs.npy"
    default.unlink(missing_ok=True)
    proc = ok(cli("run", host_art, "--fill", "random", "--samples", "4", "--seed", "1", "--print-top", "3"))
    said = proc.stdout.splitlines()[0].split("outputs -> ")[1]  # said where (relative to the cwd)
    assert default.is_file() and (zoo.REPO_ROOT / said).resolve() == default.resolve()
    y = np.load(default)
    assert y.shape == (4, *zm.output_shape)
    x = np.random.default_rng(1).standard_normal((4, *zm.input_shape)).astype(np.float32)
    for i in range(4):
        zoo.assert_close(y[i], zoo.run_onnxruntime(zm.model, {"x": x[i]})[0], what=f"sample {i}")
        best = np.argsort(-y[i].ravel(), kind="stable")[:3]
        line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith(f"sample {i}:"))
        assert [int(part.split("(")[0]) for part in line.split(":", 1)[1].split(",")] == best.tolist()
    summary = json.loads(ok(cli("run", host_art, "--fill", "zeros", "--print-top", "2", "--json")).stdout)
    assert (zoo.REPO_ROOT / summary["output"]).resolve() == default.resolve()
    assert len(summary["top"]) == 1 and len(summary["top"][0]) == 2
    assert np.load(default).shape == (1, *zm.output_shape)
    assert not any(p.name.endswith(".npy") for p in host_art.rglob("*"))  # nothing written into OUT_DIR


def test_run_profile_times_each_kernel_per_layer(host_art):
    summary = json.loads(ok(cli("run", host_art, "--fill", "random", "--profile", "--json")).stdout)
    prof = summary["profile"]
    assert prof["rounds"] >= 3 and prof["seconds_per_inference"] > 0
    kernels = prof["kernels"]
    assert kernels and all(k["calls"] >= 1 and k["seconds"] > 0 for k in kernels)
    assert sum(k["seconds"] for k in kernels) <= prof["seconds_per_inference"] * 1.05
    assert not any(k["kernel"].startswith("vm.builtin") for k in kernels)
    table = ok(cli("run", host_art, "--fill", "random", "--profile")).stdout
    tiled = [layer["name"] for layer in manifest(host_art)["layers"] if layer["format"] != "dense"]
    assert tiled
    for name in tiled:  # each compact layer's kernel is named in the table with its layer
        assert any(f"tbn_{name}_" in line and f" {name} " in line for line in table.splitlines()), table


# ---------------------------------------------------------------------------------------------
# QEMU: many samples in one run, progress bars
# ---------------------------------------------------------------------------------------------
@pytest.mark.qemu
def test_run_qemu_2000_samples_in_one_run(m4_art, work):
    """Acceptance: 2,000 images in one run --qemu finish (each sample has its own limit)."""
    y_path = work / "y2000.npy"
    args = ["run", m4_art, "--qemu", "--fill", "random", "--samples", "2000", "--timeout-per-sample", "20"]
    proc = ok(cli(*args, "--count-instructions", "-o", y_path, "--json"))
    summary = json.loads(proc.stdout)
    assert summary["samples"] == 2000 and summary["instructions_per_inference"] > 0
    y = np.load(y_path)
    x = np.random.default_rng(0).standard_normal((2000, 1, 64)).astype(np.float32)
    host = tbn_tvm.compile(zoo.mlp().model, "llvm").run(x[:50])
    np.testing.assert_allclose(y[:50], host, rtol=1e-5, atol=1e-5 * np.abs(host).max())
    assert np.isfinite(y).all()


@pytest.mark.qemu
def test_progress_bars_on_request_only(m4_art, mlp, work):
    env_on = {"TBN_TVM_PROGRESS": "1"}
    proc = ok(cli_env(env_on, "run", m4_art, "--fill", "random", "--samples", "40", "-o", work / "p.npy"))
    assert "QEMU mps2-an386" in proc.stderr and "/40 " in proc.stderr
    quiet = ok(cli("run", m4_art, "--fill", "random", "--samples", "40", "-o", work / "p.npy"))
    assert quiet.stderr == ""  # not a terminal, not asked: no bar in logs
    _, path = mlp
    proc = ok(cli_env(env_on, "compile", path, "--target", "cortex-m4", "-o", work / "p-m4"))
    for stage in ("compile: passes", "compile: firmware", "compile: measure"):
        assert stage in proc.stderr
    assert "QEMU" in manifest(work / "p-m4")["versions"]["qemu"]  # measured there: its version recorded


def cli_env(env: dict, *args):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return cli(*args)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------
# bad input: one error line, exit 2, the option named
# ---------------------------------------------------------------------------------------------
def _error_args(name, work, host_art, onnx_path):
    out = work / f"err-{name}"
    if name == "uart_driver_missing":
        return ["compile", onnx_path, "--board", "nrf52840", "--uart-driver", work / "nope.c", "-o", out], (
            "nope.c",
            "no such file",
        )
    if name == "uart_driver_not_c":
        (work / "drv.c").mkdir(exist_ok=True)
        return ["compile", onnx_path, "--board", "nrf52840", "--uart-driver", work / "drv.c", "-o", out], (
            "drv.c",
        )
    if name == "board_on_host":
        return ["compile", onnx_path, "--target", "llvm", "--board", "nrf52840", "-o", out], ("--board",)
    if name == "uart_driver_on_host":
        return ["compile", onnx_path, "--target", "llvm", "--uart-driver", HAL, "-o", out], ("--uart-driver",)
    if name == "unknown_board":
        return ["compile", onnx_path, "--board", "nrf9999", "-o", out], ("nrf9999",)
    if name == "run_no_samples":
        return ["run", host_art], ("--input", "--fill")
    if name == "run_input_and_fill":
        np.save(work / "x.npy", np.zeros((1, 1, 64), np.float32))
        return ["run", host_art, "--input", work / "x.npy", "--fill", "zeros"], ("--fill",)
    if name == "run_per_sample_on_host":
        return ["run", host_art, "--fill", "zeros", "--timeout-per-sample", "5"], ("--timeout-per-sample",)
    if name == "run_per_sample_zero":
        return ["run", host_art, "--fill", "zeros", "--timeout-per-sample", "0"], ("--timeout-per-sample",)
    if name == "run_print_top_zero":
        return ["run", host_art, "--fill", "zeros", "--print-top", "0"], ("--print-top",)
    if name == "run_samples_without_fill":
        np.save(work / "x.npy", np.zeros((1, 1, 64), np.float32))
        return ["run", host_art, "--input", work / "x.npy", "--samples", "3"], ("--samples",)
    if name == "run_board_as_port":
        return ["run", host_art, "--board", "/dev/ttyACM0", "--fill", "zeros"], ("--port", "/dev/ttyACM0")
    if name == "run_bad_fill":
        return ["run", host_art, "--fill", "ones"], ("--fill",)
    raise AssertionError(name)


ERRORS = [
    "uart_driver_missing",
    "uart_driver_not_c",
    "board_on_host",
    "uart_driver_on_host",
    "unknown_board",
    "run_no_samples",
    "run_input_and_fill",
    "run_per_sample_on_host",
    "run_per_sample_zero",
    "run_print_top_zero",
    "run_samples_without_fill",
    "run_bad_fill",
    "run_board_as_port",
]


@pytest.mark.parametrize("name", ERRORS)
def test_bad_input_one_error_line(name, work, host_art, mlp):
    args, mentions = _error_args(name, work, host_art, mlp[1])
    before = sorted(p.name for p in work.iterdir())
    user_error(cli(*args), *mentions)
    after = sorted(p.name for p in work.iterdir())
    assert after == before, "the failed command left files behind"


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------
def test_compile_refuses_a_misspelt_option_naming_the_valid_ones(mlp):
    _, path = mlp
    with pytest.raises(TBNError) as e:
        tbn_tvm.compile(path, "cortex-m4", bord="nrf52840")
    assert "bord" in e.value.message and "board" in (e.value.hint or "")
    assert "did you mean board" in e.value.hint and e.value.hint.count("tuning_db") == 1
    with pytest.raises(TBNError) as e:
        tbn_tvm.compile(path, bord="nrf52840")  # no target: a host build; board is a Cortex-M option
    assert "did you mean board (a cortex-m option)" in e.value.hint
    with pytest.raises(TBNError) as e:
        tbn_tvm.compile(path, "llvm", board="nrf52840")
    assert "board" in e.value.message and "host" in e.value.message
    assert "board is a cortex-m option" in e.value.hint
    for word in ("board=", "flash_size=", "uart_driver=", "measure="):
        assert word in tbn_tvm.compile.__doc__


@pytest.mark.qemu
def test_api_board_implies_target_run_options_and_repr(mlp):
    zm, path = mlp
    m = tbn_tvm.compile(path, board="mps2-an500", measure=False)
    try:
        assert m.target.name == "cortex-m7"
        text = repr(m)
        assert "cortex-m7" in text and "3 layers" in text and "x: float32[1x64]" in text
        assert "board mps2-an500" in text and f"flash {m.report()['flash_bytes']:,} B" in text
        x = zm.sample(seed=2, n=3)["x"]
        y = m.run(x, count_instructions=True)
        assert y.shape == (3, *zm.output_shape)
        assert m.last_run_stats["instructions_per_inference"] > 0
        with pytest.raises(TBNError) as e:
            m.run(x, count_instructons=True)
        assert "count_instructons" in e.value.message and "count_instructions" in e.value.hint
    finally:
        m.close()


def test_save_and_load_print_nothing(mlp, work, capfd):
    zm, path = mlp
    m = tbn_tvm.compile(path, "llvm")
    capfd.readouterr()
    m.save(work / "quiet", force=True)
    loaded = tbn_tvm.load(work / "quiet")
    loaded.run(zm.sample(seed=0, n=1)["x"])
    out, err = capfd.readouterr()
    assert "Scope Saving" not in out + err and out.strip() == "" and err.strip() == ""


# ---------------------------------------------------------------------------------------------
# Tester's findings: zero-size tensors, --profile summary, --print-top per row, input_shapes,
# tune --runner rpc, --mcpu names
# ---------------------------------------------------------------------------------------------
def _gemm_model(path, x_dims) -> str:
    """Gemm x [x_dims] @ W^T, W [16, 32] tiled (p=4): output [x_dims[0], 16]."""
    from onnx import TensorProto, helper, numpy_helper

    w = zoo.tiled_weight((16, 32), 4, rng=np.random.default_rng(5))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_dims[0], 16])
    node = helper.make_node("Gemm", ["x", "fc.weight"], ["y"], name="fc", transB=1)
    graph = helper.make_graph([node], "g", [x], [y], initializer=[numpy_helper.from_array(w, "fc.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", zoo.OPSET)])
    model.ir_version = zoo.IR_VERSION
    import onnx

    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def rows_art(work):
    """A host build whose output is [4, 16] per sample."""
    out = work / "rows-llvm"
    ok(cli("compile", _gemm_model(work / "rows.onnx", (4, 32)), "-o", out))
    return out


def test_cortex_m_refuses_a_zero_size_input_early(work):
    path = _gemm_model(work / "zero.onnx", (0, 32))
    user_error(
        cli("compile", path, "--target", "cortex-m4", "--no-measure", "-o", work / "zero-m4"), "'x'", "0, 32"
    )
    with pytest.raises(TBNError, match=r"input 'x' has shape \[0, 32\]"):
        tbn_tvm.compile(path, "cortex-m4", measure=False)


def test_run_refuses_empty_runs(work, host_art):
    np.save(work / "empty.npy", np.zeros((0, 1, 64), np.float32))
    user_error(cli("run", host_art, "--input", work / "empty.npy"), "0 samples")
    art = work / "zero-llvm"
    ok(cli("compile", _gemm_model(work / "zero.onnx", (0, 32)), "-o", art))
    user_error(cli("run", art, "--fill", "zeros", "--print-top", "2"), "--print-top", "no elements")


def test_run_profile_summary_is_honest(host_art):
    text = ok(cli("run", host_art, "--fill", "random", "--profile")).stdout
    first = text.splitlines()[0]
    assert "profiling not included" in first, text
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("tbn_") or ln.startswith("fused_")]
    last = text.strip().splitlines()[-1]
    assert "the table's total" in last, text
    kernels_ms = float(last.split("kernels ")[1].split(" ms")[0])
    assert rows and abs(sum(float(r[-2]) for r in rows) - kernels_ms) <= 1e-3 + 0.01 * kernels_ms, text


def test_print_top_per_row_of_the_last_axis(rows_art, work):
    x = np.random.default_rng(3).standard_normal((2, 4, 32)).astype(np.float32)
    np.save(work / "rows-x.npy", x)
    proc = ok(
        cli("run", rows_art, "--input", work / "rows-x.npy", "-o", work / "rows-y.npy", "--print-top", "2")
    )
    y = np.load(work / "rows-y.npy")
    assert y.shape == (2, 4, 16)
    assert "last axis" in proc.stdout
    for n in range(2):
        for r in range(4):
            line = next(
                ln for ln in proc.stdout.splitlines() if ln.strip().startswith(f"sample {n} row [{r}]:")
            )
            got = [int(p.split("(")[0]) for p in line.split(":", 1)[1].split(",")]
            assert got == np.argsort(-y[n, r], kind="stable")[:2].tolist()
    summary = json.loads(
        ok(
            cli(
                "run",
                rows_art,
                "--input",
                work / "rows-x.npy",
                "-o",
                work / "rows-y.npy",
                "--print-top",
                "2",
                "--json",
            )
        ).stdout
    )
    assert len(summary["top"]) == 2 and len(summary["top"][0]) == 4 and len(summary["top"][0][0]) == 2
    assert all(0 <= i < 16 for i, _ in summary["top"][1][3])


def test_api_input_shapes_string_and_zero(work):
    path = work / "dyn.onnx"
    import onnx

    onnx.save(zoo.dynamic_batch_model(), path)
    m = tbn_tvm.compile(path, "llvm", input_shapes={"x": "4,32"})
    assert m.inputs[0].shape == (4, 32)
    for bad in ([0, 32], "0,32", "a,32", 5, [1.5, 32]):
        with pytest.raises(TBNError, match="bad shape for input 'x'"):
            tbn_tvm.compile(path, "llvm", input_shapes={"x": bad})
    user_error(
        cli("compile", path, "--input-shape", "y=4,32", "-o", work / "dyn-out"),
        "unknown input 'y'",
        "inputs: x",
    )


def test_tune_rpc_runner_arguments_checked_first(work, mlp):
    import time

    _, path = mlp
    logs_before = (zoo.REPO_ROOT / "logs").exists()
    t0 = time.monotonic()
    proc = cli("tune", path, "--runner", "rpc", "--db", work / "db-rpc", "--trials", "1", "-q")
    user_error(proc, "--rpc", "--device-key")
    assert time.monotonic() - t0 < 25
    assert not (work / "db-rpc").exists() and (zoo.REPO_ROOT / "logs").exists() == logs_before
    user_error(
        cli("tune", path, "--rpc", "nohost", "--device-key", "k", "--db", work / "db-rpc"), "bad --rpc"
    )


def test_mcpu_names_are_checked(tmp_path):
    from tbn_tvm.targets import resolve_target

    line = user_error(
        cli("compile", "no-such.onnx", "--mcpu", "skylak", "-o", tmp_path / "x"),
        "skylak",
        "did you mean skylake",
    )
    assert "native" in line
    with pytest.raises(TBNError, match="notacpu"):
        tbn_tvm.compile("no-such.onnx", "llvm", mcpu="notacpu")
    for target, cpu in (
        ("llvm", "native"),
        ("llvm", "generic"),
        ("llvm", "x86-64-v3"),
        ("aarch64-linux-gnu", "cortex-a72"),
    ):
        resolve_target(target, cpu)
    with pytest.raises(TBNError, match="cortex-a7z"):
        resolve_target("aarch64-linux-gnu", "cortex-a7z")
