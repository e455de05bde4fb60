"""Auto-tuning (tbn_tvm.schedules.tuning): a short run on llvm applied with numerics unchanged,
resume after a kill, the QEMU runner on one kernel, and the RPC runner through TVM's own tracker
and servers on loopback.  Speed is not asserted here (benchmarks measure it); what is asserted is
that records are made, kept, found again and applied without changing the outputs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_zoo as zoo
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("xgboost")

import tbn_tvm  # noqa: E402
from tbn_tvm.errors import TBNError  # noqa: E402
from tbn_tvm.schedules.tuning import RECORDS_FILE, make_runner, open_database, tune  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _tiled_gemm(path: Path, m: int = 4, k: int = 64, n: int = 32, p: int = 4) -> tuple[Path, np.ndarray]:
    w = zoo.tiled_weight((n, k), p, "per_copy", np.random.default_rng(0))
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W"], ["y"], transB=1, name="fc"),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path, w


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One short tuning run (8 trials) of the tiled GEMM, shared: each test works on a copy of
    its database."""
    d = tmp_path_factory.mktemp("tuned")
    model, w = _tiled_gemm(d / "m.onnx")
    result = tune(model, "llvm", trials=8, db=d / "db", progress=False)
    return model, w, d / "db", result


def _copy(db: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(db, tmp_path / "db"))


def test_short_run_applied_with_unchanged_numerics(tuned, tmp_path):
    model, w, first_db, result = tuned
    db = _copy(first_db, tmp_path)
    assert result.trials_run >= 1 and (db / RECORDS_FILE).stat().st_size > 0
    assert any("fc" in t["layers"] for t in result.tasks)
    assert result.curve and result.curve[-1]["trials"] >= result.trials_run
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    ref = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64), 0)
    plain = tbn_tvm.compile(model, "llvm").run(x)
    # the layer keeps whichever of its kernels was timed fastest: hand bit-serial, hand decoded or
    # tuned decoded; a decoded layer then has either its record applied or its hand schedule kept
    assert set(result.forms.values()) <= {"decoded", "bitserial"}, result.forms
    as_chosen = tbn_tvm.compile(model, "llvm", tuning_db=db)
    info = as_chosen.report()["tuning"]
    assert bool(info["kernels"] or info["kept_hand_schedule"]) == (result.forms.get("fc") == "decoded")
    from tbn_tvm.schedules.tuning import (
        BASELINES_FILE,
        _tuning_target,
        _write_forms,
        _write_host_baselines,
        target_key,
        time_hand_kernels,
    )
    from tbn_tvm.targets import resolve_target

    spec = resolve_target("llvm")
    key = target_key(_tuning_target(spec))
    _write_forms(db, key, {"fc": "decoded"})
    # without hand baselines every matching record applies: the records are found
    (db / BASELINES_FILE).unlink(missing_ok=True)
    tuned = tbn_tvm.compile(model, "llvm", tuning_db=db)
    assert tuned.report()["tuning"]["kernels"], "records must be found and applied"
    # a hand schedule timed faster than the record keeps it, and the manifest says so
    _, by_workload = time_hand_kernels(model, spec, None, "decoded")
    assert by_workload
    _write_host_baselines(db, key, {w: 1e-12 for w in by_workload})
    kept = tbn_tvm.compile(model, "llvm", tuning_db=db)
    assert not kept.report()["tuning"]["kernels"] and kept.report()["tuning"]["kept_hand_schedule"]
    for got in (plain, as_chosen.run(x), tuned.run(x), kept.run(x)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # a second run resumes: nothing left to do for the same budget
    again = tune(model, "llvm", trials=8, db=db, progress=False)
    assert again.trials_before >= result.trials_run and again.trials_run == 0


def test_records_for_another_shape_are_ignored(tuned, tmp_path):
    from tbn_tvm.schedules.tuning import BASELINES_FILE, _tuning_target, _write_forms, target_key
    from tbn_tvm.targets import resolve_target

    db = _copy(tuned[2], tmp_path)
    # the decoded form and no hand baselines: a record of the same shape would apply (as the
    # test above shows), one of another shape must not
    _write_forms(db, target_key(_tuning_target(resolve_target("llvm"))), {"fc": "decoded"})
    (db / BASELINES_FILE).unlink(missing_ok=True)
    other, _ = _tiled_gemm(tmp_path / "other.onnx", m=3)
    assert tbn_tvm.compile(other, "llvm", tuning_db=db).report()["tuning"]["kernels"] == []


def _descendants(pid: int) -> dict[int, str]:
    """Processes below ``pid`` (Linux /proc): pid -> command line."""
    parents, cmds = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmds[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for c, parent in parents.items():
            if parent == p and c not in found:
                found[c] = cmds.get(c, "")
                todo.append(c)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_interrupt_once_workers_are_up_ends_cleanly_keeping_records(tmp_path):
    """Ctrl-C once MetaSchedule's builder/runner workers are up (it once ended with a
    segmentation fault): exit 130 and one ``error:`` line, no worker left, the records measured
    so far kept and readable (a line cut short by a kill is dropped when the database opens)."""
    model, _ = _tiled_gemm(tmp_path / "m.onnx")
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "tbn_tvm", "tune", str(model), "--trials", "64", "--db", str(db), "-q"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's foreground job: SIGINT handled as Ctrl-C (pytest-xdist workers ignore it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    records = db / RECORDS_FILE
    deadline = time.time() + 300
    workers: dict[int, str] = {}
    while time.time() < deadline and proc.poll() is None:
        workers = {p: c for p, c in _descendants(proc.pid).items() if "tvm.exec.popen_worker" in c}
        if workers and records.exists() and records.stat().st_size > 0:
            break
        time.sleep(0.5)
    assert proc.poll() is None and workers, "the run ended before its workers measured a record"
    measured = len([line for line in records.read_text().splitlines() if line.strip()])
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "error: interrupted" and "Traceback" not in err, err
    time.sleep(1)
    assert not [p for p in workers if _running(p)], "workers outlived 'tune'"
    lines = [line for line in records.read_text().splitlines() if line.strip()]
    assert len(lines) >= measured >= 1 and all(json.loads(line) for line in lines)
    with records.open("ab") as f:  # a kill in the middle of a line
        f.write(b'[0, [["half a rec')
    assert len(open_database(db, create=False).get_all_tuning_records()) == len(lines)


@pytest.mark.qemu
def test_qemu_runner_counts_one_kernel():
    import tvm
    from tvm import te

    from tbn_tvm.schedules.qemu_runner import build_c, count_instructions

    a = te.placeholder((64,), "float32", name="a")
    b = te.compute((64,), lambda i: a[i] * 2.0, name="b")
    func = te.create_prim_func([a, b])
    src = build_c(tvm.IRModule({"main": func}), None).inspect_source()
    n64 = count_instructions(src, [((64,), "float32"), ((64,), "float32")])
    a2 = te.placeholder((256,), "float32", name="a")
    b2 = te.compute((256,), lambda i: a2[i] * 2.0, name="b")
    src2 = build_c(tvm.IRModule({"main": te.create_prim_func([a2, b2])}), None).inspect_source()
    n256 = count_instructions(src2, [((256,), "float32"), ((256,), "float32")])
    assert 0 < n64 < n256 and n256 - n64 >= 3 * 192  # at least load, multiply and store per element


@pytest.mark.qemu
def test_cortex_m_tuning_keeps_predictions(tmp_path):
    model, w = _tiled_gemm(tmp_path / "m.onnx", m=1, k=64, n=32)
    db = tmp_path / "db"
    result = tune(model, "cortex-m4", trials=6, db=db, progress=False)
    assert result.trials_run >= 1
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    ref = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64), 0)
    base = tbn_tvm.compile(model, "cortex-m4")
    tuned = tbn_tvm.compile(model, "cortex-m4", tuning_db=db)
    y0, y1 = base.run(x, count_instructions=True), None
    i0 = base.last_run_stats["instructions_per_inference"]
    y1 = tuned.run(x, count_instructions=True)
    i1 = tuned.last_run_stats["instructions_per_inference"]
    for y in (y0, y1):
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert i1 <= i0, "a record is applied only where it beats the hand schedule"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_runner_refuses_a_missing_tracker():
    with pytest.raises(TBNError, match="no RPC tracker answers"):
        make_runner("rpc", f"127.0.0.1:{_free_port()}", "tbn-test")


def test_rpc_runner_on_loopback(tmp_path):
    """TVM's own tracker and two servers on loopback, started and stopped here."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tvm.exec.rpc_tracker",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--port-end",
                str(port + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "tracker.log", "w"),  # noqa: SIM115 - closed with the process
            env=env,
            process_group=0,  # with the popen_worker it serves from: ended together below
        )
    ]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the tracker imports TVM first: seconds on a loaded machine
            assert procs[0].poll() is None, (tmp_path / "tracker.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tvm.exec.rpc_server",
                        "--tracker",
                        f"127.0.0.1:{port}",
                        "--key",
                        "tbn-test",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(server_port := _free_port()),
                        "--port-end",  # TVM's default end (9199) is below a free ephemeral port
                        str(server_port + 1),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    process_group=0,
                )
            )
        from tvm import rpc

        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                summary = rpc.connect_tracker("127.0.0.1", port).summary()
                if sum(q.get("free", 0) for q in summary.get("queue_info", {}).values()) >= 2:
                    break
            except Exception:  # noqa: BLE001 - the tracker is still starting
                pass
            time.sleep(1)
        model, w = _tiled_gemm(tmp_path / "m.onnx")
        db = tmp_path / "db"
        result = tune(
            model,
            "llvm",
            trials=4,
            db=db,
            runner="rpc",
            rpc=f"127.0.0.1:{port}",
            device_key="tbn-test",
            progress=False,
        )
        assert result.trials_run >= 1
        records = [json.loads(line) for line in (db / RECORDS_FILE).read_text().splitlines() if line.strip()]
        assert any(rec[1][1] for rec in records), "some candidate measured through the servers"
        x = np.ones((4, 64), np.float32)
        ref = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64), 0)
        np.testing.assert_allclose(
            tbn_tvm.compile(model, "llvm", tuning_db=db).run(x), ref, rtol=1e-5, atol=1e-4
        )
    finally:
        # TVM's tracker and servers serve from a popen_worker child that outlives a terminated
        # parent (three such orphans were once left after the suite): end each whole group
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_qemu_artifacts_live_in_a_directory_of_their_own():
    """MetaSchedule removes an artifact's whole directory after measuring it: the C candidate
    must never be written straight into the system temporary folder (that would delete it)."""
    import tempfile

    import tvm
    from tvm import te

    from tbn_tvm.schedules.qemu_runner import build_c, export_c

    a = te.placeholder((4,), "float32", name="a")
    b = te.compute((4,), lambda i: a[i] + 1.0, name="b")
    path = Path(export_c(build_c(tvm.IRModule({"main": te.create_prim_func([a, b])}), None)))
    try:
        assert path.parent != Path(tempfile.gettempdir())
        assert [p.name for p in path.parent.iterdir()] == [path.name]
    finally:
        import shutil

        shutil.rmtree(path.parent)


def test_hand_kernels_are_timed_for_the_form_choice():
    """choose_forms compares each tuned layer with its hand-scheduled kernel; an untimed hand
    kernel once counted as infinitely slow, so the tuned form always won (and was slower)."""
    from tbn_tvm.schedules.tuning import time_bitserial_kernels
    from tbn_tvm.targets import resolve_target

    model = Path(__file__).resolve().parents[2] / "examples" / "tbn-mnist-mlp.onnx"
    times = time_bitserial_kernels(model, resolve_target("llvm"))
    assert set(times) == {"fc1", "fc2"}, times
    assert all(0 < t < 0.1 for t in times.values()), times
