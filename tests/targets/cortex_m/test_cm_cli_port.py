"""``tbn-tvm run OUT_DIR --port URL`` against a board stand-in: QEMU running ``firmware_uart.elf``
with its UART on a local TCP port (pyserial's ``socket://``), as a user's board on /dev/ttyACM0
would be reached (issue 14: ``--port`` for boards, ``--board`` only ever a profile)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import onnx_zoo as zoo
import pytest

import tbn_tvm

pytestmark = pytest.mark.qemu


def _cli(*args, **env_vars) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(zoo.REPO_ROOT), **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "tbn_tvm", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture
def uart_board(tmp_path):
    """(OUT_DIR, socket URL) of a Cortex-M4 build whose UART firmware runs on QEMU."""
    from tbn_tvm.targets.cortex_m.qemu import qemu_machine_args
    from tbn_tvm.targets.cortex_m.toolchain import find_qemu
    from tbn_tvm.targets.cortex_m.uart import _free_tcp_port

    out = tmp_path / "m4"
    tbn_tvm.compile(zoo.mlp().model, "cortex-m4", measure=False).save(out)
    port = _free_tcp_port()
    cmd = [find_qemu(), *qemu_machine_args(tbn_tvm.targets.cortex_m.get_board("cortex-m4"))]
    cmd += ["-serial", f"tcp:127.0.0.1:{port},server=on,wait=off", "-kernel", str(out / "firmware_uart.elf")]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until QEMU listens (the probe connection is dropped again)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("QEMU did not open its UART port")
                time.sleep(0.05)
        yield out, f"socket://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_run_port_serves_the_samples(uart_board, tmp_path):
    out, url = uart_board
    y_path = tmp_path / "y.npy"
    args = ["run", out, "--port", url, "--fill", "random", "--samples", "6", "--timeout-per-sample", "20"]
    proc = _cli(*args, "-o", y_path, "--json", TBN_TVM_PROGRESS="1")
    assert proc.returncode == 0, proc.stderr
    assert f"board {url}" in proc.stderr and "/6 " in proc.stderr  # the progress bar, asked for
    summary = json.loads(proc.stdout)
    assert summary["samples"] == 6 and summary["device"] == url
    x = np.random.default_rng(0).standard_normal((6, 1, 64)).astype(np.float32)
    host = tbn_tvm.compile(zoo.mlp().model, "llvm").run(x)
    np.testing.assert_allclose(np.load(y_path), host, rtol=1e-5, atol=1e-5 * np.abs(host).max())


def test_port_refuses_qemu_only_options(uart_board):
    out, url = uart_board
    proc = _cli("run", out, "--port", url, "--fill", "zeros", "--count-instructions")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "QEMU" in proc.stderr
