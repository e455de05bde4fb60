"""``tbn-tvm inspect MODEL.onnx|OUT_DIR [--json]``: per-layer formats and sizes of a model (no
compiling), or of a built artifact (flash, and time or instructions when a run measured them)."""

from __future__ import annotations

import json

from tbn_tvm.cli import arg, command


@command(
    "inspect",
    help="Show each layer's weight format, bits per weight and bytes (of a model, or of a directory "
    "written by 'tbn-tvm compile')",
)
@arg("model", metavar="MODEL.onnx|OUT_DIR", help="an ONNX model, or a compiled artifact directory")
@arg("--json", action="store_true", help="print one JSON object instead of a table")
def run(args) -> int:
    from pathlib import Path

    from tbn_tvm.report import inspect

    if Path(args.model).is_dir():
        from tbn_tvm.api import read_manifest
        from tbn_tvm.report import artifact_table

        manifest = read_manifest(Path(args.model))
        print(json.dumps(manifest) if args.json else artifact_table(manifest))
        return 0
    rep = inspect(args.model)
    if args.json:
        print(json.dumps(rep.to_dict()))
    else:
        print(rep.table())
    return 0
