"""``tbn-tvm compile MODEL.onnx --target TARGET -o OUT_DIR``."""

from __future__ import annotations

import json
import sys

from tbn_tvm.cli import arg, command


@command("compile", help="Compile an ONNX model for a target and write the artifact + manifest.json")
@arg("model", metavar="MODEL.onnx", help="the ONNX model")
@arg(
    "--target",
    "-t",
    default="llvm",
    help="llvm (host), an LLVM triple (aarch64-linux-gnu, ...), cortex-m4, cortex-m7, "
    "thumbv7em-none-eabihf with --mcpu (default: llvm)",
)
@arg("--mcpu", default=None, help="CPU for a thumbv7em-none-eabihf triple: cortex-m4 or cortex-m7")
@arg(
    "-o",
    "--output",
    required=True,
    metavar="OUT_DIR",
    help="output directory, written all at once; an earlier tbn-tvm output there is replaced, a directory "
    "holding other files is refused (see --force)",
)
@arg("--force", action="store_true", help="replace OUT_DIR even if it holds files tbn-tvm did not write")
@arg("--input-shape", action="append", metavar="NAME=D0,D1,...", help="fix a dynamic input shape")
@arg("--board", default=None, help="Cortex-M board profile (sets flash/RAM limits)")
@arg("--flash-size", type=str, default=None, help="Cortex-M flash limit in bytes (or 512K, 1M)")
@arg("--ram-size", type=str, default=None, help="Cortex-M RAM limit in bytes (or 128K)")
@arg(
    "--stack-size",
    type=str,
    default=None,
    help="Cortex-M stack in bytes (or 4K); default: the peak measured on QEMU at build time plus a margin",
)
@arg(
    "--no-measure",
    action="store_true",
    help="Cortex-M: skip the build-time QEMU inference (stack: the board's default; no per-layer counts)",
)
@arg(
    "--no-compress",
    action="store_true",
    help="keep every weight dense (plain TVM fp32 build, for comparison)",
)
@arg("--no-row-reuse", action="store_true", help="compute every output row (no distinct-row reuse)")
@arg(
    "--tuning-db", metavar="DIR", default=None, help="apply the records of 'tbn-tvm tune' from this database"
)
@arg("--json", action="store_true", help="print the manifest summary as JSON")
def run(args) -> int:
    from tbn_tvm.api import compile as tbn_compile
    from tbn_tvm.commands.common import parse_shapes

    options = {}
    for key in ("board", "flash_size", "ram_size", "stack_size"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.no_measure:
        options["measure"] = False
    model = tbn_compile(
        args.model,
        args.target,
        mcpu=args.mcpu,
        input_shapes=parse_shapes(args.input_shape),
        compress=not args.no_compress,
        reuse_rows=not args.no_row_reuse,
        tuning_db=args.tuning_db,
        **options,
    )
    try:
        out = model.save(args.output, force=args.force)
    finally:
        model.close()
    rep = model.report()
    if args.json:
        print(json.dumps({"output": str(out), **rep}))
        return 0
    total = rep["total"]
    layers = rep["layers"]
    print(f"compiled {rep.get('source', args.model)} for {model.target.name} -> {out}", file=sys.stdout)
    if args.no_compress:
        print(
            f"  layers: {len(layers)}, all built dense (--no-compress): {total['fp32_bytes']:,} bytes of weights"
        )
    else:
        tiled = sum(1 for layer in layers if layer["format"] != "dense")
        print(
            f"  layers: {len(layers)} ({tiled} compact, {len(layers) - tiled} dense); weights "
            f"{total['weight_bytes']:,} bytes (fp32 {total['fp32_bytes']:,}, {total['compression']:g}x smaller)"
        )
    tuning = rep.get("tuning")
    if tuning is not None:
        n = len(tuning["kernels"])
        print(
            f"  tuning records applied to {n} kernel{'s' * (n != 1)}"
            + (f" (layers {', '.join(tuning['layers'])})" if tuning["layers"] else "")
            + ("" if n else "; none matched this target and these shapes")
        )
    if "flash_bytes" in rep:
        print(f"  flash: {rep['flash_bytes']:,} bytes")
    if "ram_bytes" in rep:
        parts = [
            f"{label} {rep[key]:,}" for key, label in (("arena_bytes", "arena"), ("stack_bytes", "stack"))
        ]
        measured = rep.get("measured") or {}
        if measured.get("stack_peak_bytes") is not None:
            parts[-1] += f" (measured peak {measured['stack_peak_bytes']:,})"
        print(f"  RAM: {rep['ram_bytes']:,} bytes ({', '.join(parts)})")
    measured = rep.get("measured") or {}
    if measured.get("skipped"):
        print(f"  not measured: {measured['skipped']}")
    elif "instructions_per_inference" in measured:
        print(
            f"  {measured['instructions_per_inference']:,} instructions per inference on {measured['on']} "
            f"(per layer: tbn-tvm inspect {out})"
        )
    for note in rep.get("notes", []):
        print(f"  note: {note}")
    return 0
