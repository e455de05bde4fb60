"""``tbn-tvm inspect MODEL.onnx [--json]``: per-layer formats and sizes, without compiling."""

from __future__ import annotations

import json

from tbn_tvm.cli import arg, command


@command("inspect", help="Show each layer's weight format, bits per weight and bytes")
@arg("model", metavar="MODEL.onnx", help="the ONNX model")
@arg("--json", action="store_true", help="print one JSON object instead of a table")
def run(args) -> int:
    from tbn_tvm.report import inspect

    rep = inspect(args.model)
    if args.json:
        print(json.dumps(rep.to_dict()))
    else:
        print(rep.table())
    return 0
