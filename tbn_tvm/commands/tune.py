"""``tbn-tvm tune MODEL.onnx --target TARGET --trials N --db DIR``: auto-tune every kernel."""

from __future__ import annotations

import sys

from tbn_tvm.cli import arg, command


@command("tune", help="Auto-tune the model's kernels with MetaSchedule + XGBoost into a reusable database")
@arg("model", metavar="MODEL.onnx", help="the ONNX model")
@arg(
    "--target",
    "-t",
    default="llvm",
    help="llvm (this CPU), an LLVM triple, cortex-m4, cortex-m7 (default: llvm)",
)
@arg("--mcpu", default=None, help="CPU (llvm: a name or 'native'; thumbv7em triples: cortex-m4/m7)")
@arg(
    "--trials",
    type=int,
    default=64,
    help="candidates to measure in all, records already in the database included",
)
@arg("--db", required=True, metavar="DIR", help="the tuning database folder (created; a re-run resumes it)")
@arg(
    "--runner",
    choices=["local", "qemu", "rpc"],
    default=None,
    help="where candidates are measured (default: local for host targets, qemu for Cortex-M)",
)
@arg("--rpc", metavar="HOST:PORT", default=None, help="TVM RPC tracker for --runner rpc")
@arg("--device-key", metavar="KEY", default=None, help="the key the devices registered under at the tracker")
@arg("--input-shape", action="append", metavar="NAME=D0,D1,...", help="fix a dynamic input shape")
@arg(
    "--plot",
    metavar="FILE.png",
    default=None,
    help="write the tuning curve here (default: DIR/tuning_curve.png)",
)
@arg("--quiet", "-q", action="store_true", help="no progress bar")
def run(args) -> int:
    from pathlib import Path

    from tbn_tvm.commands.common import parse_shapes
    from tbn_tvm.schedules.tuning import plot_curve, tune

    runner = args.runner or ("rpc" if args.rpc else "local")
    result = tune(
        args.model,
        args.target,
        mcpu=args.mcpu,
        trials=args.trials,
        db=args.db,
        input_shapes=parse_shapes(args.input_shape),
        runner=runner,
        rpc=args.rpc,
        device_key=args.device_key,
        progress=not args.quiet,
        on_message=lambda m: print(m, file=sys.stderr),
    )
    print(result.table())
    plot = Path(args.plot) if args.plot else Path(args.db) / "tuning_curve.png"
    if plot_curve(result.curve, plot):
        print(f"tuning curve -> {plot}")
    print(
        f"{result.trials_run} trials in {result.seconds:.0f} s ({result.trials_before} were already in {args.db}); "
        f"apply with: tbn-tvm compile {args.model} --target {args.target} --tuning-db {args.db} -o OUT_DIR"
    )
    return 0
