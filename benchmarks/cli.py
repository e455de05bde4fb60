"""The command line of the benchmarks: ``python -m benchmarks [options]`` from the repository root
(``tbn-tvm bench`` runs the same from a checkout).

* ``python -m benchmarks``: the default suite (a few minutes); writes ``report.md``,
  ``report.json`` and ``speedup.png`` into ``--out`` (default ``benchmarks/results/``) and copies
  them to ``benchmarks/REPORT.md``, ``benchmarks/report.json`` and ``benchmarks/speedup.png``
  (not with ``--no-publish``).
* ``--quick``: the smoke run of the test suite (scaled-down models, under a minute, no copies).
* ``--model FILE.onnx [--input-shape NAME=D0,D1,...] [--target llvm|cortex-m4]``: any ONNX
  model; tbn-tvm against TVM's fp32 build and onnxruntime on the host (``llvm``), or against
  the dense build on QEMU (``cortex-m4``); same kind of report in ``--out``, never copied.

Errors a user can cause end with one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tbn_tvm import TBNError

PROG = "python -m benchmarks"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are one line too
        raise TBNError(message, hint=f"see '{self.prog} --help'")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        allow_abbrev=False,  # --model and --models must not be guessed from a prefix
        description="Benchmark tbn-tvm against onnxruntime and TVM's fp32 build on the host CPU and "
        "against the dense build on QEMU Cortex-M4; write report.md, report.json and speedup.png. "
        "Without --model: the default suite of benchmarks/models.py.",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: scaled-down models, few rounds (under a minute)"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write report.md, report.json, speedup.png (default: benchmarks/results)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="at most N timing rounds per measurement (default 15; 5 with --quick)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for TVM and onnxruntime (default: the cores this process may use)",
    )
    p.add_argument("--skip-cortex-m", action="store_true", help="leave out the QEMU Cortex-M4 measurements")
    p.add_argument(
        "--skip-host",
        action="store_true",
        help="leave out the host timings (and their tuning): only the QEMU Cortex-M4 measurements",
    )
    p.add_argument(
        "--cases",
        default=None,
        metavar="KEY[,KEY...]",
        help="only these models of the default suite (e.g. tiled_resnet,wide_mlp_p8; an unknown key "
        "lists the keys); 'real' picks issue 19's real-architecture table (fourteen networks, or one by "
        "name, e.g. resnet18d; 'real_eleven', 'held_out': its two groups; small sizes with --quick); "
        "'subbit' picks issue 23's sub-bit layers (bit-plane GEMM, codebook conv and its binary twin); "
        "such a partial run is not copied to benchmarks/REPORT.md",
    )
    p.add_argument(
        "--tune-trials",
        type=int,
        default=0,
        metavar="N",
        help="also tune each host model and batch with N MetaSchedule trials and time the tuned build "
        "(the 'tuned' column; default 0: not run)",
    )
    p.add_argument(
        "--tuning-dir",
        default=None,
        metavar="DIR",
        help="keep the tuning databases here (default: OUT_DIR/tuning); a re-run resumes them",
    )
    p.add_argument(
        "--cmsis-nn",
        default=None,
        metavar="DIR",
        help="a clone of ARM-software/CMSIS-NN (or its source tree) for the CMSIS-NN int8 row of the "
        "Cortex-M table, built at the pinned commit (default: $TBN_BENCH_CMSIS_NN, else the cache of an "
        "earlier run; the row is skipped with the reason when there is none)",
    )
    p.add_argument(
        "--no-publish",
        action="store_true",
        help="do not copy a full run's report to benchmarks/REPORT.md, report.json and speedup.png "
        "(--quick and --model runs are never copied)",
    )
    p.add_argument(
        "--models",
        default=None,
        metavar="FILE",
        help="the model generators of the default suite (default: benchmarks/models.py)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="FILE.onnx",
        help="benchmark this ONNX model instead of the default suite",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        default=None,
        metavar="NAME=D0,D1,...",
        help="with --model: fix the dynamic dimensions of input NAME (repeat for several inputs)",
    )
    p.add_argument(
        "--target",
        default=None,
        choices=("llvm", "cortex-m4"),
        help="with --model: llvm (host timings, default) or cortex-m4 (instructions on QEMU)",
    )
    return p


def _command(args: argparse.Namespace, prog: str) -> str:
    """The command line the report says it was produced by."""
    parts = [prog]
    if args.model:
        parts += [f"--model {args.model}"]
        parts += [f"--input-shape {s}" for s in args.input_shape or []]
        parts += [f"--target {args.target}"] if args.target else []
    parts += ["--quick"] if args.quick else []
    parts += ["--out DIR"] if args.out else []
    parts += [f"--rounds {args.rounds}"] if args.rounds else []
    parts += [f"--threads {args.threads}"] if args.threads else []
    parts += ["--skip-cortex-m"] if args.skip_cortex_m else []
    parts += ["--skip-host"] if args.skip_host else []
    parts += [f"--cases {args.cases}"] if args.cases else []
    parts += [f"--tune-trials {args.tune_trials}"] if args.tune_trials else []
    parts += ["--tuning-dir DIR"] if args.tuning_dir else []
    parts += ["--cmsis-nn DIR"] if args.cmsis_nn else []
    parts += ["--no-publish"] if args.no_publish else []
    parts += [f"--models {args.models}"] if args.models else []
    return " ".join(parts)


def run(args: argparse.Namespace, prog: str = PROG) -> int:
    """Run what the parsed ``args`` ask for; print the summary; returns the exit status."""
    import shutil

    from benchmarks import report as rep
    from benchmarks import suite
    from benchmarks.harness import Log, Settings

    here = Path(__file__).resolve().parent
    out_default = Path(args.out) if args.out else here / "results"
    tuning_dir = args.tuning_dir or (str(out_default / "tuning") if args.tune_trials else None)
    settings = Settings.for_mode(args.quick, args.rounds, args.tune_trials, tuning_dir)
    if args.threads is not None and args.threads < 1:
        raise TBNError("--threads must be at least 1")
    log = Log()
    if args.model:
        if args.models:
            raise TBNError("--models (the suite's generators) and --model (one ONNX file) exclude each other")
        if args.skip_cortex_m:
            raise TBNError("--skip-cortex-m has no meaning with --model", hint="choose with --target")
        if args.cmsis_nn:
            raise TBNError("--cmsis-nn goes with the default suite (the authors' MLP), not --model")
        if args.skip_host:
            raise TBNError("--skip-host has no meaning with --model", hint="choose with --target")
        if args.cases:
            raise TBNError("--cases picks models of the default suite, not --model")
        target = args.target or "llvm"
        shapes = suite.parse_input_shapes(args.input_shape)
        cases = [suite.model_case(args.model, shapes, target)]
        out = Path(args.out) if args.out else here / "results"
        report = suite.run_cases(
            cases,
            settings,
            command=_command(args, prog),
            kind="model",
            threads=args.threads,
            git_dir=here,
            meta={"model_file": args.model, "target": target, "input_shapes": shapes},
            log=log,
        )
        for r in report["cortex_m"]:  # nothing to compare when tbn-tvm's own build failed
            if r["builds"][suite.TBN].get("status") != "ok":
                raise TBNError(
                    f"{args.model}: not built for cortex-m4: {r['builds'][suite.TBN].get('reason')}"
                )
        publish = None
    else:
        if args.input_shape or args.target:
            raise TBNError("--input-shape and --target go with --model", hint="the suite's targets are fixed")
        models = suite.load_models(args.models)
        from benchmarks import cmsis_nn

        cmsis = None if args.skip_cortex_m else cmsis_nn.find_source(args.cmsis_nn)
        if args.cmsis_nn and cmsis is not None and cmsis[0] is None:  # asked for, not usable: an error
            raise TBNError(f"--cmsis-nn: {cmsis[1]}")
        if args.skip_host and args.skip_cortex_m:
            raise TBNError("--skip-host and --skip-cortex-m leave nothing to measure")
        cases = suite.default_cases(models, settings)
        if args.cases:
            cases = suite.select_cases(suite.selectable_cases(models, settings), args.cases)
        for case in cases if args.skip_host else ():
            case.host = False
        bench_dir = Path(models.__bench_path__).parent
        out = Path(args.out) if args.out else bench_dir / "results"
        report = suite.run_cases(
            cases,
            settings,
            command=_command(args, prog),
            kind="suite",
            threads=args.threads,
            skip_cortex_m=args.skip_cortex_m,
            cmsis_nn=cmsis,
            git_dir=bench_dir,
            log=log,
        )
        publish = None if (args.quick or args.no_publish or args.cases) else bench_dir
    rep.write(report, out, log)
    if publish is not None:
        for src, dst in (
            ("report.md", "REPORT.md"),
            ("report.json", "report.json"),
            ("speedup.png", "speedup.png"),
        ):
            shutil.copyfile(out / src, publish / dst)
        log(
            f"copied the report to {publish / 'REPORT.md'}, {publish / 'report.json'} and {publish / 'speedup.png'}"
        )
    print(rep.render_summary(report))
    return 0


def guarded(fn: Callable[[], int]) -> int:
    """Call ``fn``; user errors (:class:`TBNError`) become one ``error: ...`` line and status 2,
    Ctrl-C status 130, anything else an ``internal error`` line and status 1
    (``TBN_TVM_DEBUG=1`` shows the traceback)."""
    try:
        return int(fn() or 0)
    except TBNError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        if os.environ.get("TBN_TVM_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:400]
        print(
            f"error: internal error ({type(e).__name__}: {msg}); rerun with TBN_TVM_DEBUG=1 for a traceback",
            file=sys.stderr,
        )
        return 1


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """``python -m benchmarks`` (``argv`` defaults to ``sys.argv[1:]``; ``prog`` names the command
    in the help and in the report)."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def go() -> int:
        try:
            args = build_parser(prog).parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        return run(args, prog)

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
