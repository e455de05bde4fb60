"""Runs robustness cases through the fork server (``zygote.py``) and classifies what happened.

A case is a folder of its own (``<root>/<name>/``) holding the model, the user's files around it
and the output directory.  Every CLI call and every onnxruntime reference runs in a forked child
bounded in time and memory.  After a case the folder is compared with its state before:

* a compile that failed left ``OUT_DIR`` exactly as it was (else: data loss), and a user's file
  anywhere (``notes.txt`` inside an earlier output, ``.out.old`` beside it) survives;
* nothing appeared outside ``OUT_DIR`` except the files a step was told to write (``--output``),
  and no temporary entry is left (in ``TMPDIR`` or beside ``OUT_DIR``);
* every file ``compile`` wrote has a plain generated name (model text never becomes a path), and
  C sources never carry the case's forbidden strings (hostile model names) outside comments;
* a build is run on the case's inputs and must match onnxruntime (NaN where it gives NaN); a
  build of a model onnxruntime refuses counts as a wrong output.

``python tests/robustness/harness.py`` runs the whole corpus and prints the counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MEM = 4 << 30  # address-space limit per child
FSIZE = 256 << 20  # largest file a child may write

# Outcomes.  Good: clean_error, right_build, interrupted.  Everything else is a failure.
GOOD = ("clean_error", "right_build", "interrupted")
BAD = (
    "traceback",
    "crash",
    "hang",
    "unclean_error",
    "wrong_output",
    "accepted_bad",
    "refused_valid",
    "data_loss",
    "write_outside",
    "unsafe_c",
)


@dataclass
class Case:
    """One robustness case.

    ``model``: bytes written to ``model/model.onnx`` (the default compile's input).
    ``expect``: ``error`` (must be refused cleanly), ``build`` (must build and match onnxruntime)
    or ``any`` (either).  ``setup(d)`` prepares extra files in the case folder.  ``steps``
    replaces the default ``compile`` + ``run``: each a list of argv strings where ``{d}``,
    ``{out}``, ``{model}`` are substituted, or a dict with ``argv``/``expect``/``signal``.
    ``feeds``: one sample per model input (default: random data from the model's declared
    inputs).  ``forbid_in_c``: strings that must not appear in generated C outside comments."""

    name: str
    kind: str
    model: bytes | None = None
    expect: str = "any"
    target: str = "llvm"
    compile_args: list[str] = field(default_factory=list)
    setup: Callable[[Path], None] | None = None
    steps: list | None = None
    feeds: dict[str, np.ndarray] | None = None
    forbid_in_c: list[str] = field(default_factory=list)
    timeout: float = 60.0
    out: str = "out"


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str = ""
    wall: float = 0.0


class Zygote:
    """One fork server process."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", TVM_NUM_THREADS="1", PYTHONPATH=str(HERE))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        line = self.proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("the robustness fork server did not start")

    def call(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the robustness fork server died")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


# ------------------------------------------------------------------ snapshots
def _snapshot(root: Path, skip: set[str]) -> dict[str, str]:
    """relative path -> content hash (or 'dir', 'link:target', 'fifo') for everything under root."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if (rel_dir / d).as_posix() not in skip]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if rel in skip:
                continue
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "special"
    return out


def _diff(before: dict, after: dict) -> tuple[list[str], list[str]]:
    lost = [k for k, v in before.items() if after.get(k) != v]
    new = [k for k in after if k not in before]
    return lost, new


# ------------------------------------------------------------------ model facts
_NP = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
}


def model_io(model_bytes: bytes) -> tuple[list[tuple[str, type, list[int]]], list[str]] | None:
    """(inputs as (name, dtype, shape), output names) of a model, None when it cannot be read."""
    import onnx

    try:
        m = onnx.load_from_string(model_bytes)
        inits = {i.name for i in m.graph.initializer}
        ins = []
        for v in m.graph.input:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
            ins.append((v.name, _NP.get(t.elem_type, np.float32), shape))
        return ins, [o.name for o in m.graph.output]
    except Exception:  # noqa: BLE001
        return None


def default_feeds(ins, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dtype, shape in ins:
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[name] = rng.integers(0, 5, shape).astype(dtype)
    return feeds


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)[:40] or "in"


_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def _bad_file_names(out: Path) -> list[str]:
    bad = []
    for p in out.rglob("*"):
        if not _FILE_NAME.match(p.name) or p.name in (".", ".."):
            bad.append(repr(p.relative_to(out).as_posix()))
    return bad


_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def _unsafe_c(out: Path, forbidden: list[str]) -> list[str]:
    """Forbidden strings found in generated C outside comments, and #include lines that name a
    path outside the output (absolute or with '..')."""
    found = []
    for p in list(out.rglob("*.c")) + list(out.rglob("*.h")):
        text = _COMMENTS.sub(" ", p.read_text(errors="replace"))
        for s in forbidden:
            if s in text:
                found.append(f"{p.name}: {s!r}")
        for m in re.finditer(r'^\s*#\s*include\s*["<]([^">]*)', text, re.M):
            if m.group(1).startswith("/") or ".." in m.group(1):
                found.append(f"{p.name}: #include {m.group(1)}")
    return found


# ------------------------------------------------------------------ running one case
def _classify(reply: dict, stderr: str, allowed_exit: tuple = (0, 2)) -> tuple[str, str]:
    last = stderr.strip().splitlines()[-1:] or [""]
    if reply["status"] in (-2, -15) and -reply["status"] in allowed_exit:
        # the signal came before the CLI installed its handlers: killed before it did anything
        return "interrupted", f"killed by signal {-reply['status']}"
    if reply["timed_out"]:
        return "hang", f"no end after {reply['wall']:.0f} s"
    if reply["status"] == 98 or "Traceback (most recent call last)" in stderr or "internal error" in stderr:
        return "traceback", stderr.strip()[-400:]
    status = reply["status"]
    if status not in allowed_exit:
        return "crash", f"exit status {status}: {stderr.strip()[-300:]}"
    if status == 0:
        return "ok", ""
    if status == 2 and not any(line.startswith("error:") for line in stderr.splitlines()):
        return "unclean_error", stderr.strip()[-300:]
    if status in (130, 143):
        return "interrupted", last[0]
    return "clean_error", last[0]


def _fmt(argv: list[str], d: Path, out: Path, model: Path) -> list[str]:
    return [a.replace("{d}", str(d)).replace("{out}", str(out)).replace("{model}", str(model)) for a in argv]


def run_case(z: Zygote, case: Case, root: Path) -> Result:
    t0 = time.monotonic()
    d = root / case.name
    d.mkdir(parents=True)
    (d / "tmp").mkdir()
    (d / "logs").mkdir()
    (d / "user").mkdir()
    (d / "user" / "notes.txt").write_text("the user's notes\n")
    (d / f".{case.out[:200]}.old").mkdir()
    (d / f".{case.out[:200]}.old" / "keep.txt").write_text("the user's folder beside OUT_DIR\n")
    model = d / "model" / "model.onnx"
    model.parent.mkdir()
    if case.model is not None:
        model.write_bytes(case.model)
    if case.setup is not None:
        case.setup(d)
    out = d / case.out
    skip = {"logs", "tmp", case.out}
    before = _snapshot(d, skip)
    out_before = _snapshot(out, set()) if out.is_dir() and not out.is_symlink() else None
    out_kind_before = _kind(out)
    env = {"TMPDIR": str(d / "tmp"), "TBN_TVM_DEBUG": "0"}
    told: set[str] = set()
    n = 0

    def step(argv, signal_=None, allowed=(0, 2), timeout=None):
        nonlocal n
        n += 1
        so, se = d / "logs" / f"{n}.out", d / "logs" / f"{n}.err"
        req = {
            "argv": argv,
            "cwd": str(d),
            "env": env,
            "stdout": str(so),
            "stderr": str(se),
            "timeout": timeout or case.timeout,
            "mem": MEM,
            "fsize": FSIZE,
        }
        if signal_:
            req["signal"] = signal_
        reply = z.call(req)
        err = se.read_text(errors="replace") if se.exists() else ""
        return reply, err

    def finish(outcome: str, detail: str = "") -> Result:
        # folder checks override a good outcome
        after = _snapshot(d, skip)
        lost, new = _diff(before, after)
        new = [k for k in new if k not in told]
        left_tmp = [p.name for p in (d / "tmp").iterdir()]
        if outcome in GOOD or outcome == "ok":
            if lost:
                outcome, detail = "data_loss", f"changed or lost: {lost[:5]}"
            elif new or left_tmp:
                outcome, detail = "write_outside", f"new: {new[:5]}, temporaries: {left_tmp[:5]}"
        return Result(case, outcome, detail, time.monotonic() - t0)

    if case.steps is not None:
        outcome = "clean_error"
        for s in case.steps:
            spec = s if isinstance(s, dict) else {"argv": s}
            if spec["argv"] == ["python-damage"]:  # the user (or an attacker) edits files
                spec["damage"](out)
                before = _snapshot(d, skip)
                continue
            if spec["argv"] == ["python-check"]:
                if not spec["check"](out):
                    return finish("data_loss", "a user's file in OUT_DIR changed")
                continue
            argv = _fmt(spec["argv"], d, out, model)
            told.update(spec.get("writes", []))
            allowed = (0, 2, 130, 143, 2, 15) if spec.get("signal") else (0, 2)
            out_snap = (_kind(out), _snapshot(out, set()) if out.is_dir() and not out.is_symlink() else None)
            reply, err = step(argv, spec.get("signal"), allowed)
            got, detail = _classify(reply, err, allowed)
            want = spec.get("expect", "any")
            if spec.get("signal") and got == "clean_error":  # a valid compile: only the signal ended it
                got, detail = "unclean_error", f"interruption reported as an error: {detail}"
            if got not in ("ok", "clean_error", "interrupted"):
                return finish(got, f"{argv[:1]}: {detail}")
            out_now = (_kind(out), _snapshot(out, set()) if out.is_dir() and not out.is_symlink() else None)
            if argv[0] != "compile" and out_now != out_snap:
                return finish("write_outside", f"{argv[0]} changed OUT_DIR")
            if got != "ok" and out_now != out_snap:
                return finish("data_loss", f"a failed or interrupted compile changed OUT_DIR ({got})")
            if want == "error" and got == "ok":
                return finish("accepted_bad", f"{' '.join(argv)[:200]} succeeded")
            if want == "ok" and got != "ok":
                return finish("refused_valid", f"{' '.join(argv)[:200]}: {detail}")
            if got == "ok" and argv[0] == "compile" and out.is_dir():
                bad = _bad_file_names(out)
                if bad:
                    return finish("write_outside", f"model text became file names: {bad[:3]}")
            if got == "interrupted" or outcome == "interrupted":
                outcome = "interrupted"
            elif got == "clean_error":
                outcome = "clean_error"
            elif argv[0] == "compile":
                outcome = "right_build"
        return finish(outcome)

    argv = ["compile", str(model), "-o", str(out), "--target", case.target, *case.compile_args]
    if case.target.startswith("cortex"):
        argv.append("--no-measure")
    reply, err = step(argv)
    got, detail = _classify(reply, err)
    if got != "ok":
        if got == "clean_error":
            if case.expect == "build":
                return finish("refused_valid", detail)
            # a refused compile leaves OUT_DIR exactly as it was
            if _kind(out) != out_kind_before or (
                out_before is not None and _snapshot(out, set()) != out_before
            ):
                return finish("data_loss", "a failed compile changed OUT_DIR")
        return finish(got, detail)
    if case.expect == "error":
        return finish("accepted_bad", "compile succeeded")
    bad = _bad_file_names(out)
    if bad:
        return finish("write_outside", f"model text became file names: {bad[:3]}")
    unsafe = _unsafe_c(out, case.forbid_in_c)
    if unsafe:
        return finish("unsafe_c", "; ".join(unsafe[:3]))
    # reference from onnxruntime (in a bounded child)
    src = case.model if case.model is not None else model.read_bytes()
    io = model_io(src)
    if io is None:
        return finish("accepted_bad", "built a model onnx cannot read")
    ins, outs = io
    feeds = case.feeds if case.feeds is not None else default_feeds(ins)
    ref_in = d / "logs" / "feeds.npz"
    np.savez(ref_in, **{f"i{i}": feeds[name] for i, (name, _, _) in enumerate(ins)})
    ref_out = d / "logs" / "ref.npz"
    req = {
        "call": "reference:onnxruntime_outputs",
        "args": [str(model), str(ref_in), [n for n, _, _ in ins], str(ref_out)],
        "cwd": str(d),
        "env": env,
        "stdout": str(d / "logs" / "ref.out"),
        "stderr": str(d / "logs" / "ref.err"),
        "timeout": 60,
        "mem": MEM,
    }
    reply = z.call(req)
    if reply["status"] != 0 or not ref_out.exists():
        why = (d / "logs" / "ref.err").read_text(errors="replace").strip()[-200:]
        if reply["status"] == 3:
            return finish("accepted_bad", f"onnxruntime refuses this model: {why}")
        return finish("accepted_bad", f"onnxruntime failed on it (status {reply['status']}): {why}")
    with np.load(ref_out) as f:
        refs = [f[f"o{i}"] for i in range(len(f.files))]
    # run the build on the same inputs (one sample stacked on a new axis)
    argv = ["run", str(out)]
    for name, _, _ in ins:
        p = d / "logs" / f"in_{_safe_name(name)}_{len(argv)}.npy"
        np.save(p, feeds[name][None])
        argv += ["--input", f"{name}={p}" if len(ins) > 1 else str(p)]
    if not ins:  # a model without inputs runs on an empty stack
        pass
    y = d / ("y.npz" if len(outs) > 1 else "y.npy")
    told.add(y.name)
    argv += ["--output", str(y)]
    out_after_compile = _snapshot(out, set())
    reply, err = step(argv)
    got, detail = _classify(reply, err)
    if got != "ok":
        if got == "clean_error":
            return finish("refused_valid" if case.expect == "build" else "clean_error", f"run: {detail}")
        return finish(got, f"run: {detail}")
    if _snapshot(out, set()) != out_after_compile:
        return finish("write_outside", "run changed OUT_DIR")
    try:
        if len(outs) > 1:
            with np.load(y) as f:
                got_arrays = [f[k] for k in f.files]
        else:
            got_arrays = [np.load(y)]
    except Exception as e:  # noqa: BLE001
        return finish("wrong_output", f"cannot read the run's output: {e}")
    if len(got_arrays) != len(refs):
        return finish("wrong_output", f"{len(got_arrays)} outputs, onnxruntime {len(refs)}")
    for g, r in zip(got_arrays, refs):
        g = g[0] if g.shape[:1] == (1,) and g.shape[1:] == r.shape else g
        if g.shape != r.shape:
            return finish("wrong_output", f"shape {g.shape}, onnxruntime {r.shape}")
        if r.dtype.kind in "fc":
            ok = np.allclose(g.astype(np.float64), r.astype(np.float64), rtol=1e-4, atol=1e-5, equal_nan=True)
            ok = ok and np.array_equal(np.isnan(g), np.isnan(r))
        else:
            ok = np.array_equal(g, r)
        if not ok:
            return finish("wrong_output", f"differs from onnxruntime: {g.ravel()[:6]} vs {r.ravel()[:6]}")
    return finish("right_build")


def _kind(p: Path) -> str:
    if p.is_symlink():
        return "link:" + os.readlink(p)
    if p.is_dir():
        return "dir"
    if p.exists():
        return "file"
    return "none"


# ------------------------------------------------------------------ the corpus
def run_all(cases: list[Case], root: Path, workers: int = 2) -> list[Result]:
    """Run every case (``workers`` fork servers in parallel); results in the cases' order."""
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    todo: queue.Queue = queue.Queue()
    for i, c in enumerate(cases):
        todo.put((i, c))
    results: list[Result | None] = [None] * len(cases)

    def work() -> None:
        z = Zygote()
        try:
            while True:
                try:
                    i, c = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[i] = run_case(z, c, root)
                except Exception as e:  # noqa: BLE001 - a harness fault is reported, not hidden
                    results[i] = Result(c, "traceback", f"harness: {type(e).__name__}: {e}")
                    if z.proc.poll() is not None:
                        z = Zygote()
                if results[i].outcome in GOOD and not os.environ.get("ROBUSTNESS_KEEP"):
                    shutil.rmtree(root / c.name, ignore_errors=True)
        finally:
            z.close()

    threads = [threading.Thread(target=work) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # a hostile name that became a path ("../canary-evil") would land beside the case folders
    strays = sorted(p.name for p in root.iterdir() if p.name not in set(names))
    if strays:
        stray_case = Case("(corpus root)", "writes outside")
        results.append(Result(stray_case, "write_outside", f"entries beside the case folders: {strays[:5]}"))
    return results  # type: ignore[return-value]


def counts(results: list[Result]) -> dict[str, int]:
    c = Counter(r.outcome for r in results)
    return {
        "cases": len(results),
        "clean errors": c["clean_error"],
        "right builds": c["right_build"],
        "interrupted cleanly": c["interrupted"],
        "tracebacks": c["traceback"] + c["crash"] + c["unclean_error"],
        "hangs": c["hang"],
        "wrong outputs": c["wrong_output"] + c["accepted_bad"] + c["refused_valid"],
        "data loss": c["data_loss"],
        "writes outside OUT_DIR": c["write_outside"] + c["unsafe_c"],
    }


LAST_REPORT = ""  # the latest report, for pytest's summary


def report(results: list[Result], wall: float | None = None) -> str:
    lines = ["robustness corpus: " + ", ".join(f"{k} {v}" for k, v in counts(results).items())]
    by_kind = Counter(r.case.kind for r in results)
    lines.append("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())))
    if wall is not None:
        lines.append(f"wall time {wall:.0f} s")
    for r in results:
        if r.outcome not in GOOD:
            lines.append(f"  BAD {r.outcome}: {r.case.name} ({r.case.kind}): {r.detail[:300]}")
    global LAST_REPORT
    LAST_REPORT = "\n".join(lines)
    return LAST_REPORT


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from cases import corpus

    ap = argparse.ArgumentParser(description="run the robustness corpus and print its counts")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="regular expression on case names")
    ap.add_argument("--keep", help="folder for the cases (default: a temporary one)")
    args = ap.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="tbn-robustness-"))
    root.mkdir(parents=True, exist_ok=True)
    cases = [c for c in corpus() if re.search(args.only, c.name)]
    t0 = time.monotonic()
    results = run_all(cases, root, args.workers)
    print(report(results, time.monotonic() - t0))
    return 0 if all(r.outcome in GOOD for r in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
