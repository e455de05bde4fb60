"""Run a long job in a child process that an interrupt ends at once, with everything it started.

``tbn-tvm tune`` runs MetaSchedule, whose builder and runner start worker processes (``python -m
tvm.exec.popen_worker``) and whose search loop runs in C++ with Python callbacks.  A Ctrl-C or
SIGTERM raised inside that loop once ended the process with a segmentation fault (status -11,
no ``error:`` line), and a killed run could leave workers behind.  :func:`call_in_child` runs the
job in a child process that leads a process group of its own (its workers join that group):

* the parent only waits, reading the child's messages; a SIGINT or SIGTERM it receives (the CLI
  turns both into exceptions) ends the whole group — SIGTERM, then SIGKILL after a grace period
  — before the exception goes on, so the CLI prints its one ``error:`` line and exits 130/143;
* the child holds the read end of a pipe whose write end only the parent holds: when the
  parent dies without cleaning up (SIGKILL), the child sees end-of-file and kills its group;
* what the child returns, and a :class:`~tbn_tvm.errors.TBNError` it raises, come back through
  a pipe of their own (JSON lines), so its stdout and stderr stay the user's.

The job is named ``"package.module:function"``; it is called as ``function(say, **kwargs)``
with JSON-able ``kwargs``, ``say(text)`` passes a message to the parent's ``on_message``, and it
returns something JSON-able.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from tbn_tvm.errors import TBNError

#: Seconds the child's group gets to end after SIGTERM before it is killed.
GRACE_S = 5.0


def call_in_child(
    job: str, kwargs: dict, on_message: Callable[[str], None] | None = None, grace_s: float = GRACE_S
):
    """Call ``job`` (``"module:function"``) in a child process group; returns its result.

    Raises the child's TBNError again here, RuntimeError for anything else it raised or for a
    child that died without an answer; an exception raised here while waiting (KeyboardInterrupt
    for Ctrl-C, the CLI's SIGTERM) first ends the child and every process of its group."""
    msg_r, msg_w = os.pipe()
    life_r, life_w = os.pipe()
    cmd = [sys.executable, "-m", "tbn_tvm.supervise", job, str(msg_w), str(life_r), json.dumps(kwargs)]
    try:
        proc = subprocess.Popen(cmd, pass_fds=(msg_w, life_r), process_group=0, stdin=subprocess.DEVNULL)
    except BaseException:
        for fd in (msg_r, msg_w, life_r, life_w):
            os.close(fd)
        raise
    os.close(msg_w)
    os.close(life_r)
    answer: dict = {}
    try:
        with os.fdopen(msg_r, "r", encoding="utf-8", errors="replace") as replies:
            for line in replies:
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if "message" in reply:
                    if on_message is not None:
                        on_message(str(reply["message"]))
                else:  # the answer is the last line
                    answer = reply
                    break
        code = proc.wait()
    except BaseException:
        end_group(proc, grace_s)
        raise
    finally:
        os.close(life_w)
    if "result" in answer:
        return answer["result"]
    if "error" in answer:
        raise TBNError(answer["error"]["message"], hint=answer["error"].get("hint"))
    if "internal" in answer:
        raise RuntimeError(answer["internal"])
    how = f"signal {-code}" if code < 0 else f"status {code}"
    raise RuntimeError(f"the {job.rpartition(':')[2]} process ended with {how} and no answer")


def end_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """End the child and every process of its group: SIGTERM, then SIGKILL after ``grace_s``.
    Signals are held meanwhile (a second Ctrl-C cannot cut the clean-up short)."""
    held = {signal.SIGINT, signal.SIGTERM}
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        pgid = proc.pid  # the child leads its group (process_group=0)
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)  # workers still busy, or a child that ignored SIGTERM
        proc.wait()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _signal_group(pgid, 0):  # until the group is gone
            time.sleep(0.05)
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when it has no process left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies waiting to be reaped are left
        return False
    return True


# ------------------------------------------------------------------------------ the child
def _watch_parent(life_fd: int) -> None:
    """Block until the parent's end of the lifeline closes, then end this whole group."""
    with contextlib.suppress(OSError):
        while os.read(life_fd, 4096):
            pass
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _child(argv: list[str]) -> int:
    job, msg_fd, life_fd, kwargs = argv
    for fd in (int(msg_fd), int(life_fd)):  # not passed on to the job's own processes
        os.set_inheritable(fd, False)
    threading.Thread(target=_watch_parent, args=(int(life_fd),), daemon=True).start()
    replies = os.fdopen(int(msg_fd), "w", encoding="utf-8", buffering=1)
    lock = threading.Lock()

    def send(obj: dict) -> None:
        with lock:
            replies.write(json.dumps(obj) + "\n")

    try:
        import importlib

        module, _, name = job.partition(":")
        result = getattr(importlib.import_module(module), name)(
            lambda m: send({"message": m}), **json.loads(kwargs)
        )
        send({"result": result})
        return 0
    except TBNError as e:
        send({"error": {"message": e.message, "hint": e.hint}})
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - reported by the parent as an internal error
        if os.environ.get("TBN_TVM_DEBUG"):
            import traceback

            traceback.print_exc()
        send({"internal": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"})
        return 1
    finally:
        replies.flush()


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
