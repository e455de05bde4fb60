"""A fork server for the robustness corpus: imports tbn-tvm and TVM once, then runs each case in a
forked child that is bounded in time and memory.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.  A request::

    {"argv": [...],              # the tbn-tvm command line (what ``tbn-tvm`` gets), or
     "call": "module:function",  # a Python function (module importable from "sys_path")
     "args": [...],              # its JSON arguments
     "cwd": DIR, "env": {...}, "stdout": FILE, "stderr": FILE,
     "timeout": seconds, "mem": bytes (address-space limit, 0: none),
     "signal": [signum, delay_s]}  # optional: sent to the child after delay_s

The reply: ``{"status": exit status (negative: killed by that signal), "timed_out": bool,
"wall": seconds}``.  The child runs in its own process group (a hung child's compilers and
QEMU die with it); a child still running at its timeout gets SIGKILL and ``timed_out``.

Forking from one warm process costs milliseconds where starting ``tbn-tvm`` costs seconds
(``import tvm``), which is what lets a corpus of hundreds of cases run in CI in a few minutes
while every case keeps its own process: a crash, a hang or an exhausted memory limit ends that
case only.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback

import tvm  # noqa: F401
from tvm import relax  # noqa: F401

import tbn_tvm.api  # noqa: F401 - warm imports inherited by every child
import tbn_tvm.cli
import tbn_tvm.commands  # noqa: F401
import tbn_tvm.errors
import tbn_tvm.frontend.onnx  # noqa: F401
import tbn_tvm.passes.pipeline  # noqa: F401
import tbn_tvm.targets.host  # noqa: F401

try:  # the cases' reference outputs come from onnxruntime, run in children too
    import onnxruntime  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def _child(req: dict) -> None:
    # until the CLI runs, a signal kills the child as it would kill a starting tbn-tvm
    os.setsid()
    os.chdir(req["cwd"])
    os.environ.update(req.get("env", {}))
    tempfile.tempdir = None  # re-read TMPDIR
    sys.path[:0] = [p for p in req.get("sys_path", []) if p not in sys.path]
    fo = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fe = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fi = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((fi, 0), (fo, 1), (fe, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    mem = req.get("mem") or 0
    if mem:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    fsize = req.get("fsize") or 0
    if fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    code = 99
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as Python gives it
    try:
        if "argv" in req:
            code = tbn_tvm.cli.main(req["argv"])
        else:
            module, _, name = req["call"].partition(":")
            fn = getattr(importlib.import_module(module), name)
            try:
                fn(*req.get("args", []))
                code = 0
            except tbn_tvm.errors.TBNError as e:
                print(e.render(), file=sys.stderr)
                code = 2
    except BaseException:  # noqa: BLE001 - what escaped the CLI's own guard: report it as such
        traceback.print_exc()
        code = 98
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _serve(req: dict) -> dict:
    t0 = time.monotonic()
    # signals blocked across the fork: one sent at once reaches the child with default handlers
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _child(req)
        except KeyboardInterrupt:  # Ctrl-C pending from before the fork's handlers were reset
            os._exit(130)
        finally:
            os._exit(97)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    deadline = t0 + float(req.get("timeout", 60))
    sig = req.get("signal")
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if sig is not None and now >= t0 + sig[1]:
            try:
                os.kill(pid, sig[0])
            except ProcessLookupError:
                pass
            sig = None
        if now > deadline and not timed_out:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)
    if not timed_out:  # whatever the child started (a compiler, QEMU) ends with it
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return {
        "status": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "wall": time.monotonic() - t0,
    }


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        print(json.dumps(_serve(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
