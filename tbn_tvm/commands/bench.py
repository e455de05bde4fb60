"""``tbn-tvm bench [options]``: the same as ``python -m benchmarks [options]`` in a checkout.

The benchmarks are not part of the installed package: they live in the repository's
``benchmarks/`` folder.  When that package can be imported (it is on the path, or it sits next
to the ``tbn_tvm`` this runs from, or in the working directory) this command runs
``benchmarks.cli.main`` with the same arguments; otherwise it says where the suite is and exits
with status 2.  The options below mirror ``python -m benchmarks --help`` (a test keeps the two
lists equal); their values are checked there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tbn_tvm.cli import arg, command
from tbn_tvm.errors import TBNError

NOT_IN_CHECKOUT = "the benchmark suite lives in the repository's benchmarks/ folder; run 'python -m benchmarks' from a checkout"

# (option, argparse keywords): flags are store_true, the rest pass their text on unchanged
OPTIONS: list[tuple[str, dict]] = [
    (
        "--quick",
        {"action": "store_true", "help": "smoke run: scaled-down models, few rounds (under a minute)"},
    ),
    (
        "--out",
        {
            "metavar": "DIR",
            "help": "where to write report.md, report.json, speedup.png (default: benchmarks/results)",
        },
    ),
    (
        "--rounds",
        {"metavar": "N", "help": "at most N timing rounds per measurement (default 15; 5 with --quick)"},
    ),
    (
        "--threads",
        {"metavar": "N", "help": "threads for TVM and onnxruntime (default: the cores this process may use)"},
    ),
    ("--skip-cortex-m", {"action": "store_true", "help": "leave out the QEMU Cortex-M4 measurements"}),
    (
        "--skip-host",
        {
            "action": "store_true",
            "help": "leave out the host timings (and their tuning): only the QEMU Cortex-M4 measurements",
        },
    ),
    (
        "--cases",
        {
            "metavar": "KEY[,KEY...]",
            "help": "only these models of the default suite (e.g. tiled_resnet,wide_mlp_p8); a partial run "
            "is not copied to benchmarks/REPORT.md",
        },
    ),
    (
        "--tune-trials",
        {
            "metavar": "N",
            "help": "also tune each host model and batch with N MetaSchedule trials and time the tuned build "
            "(the 'tuned' column; default 0: not run)",
        },
    ),
    (
        "--tuning-dir",
        {
            "metavar": "DIR",
            "help": "keep the tuning databases here (default: OUT_DIR/tuning); a re-run resumes them",
        },
    ),
    (
        "--cmsis-nn",
        {
            "metavar": "DIR",
            "help": "a clone of ARM-software/CMSIS-NN (or its source tree) for the CMSIS-NN int8 row of the "
            "Cortex-M table, built at the pinned commit (default: $TBN_BENCH_CMSIS_NN, else the cache of an "
            "earlier run; the row is skipped with the reason when there is none)",
        },
    ),
    (
        "--no-publish",
        {
            "action": "store_true",
            "help": "do not copy a full run's report to benchmarks/REPORT.md, report.json and speedup.png "
            "(--quick and --model runs are never copied)",
        },
    ),
    (
        "--models",
        {
            "metavar": "FILE",
            "help": "the model generators of the default suite (default: benchmarks/models.py)",
        },
    ),
    ("--model", {"metavar": "FILE.onnx", "help": "benchmark this ONNX model instead of the default suite"}),
    (
        "--input-shape",
        {
            "action": "append",
            "metavar": "NAME=D0,D1,...",
            "help": "with --model: fix the dynamic dimensions of input NAME (repeat for several inputs)",
        },
    ),
    (
        "--target",
        {
            "metavar": "llvm|cortex-m4",
            "help": "with --model: llvm (host timings, default) or cortex-m4 (instructions on QEMU)",
        },
    ),
]


def to_argv(args: argparse.Namespace) -> list[str]:
    """The parsed options back as the argument list of ``python -m benchmarks``."""
    argv: list[str] = []
    for option, kwargs in OPTIONS:
        value = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if kwargs.get("action") == "store_true":
            argv += [option] if value else []
        elif kwargs.get("action") == "append":
            for v in value or []:
                argv += [option, v]
        elif value is not None:
            argv += [option, value]
    return argv


def find_suite():
    """``benchmarks.cli`` of a tbn-tvm checkout, or ``None`` when there is none to import."""
    import importlib
    import importlib.util
    import sys

    def importable():
        try:
            if importlib.util.find_spec("benchmarks.cli") is None:
                return None
        except (ImportError, ValueError):
            return None
        module = importlib.import_module("benchmarks.cli")
        return module if callable(getattr(module, "main", None)) else None

    found = importable()
    if found is not None:
        return found
    import tbn_tvm

    for root in (Path(tbn_tvm.__file__).resolve().parents[1], Path.cwd()):
        if (root / "benchmarks" / "cli.py").is_file() and (root / "benchmarks" / "__init__.py").is_file():
            sys.path.insert(0, str(root))
            importlib.invalidate_caches()
            found = importable()
            if found is not None:
                return found
            sys.path.remove(str(root))
    return None


def _run(args) -> int:
    suite = find_suite()
    if suite is None:
        raise TBNError(NOT_IN_CHECKOUT)
    return suite.main(to_argv(args), prog="tbn-tvm bench")


def _register():
    run = _run
    for option, kwargs in reversed(OPTIONS):
        run = arg(option, **kwargs)(run)
    return command(
        "bench",
        help="Run the benchmarks of a tbn-tvm checkout (the same as 'python -m benchmarks' there): tbn-tvm "
        "against onnxruntime and TVM fp32 on the host CPU and against the dense build on QEMU Cortex-M4, "
        "for the default suite or one ONNX model (--model); writes a markdown + JSON report and a plot",
    )(run)


run = _register()
