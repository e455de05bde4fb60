"""Issue 10's tuning acceptance check: ``python -m benchmarks.tune_check [--trials 64]``.

Writes the tiled dense layer of the criterion (``x[16, 512] @ W[256, 512]^T``, W tiled p=4 with
one scale per copy, :func:`benchmarks.models.tiled_gemm`), runs ``tbn-tvm tune`` on it for llvm
(``--mcpu native``) in a subprocess (the whole tune timed by the wall clock, process start
included), then times the untuned build (``tbn_tvm.compile(model, "llvm", mcpu="native")``,
the project's hand-scheduled kernel), the same decoded kernel with TVM's default loop nest (what
the search starts from: ``hand_schedules=False``) and the tuned build (``tuning_db=DB``: a
record applied only where it beats the hand schedule) with the benchmarks' harness (rounds spread over passes, medians, the trust rule), and checks both
against onnxruntime.  Prints a markdown table; writes ``tune_check.json`` and the tuning curve
into ``--out`` (default: a new temporary folder).  Not a test: the figures depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REQUIRED_SPEEDUP = 8.0
REQUIRED_TUNE_S = 120.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tune_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule trials (default 64)")
    ap.add_argument("--out", default=None, metavar="DIR", help="where to write the database and JSON")
    ap.add_argument("--rounds", type=int, default=15, help="at most N timing rounds per variant")
    ap.add_argument("--threads", type=int, default=None, help="TVM threads (default: usable cores)")
    args = ap.parse_args(argv)

    import onnx

    from benchmarks import harness, models

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tbn-tune-check-"))
    out.mkdir(parents=True, exist_ok=True)
    log = harness.Log()
    threads = harness.threads_setup(args.threads or harness.usable_cpus())
    model = models.tiled_gemm()
    path = out / "tiled_gemm_16x512x256_p4.onnx"
    onnx.save(model, path)
    db = out / "db"
    cmd = [sys.executable, "-m", "tbn_tvm", "tune", str(path), "--target", "llvm", "--mcpu", "native"]
    cmd += ["--trials", str(args.trials), "--db", str(db), "--quiet"]
    log(f"tuning: tbn-tvm tune MODEL --target llvm --mcpu native --trials {args.trials} --db DB --quiet")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    tune_s = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    log(f"tuned in {tune_s:.1f} s")

    import tbn_tvm
    from tbn_tvm.schedules.tuning import FORMS_FILE, RECORDS_FILE, WORKLOADS_FILE

    # the decoded form the search tunes, with TVM's default loop nest: the forms file alone (a
    # decoded choice there) and no hand schedule
    decoded = out / "db-forms-only"
    decoded.mkdir(exist_ok=True)
    chosen = json.loads((db / FORMS_FILE).read_text())
    forced = {key: {layer: "decoded" for layer in layers} for key, layers in chosen.items()}
    (decoded / FORMS_FILE).write_text(json.dumps(forced) + "\n")
    for name in (RECORDS_FILE, WORKLOADS_FILE):  # an empty database: no record to apply
        (decoded / name).write_text("")
    x = models.sample_input("tiled_gemm", model)
    ref = harness.ort_session(model.SerializeToString(), threads).run(None, {"x": x})[0]
    settings = harness.Settings.for_mode(False, args.rounds)
    timers, first, errs, forms = {}, {}, {}, {}
    variants = (
        ("untuned", {}),
        ("untuned decoded", {"tuning_db": decoded, "hand_schedules": False}),
        ("tuned", {"tuning_db": db}),
    )
    for name, opts in variants:
        cm = tbn_tvm.compile(model, "llvm", mcpu="native", **opts)
        t1 = time.perf_counter()
        y = cm.run(x)
        first[name] = time.perf_counter() - t1
        errs[name] = harness.rel_err(np.asarray(y), ref)
        forms[name] = cm.report().get("tuning")
        timers[name] = harness.tvm_timer(cm, x)
    timed = harness.measure(timers, first, settings, log)
    speedup = timed["untuned"]["median_s"] / timed["tuned"]["median_s"]
    trusted = timed["untuned"]["trusted"] and timed["tuned"]["trusted"]
    result = {
        "model": "tiled dense x[16,512] @ W[256,512]^T, W tiled p=4 (per-copy scales)",
        "trials": args.trials,
        "tune_wall_s": round(tune_s, 1),
        "tune_stdout_tail": proc.stdout[-2000:],
        "timings": timed,
        "rel_err_vs_onnxruntime": errs,
        "tuning_in_build": forms["tuned"],
        "speedup_median": speedup,
        "speedup_median_vs_untuned_decoded": timed["untuned decoded"]["median_s"]
        / timed["tuned"]["median_s"],
        "speedup_fastest_rounds": timed["untuned"]["min_s"] / timed["tuned"]["min_s"],
        "trusted": trusted,
        "load_average": harness.load_average(),
        "threads": threads,
    }
    (out / "tune_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    ms = {k: timed[k]["median_s"] * 1e3 for k in timed}
    print("| figure | required | measured | met |")
    print("|---|---|---|---|")
    ok = trusted and speedup >= REQUIRED_SPEEDUP
    note = "" if trusted else " (not measured enough)"
    print(
        f"| tuned vs untuned, median ms per call | >= {REQUIRED_SPEEDUP:g}x | {ms['untuned']:.4g} / "
        f"{ms['tuned']:.4g} ms = {speedup:.2f}x{note} | {'yes' if ok else 'no'} |"
    )
    dec = result["speedup_median_vs_untuned_decoded"]
    trusted_dec = timed["untuned decoded"]["trusted"] and timed["tuned"]["trusted"]
    print(
        f"| tuned vs the same decoded kernel untuned (TVM's default loop nest), median ms | >= "
        f"{REQUIRED_SPEEDUP:g}x | {ms['untuned decoded']:.4g} / {ms['tuned']:.4g} ms = {dec:.2f}x"
        f"{'' if trusted_dec else ' (not measured enough)'} | "
        f"{'yes' if trusted_dec and dec >= REQUIRED_SPEEDUP else 'no'} |"
    )
    print(
        f"| whole tune, {args.trials} trials (wall clock) | <= {REQUIRED_TUNE_S:g} s | {tune_s:.1f} s | "
        f"{'yes' if tune_s <= REQUIRED_TUNE_S else 'no'} |"
    )
    print(
        f"| max rel. err vs onnxruntime (untuned / untuned decoded / tuned) | <= 1e-05 | "
        f"{' / '.join(f'{errs[k]:.1e}' for k, _ in variants)} | {'yes' if max(errs.values()) <= 1e-5 else 'no'} |"
    )
    tuned_layers = forms["tuned"]
    print(
        f"\nload average {result['load_average']}; TVM threads {threads}; tuning in the build: {tuned_layers}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
