"""``python -m conformance``: run ONNX's node tests through tbn-tvm and report per operator."""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
from pathlib import Path

from conformance.run import (
    DEFAULT_MEM_LIMIT,
    DEFAULT_TIMEOUT_S,
    TARGETS,
    Suite,
    default_jobs,
    run_suite,
    select_cases,
)

#: Above this many bytes a JSON output named ``*.json`` is written gzip-compressed as ``*.json.gz``.
JSON_GZIP_ABOVE = 2_000_000


def parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Compile and run ONNX's own node tests (generated from the installed onnx) "
        "with tbn-tvm; classify each case pass / refused / internal / wrong / crash / hang.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--full", action="store_true", help="every case (the default)")
    which.add_argument(
        "--sample", type=int, metavar="N", help="N cases, deterministic, spread over operators"
    )
    which.add_argument("--ops", metavar="OP,OP", help="the cases of these operators (e.g. Add,Relu)")
    which.add_argument("--cases", metavar="NAME,NAME", help="these cases (ONNX names, e.g. test_relu)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    p.add_argument(
        "--versions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also down-convert each case to its operator's earlier schema versions (default: on with --full)",
    )
    p.add_argument(
        "--relabel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="where the version converter has no adapter, re-stamp the opset and keep the case if "
        "onnxruntime reproduces its expected outputs (default: on)",
    )
    p.add_argument(
        "--all-ops",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile with tbn-tvm's supported-operator table switched off, to measure every operator "
        "(default: on with --full or --write-table)",
    )
    p.add_argument(
        "--const-inputs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the @const variant of each case with two or more inputs (every input but the first "
        "an initializer, as exported models hold shapes, axes and scales; default: on)",
    )
    p.add_argument(
        "--expanded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include ONNX's function-expanded cases",
    )
    p.add_argument(
        "--single-float32",
        action="store_true",
        help="only cases with one float32 input and one float32 output",
    )
    p.add_argument("--target", choices=TARGETS, default="llvm", help="llvm (this CPU) or cortex-m4 (on QEMU)")
    p.add_argument(
        "--jobs", "-j", type=int, default=default_jobs(), help="worker processes (default: the CPUs)"
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per case (default 60)")
    p.add_argument(
        "--mem-limit",
        type=float,
        default=DEFAULT_MEM_LIMIT / 2**30,
        help="GiB of address space per worker (0: none)",
    )
    p.add_argument("--json", metavar="OUT.json", help="write every case with its class and message")
    p.add_argument("--md", metavar="REPORT.md", help="write the markdown report")
    p.add_argument(
        "--write-table", metavar="PATH", help="write the supported-operator table derived from this run"
    )
    p.add_argument(
        "--load",
        metavar="RUN.json",
        help="do not run: write the reports (--md, --write-table, the table) from a saved --json",
    )
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no table")
    return p


def write_json(data: dict, path: Path, compress_large: bool = True) -> Path:
    """Write ``data`` to ``path`` (gzip-compressed when it ends with ``.gz``, or, with
    ``compress_large``, to ``path.gz`` when over :data:`JSON_GZIP_ABOVE`); returns the path written."""
    text = json.dumps(data, indent=1, sort_keys=False, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz" or (compress_large and path.suffix == ".json" and len(text) > JSON_GZIP_ABOVE):
        gz = path if path.suffix == ".gz" else path.with_name(path.name + ".gz")
        with gzip.open(gz, "wt", encoding="utf-8") as f:
            f.write(text)
        return gz
    path.write_text(text)
    return path


def load_suite(path: str | Path) -> Suite:
    """Read a run written with ``--json`` (``.json`` or ``.json.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return Suite(data["cases"], data.get("meta", {}))


def main(argv: list[str] | None = None) -> int:
    """Run the suite as the options say; exit status 0 when no case is wrong/internal/crash/hang."""
    args = parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m conformance " + shlex.join(argv)
    if args.load:
        if not Path(args.load).is_file():
            print(f"error: {args.load}: no such file", file=sys.stderr)
            return 2
        suite = load_suite(args.load)
        return _report(args, suite, None)
    full = not (args.sample or args.ops or args.cases)
    versions = full if args.versions is None else args.versions
    cases = select_cases(
        sample_size=args.sample,
        seed=args.seed,
        ops=args.ops.split(",") if args.ops else None,
        names=args.cases.split(",") if args.cases else None,
        versions=versions,
        expanded=args.expanded,
        single_float32=args.single_float32,
        const_inputs=args.const_inputs,
    )
    if args.list:
        for c in cases:
            print(c.name, c.op, c.opset, c.since_version, "f32" if c.float32 else "-", sep="\t")
        return 0
    if not cases:
        print("error: no case matches", file=sys.stderr)
        return 2
    suite = run_suite(
        cases,
        target=args.target,
        jobs=args.jobs,
        timeout=args.timeout,
        mem_limit=int(args.mem_limit * 2**30) or None,
        progress=not args.quiet,
        command=command,
        relabel=args.relabel,
        all_ops=args.all_ops if args.all_ops is not None else bool(full or args.write_table),
    )
    json_written = write_json(suite.to_dict(), Path(args.json)) if args.json else None
    return _report(args, suite, json_written)


#: Where a full Cortex-M run is kept; the host report sums it up (docs/conformance.md).
CORTEX_M_RESULTS = ("conformance/results/cortex-m4-full.json", "conformance/results/cortex-m4-full.json.gz")
CORTEX_M_REPORT = "docs/conformance-cortex-m.md"


def _companion(suite: Suite) -> list[str] | None:
    """For a host run's report: the summary of the saved full Cortex-M run, where there is one."""
    from conformance.report import companion_summary

    if str(suite.meta.get("target", "")).startswith("cortex-m"):
        return None
    table = Path("tbn_tvm/frontend/supported_ops.json")
    supported = json.loads(table.read_text()).get("ops", {}) if table.is_file() else None
    for name in CORTEX_M_RESULTS:
        if Path(name).is_file():
            return companion_summary(load_suite(name), CORTEX_M_REPORT, supported)
    return None


def _report(args: argparse.Namespace, suite: Suite, json_written: Path | None) -> int:
    """Write the markdown and the table, print the per-operator table; the exit status."""
    from conformance.report import BAD, console_table, markdown, merged_table, supported_table

    if json_written is None and args.load:
        json_written = Path(args.load)
    if args.md:
        md = Path(args.md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown(suite, json_written.as_posix() if json_written else None, _companion(suite)))
    if args.write_table:  # a Cortex-M run's table goes into the file's cortex_m section
        path = Path(args.write_table)
        existing = json.loads(path.read_text()) if path.is_file() else None
        write_json(merged_table(existing, supported_table(suite)), path, compress_large=False)
    if not args.quiet:
        print(console_table(suite))
        for label, path in (("json", json_written), ("markdown", args.md), ("table", args.write_table)):
            if path:
                print(f"{label}: {path}")
    return 1 if suite.by_status(*BAD) else 0
