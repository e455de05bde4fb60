"""Issue 21's acceptance check: does tuning earn its place against the build users get?

``python -m benchmarks.tune_gain [--models heldout_wide_resnet,heldout_vit] [--trials 48] [--batch 8]``

For each held-out tiled model (:mod:`benchmarks.architectures`, ``tbnify`` p=4, random weights:
nothing here was tuned on them) it writes the ONNX file, runs ``tbn-tvm tune --trials N`` in a
subprocess (wall clock), runs it again with the same ``--trials`` (no new trials: the chosen
forms, the project's files and the built library must not change), then compiles the untuned
default build (``tbn_tvm.compile(model, "llvm")``) and the tuned one (``tuning_db=DB``) in this
process and times them **alternately**: ``--rounds`` rounds, each the two builds one after the
other in a rotating order, each a mean over ``--number`` inferences (TVM's time evaluator:
:meth:`tbn_tvm.CompiledModel.time`).  Reported per model: median of the per-round ratios
untuned / tuned (> 1: the tuned build is faster), its interquartile range, both medians, the
outputs' largest difference, what tuning applied, and the machine's load.  Writes
``tune_gain.json`` into ``--out``.  Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REQUIRED_NEVER_SLOWER = 0.95
REQUIRED_ONE_GAIN = 1.1


def _files(db: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(db.iterdir())
        if p.is_file() and p.suffix == ".json"
    }


def _tune(path: Path, db: Path, trials: int) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "tbn_tvm", "tune", str(path), "--target", "llvm", "--trials", str(trials)]
    cmd += ["--db", str(db), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode:
        raise RuntimeError(f"tune failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def _library_digest(model) -> str:
    with tempfile.TemporaryDirectory() as d:
        model.save(Path(d) / "out")
        return hashlib.sha256((Path(d) / "out" / "model.so").read_bytes()).hexdigest()[:16]


def alternated(models: dict, x: np.ndarray, rounds: int, number: int) -> dict[str, list[float]]:
    """Seconds per inference of each compiled model, one value per round, the models timed one
    after the other in each round (rotating order) after a warm-up."""
    names = list(models)
    # warm-up: at least half a second each (the first few hundred milliseconds after compiling
    # ran up to 2.5x slower than the rest on the 2-core machine, for whichever model came first)
    for m in models.values():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            m.time(x, number=number, repeat=1)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            out[n].append(models[n].time(x, number=number, repeat=1)[0])
    return out


def check_model(
    name: str, out: Path, trials: int, rounds: int, number: int | None, log, batch: int = 1
) -> dict:
    import tbn_tvm
    from benchmarks.architectures import benchmark_model

    tag = name if batch == 1 else f"{name}-b{batch}"
    path = out / f"{tag}.onnx"
    bench = benchmark_model(name, path, batch=batch)
    x = bench.input
    db = out / f"db-{tag}"
    tune_s, stdout = _tune(path, db, trials)
    log(f"{name}: tuned with {trials} trials in {tune_s:.0f} s")
    files_1 = _files(db)
    # the files after the first run, kept to compare a re-run with
    shutil.copytree(db, Path(tempfile.mkdtemp(prefix=f"db-{tag}-first-run-", dir=out)), dirs_exist_ok=True)
    tuned_1 = tbn_tvm.compile(path, "llvm", tuning_db=db)
    lib_1 = _library_digest(tuned_1)
    retune_s, restdout = _tune(path, db, trials)
    files_2 = _files(db)
    default = tbn_tvm.compile(path, "llvm")
    tuned = tbn_tvm.compile(path, "llvm", tuning_db=db)
    lib_2 = _library_digest(tuned)
    y0, y1 = np.asarray(default.run(x)), np.asarray(tuned.run(x))
    diff = float(np.max(np.abs(y0 - y1)) / max(1e-30, float(np.max(np.abs(y0)))))
    if number is None:  # about 20 ms per timing
        one = min(default.time(x, number=3, repeat=3))
        number = max(1, int(0.02 / max(one, 1e-6)))
    times = alternated({"default": default, "tuned": tuned}, x, rounds, number)
    ratios = np.asarray(times["default"]) / np.asarray(times["tuned"])
    q25, q50, q75 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    result = {
        "model": name,
        "batch": batch,
        "trials": trials,
        "tune_wall_s": round(tune_s, 1),
        "retune_wall_s": round(retune_s, 1),
        "rerun_files_unchanged": files_1 == files_2,
        "rerun_files_changed": sorted(
            k for k in set(files_1) | set(files_2) if files_1.get(k) != files_2.get(k)
        ),
        "rerun_library_unchanged": lib_1 == lib_2,
        "default_median_ms": float(np.median(times["default"])) * 1e3,
        "tuned_median_ms": float(np.median(times["tuned"])) * 1e3,
        "speedup_median": q50,
        "speedup_q25": q25,
        "speedup_q75": q75,
        "rounds": rounds,
        "number": number,
        "max_rel_diff_outputs": diff,
        "tuning_in_build": tuned.report().get("tuning"),
        "tune_summary": stdout[-4000:],
        "load_average_after": os.getloadavg(),
    }
    log(
        f"{tag}: default {result['default_median_ms']:.3f} ms, tuned {result['tuned_median_ms']:.3f} ms, "
        f"speedup {q50:.3f}x (IQR {q25:.3f}-{q75:.3f}, {rounds} rounds x {number}); "
        f"re-run unchanged: files {result['rerun_files_unchanged']}, library {result['rerun_library_unchanged']}; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune_gain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="heldout_wide_resnet,heldout_vit", help="comma-separated names")
    ap.add_argument("--trials", type=int, default=48, help="tuning trials per model (default 48)")
    ap.add_argument("--rounds", type=int, default=41, help="alternated timing rounds (default 41)")
    ap.add_argument("--number", type=int, default=None, help="inferences per timing (default: ~20 ms)")
    ap.add_argument("--batch", type=int, default=1, help="the models' batch size (default 1)")
    ap.add_argument("--out", default=None, metavar="DIR", help="where to write models, databases, JSON")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tbn-tune-gain-"))
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"load average {os.getloadavg()}; output in {out}")
    results = [
        check_model(n, out, args.trials, args.rounds, args.number, log, args.batch)
        for n in args.models.split(",")
    ]
    (out / "tune_gain.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(
        "| model | batch | trials | default ms | tuned ms | untuned/tuned (median, IQR) | re-run unchanged |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['batch']} | {r['trials']} | {r['default_median_ms']:.3f} | {r['tuned_median_ms']:.3f} | "
            f"{r['speedup_median']:.3f}x ({r['speedup_q25']:.3f}-{r['speedup_q75']:.3f}) | "
            f"{'yes' if r['rerun_files_unchanged'] and r['rerun_library_unchanged'] else 'NO'} |"
        )
    never = all(r["speedup_median"] >= REQUIRED_NEVER_SLOWER for r in results)
    one = any(r["speedup_median"] >= REQUIRED_ONE_GAIN for r in results)
    print(
        f"\nnever slower (>= {REQUIRED_NEVER_SLOWER}x): {'yes' if never else 'no'}; "
        f">= {REQUIRED_ONE_GAIN}x on one: {'yes' if one else 'no'}; load average {os.getloadavg()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
