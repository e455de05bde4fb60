"""``tbn-tvm bench [--quick] [--out DIR]``: the benchmark suite (see :mod:`tbn_tvm.bench`)."""

from __future__ import annotations

from tbn_tvm.cli import arg, command


@command(
    "bench",
    help="Benchmark tbn-tvm against onnxruntime and TVM fp32 (host) and on QEMU Cortex-M4; "
    "write a markdown + JSON report and a plot",
)
@arg("--quick", action="store_true", help="smoke run: scaled-down models, few repeats (under a minute)")
@arg(
    "--out",
    default=None,
    metavar="DIR",
    help="where to write report.md, report.json, speedup.png (default: benchmarks/results)",
)
@arg(
    "--rounds",
    type=int,
    default=None,
    metavar="N",
    help="at most N timing rounds per measurement (default 15; 3 with --quick)",
)
@arg(
    "--threads",
    type=int,
    default=None,
    metavar="N",
    help="threads for TVM and onnxruntime (default: the cores this process may use)",
)
@arg("--skip-cortex-m", action="store_true", help="leave out the QEMU Cortex-M4 measurements")
@arg(
    "--no-publish",
    action="store_true",
    help="do not copy a full run's report to benchmarks/REPORT.md and benchmarks/report.json",
)
@arg(
    "--models",
    default=None,
    metavar="FILE",
    help="the model generators (default: benchmarks/models.py of this checkout)",
)
def run(args) -> int:
    from tbn_tvm.bench import run_from_args

    return run_from_args(args, prog="tbn-tvm bench")
