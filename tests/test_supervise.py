"""tbn_tvm.supervise: a job run in a child process group ends with everything it started, when
the parent is interrupted (SIGINT 130, SIGTERM 143, one ``error:`` line) and when the parent is
killed outright; its result, its TBNError and its messages come back to the parent.

The jobs here are small Python functions that start a grandchild (as MetaSchedule starts its
``popen_worker`` processes) and wait; ``tbn-tvm tune`` itself is interrupted in
tests/schedules/test_tuning.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tbn_tvm.errors import TBNError
from tbn_tvm.supervise import call_in_child

TESTS = Path(__file__).resolve().parent


def job_sleeps_with_a_worker(say, pid_file: str) -> None:
    """Start a grandchild that would run for a minute, say so, write both pids, wait."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    Path(pid_file).write_text(f"{os.getpid()} {worker.pid}")
    say("worker up")
    time.sleep(60)


def job_answers(say, x: int) -> dict:
    say(f"got {x}")
    if x < 0:
        raise TBNError("x must not be negative", hint="pass 0 or more")
    if x == 0:
        raise ZeroDivisionError("x is zero")
    return {"double": 2 * x}


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def test_result_error_and_messages_come_back(env):
    said = []
    assert call_in_child("test_supervise:job_answers", {"x": 4}, said.append) == {"double": 8}
    assert said == ["got 4"]
    with pytest.raises(TBNError, match="x must not be negative") as e:
        call_in_child("test_supervise:job_answers", {"x": -1})
    assert e.value.hint == "pass 0 or more"
    with pytest.raises(RuntimeError, match="ZeroDivisionError: x is zero"):
        call_in_child("test_supervise:job_answers", {"x": 0})


PARENT = """
import sys
from tbn_tvm.cli import guarded
from tbn_tvm.supervise import call_in_child
sys.exit(guarded(lambda: call_in_child("test_supervise:job_sleeps_with_a_worker", {"pid_file": sys.argv[1]},
                                       lambda m: print(m, flush=True))))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, None)]
)
def test_signal_to_the_parent_ends_the_child_and_its_worker(env, tmp_path, sig, code):
    pid_file = tmp_path / "pids"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(pid_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's foreground job: SIGINT handled as Ctrl-C (pytest-xdist workers ignore it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert parent.stdout.readline().strip() == "worker up"
        child, worker = map(int, pid_file.read_text().split())
        assert _alive(child) and _alive(worker)
        parent.send_signal(sig)
        out, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
    if code is None:
        assert parent.returncode == -signal.SIGKILL
    else:
        assert parent.returncode == code, err
        assert err.splitlines() == ["error: interrupted" if sig == signal.SIGINT else "error: terminated"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_alive(child) or _alive(worker)):
        time.sleep(0.1)
    assert not _alive(child) and not _alive(worker), "the job or its worker outlived the parent"
