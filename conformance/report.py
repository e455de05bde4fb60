"""Summaries of a run: the per-operator table, failures grouped by cause, the markdown report and
the supported-operator table (``--write-table``)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from conformance.run import Suite
from conformance.worker import CLASSES, NOT_CONVERTIBLE

#: Classes that must not happen: the compiler produced a result it should not have, or broke.
BAD = ("wrong", "internal", "crash", "hang")

_HEADER = """\
# ONNX conformance

ONNX's own node tests -- the cases of `onnx.backend.test.case.node`, with the expected outputs
the ONNX authors compute in numpy -- generated at run time from the installed `onnx` package
(the wheel ships the generators, not the data), compiled with `tbn_tvm.compile(model, target)`
and run with `CompiledModel.run` on exactly one sample per input.  Each case runs in a worker
process with a per-case timeout and an address-space limit, so a crash or a hang in TVM is a
finding, not the end of the run.

## Running it

```sh
python -m conformance --full --jobs 2 --json conformance/results/llvm-full.json --md docs/conformance.md
python -m conformance --sample 40 --seed 0            # a deterministic sample, spread over operators
python -m conformance --ops Add,Relu,Conv --versions  # chosen operators, with their earlier versions
python -m conformance --cases test_clip,test_mish     # chosen cases (add --versions for theirs)
python -m conformance --sample 10 --single-float32 --target cortex-m4   # on QEMU
python -m conformance --load conformance/results/llvm-full.json.gz --write-table supported_ops.json
python -m pytest tests/conformance                    # the CI check (below)
```

Run from the repository root (`conformance` is a top-level package like `benchmarks`).
`--jobs` (default: the CPUs), `--timeout` (60 s per case), `--mem-limit` (4 GiB per worker),
`--no-expanded` (leave out ONNX's function-expanded cases), `--no-relabel` (see Versions),
`--list` (print the selected cases).  A JSON output over 2 MB is written gzip-compressed
(`.json.gz`).  `--load RUN.json` writes the reports of a saved run without running anything.
The exit status is 1 when a case is `wrong`, `internal`, `crash` or `hang`.

`--write-table PATH` writes the supported-operator table derived from the run: per operator,
the schema versions (since_version) for which every float32 case passed (at least one float32
case; function-expanded cases do not count), and under `failing` every version with a float32
case that did not pass, its causes grouped, with the smallest case to reproduce each.

`tests/conformance/test_conformance_sample.py` runs a deterministic sample of 1,000 cases on
llvm (about two minutes on the 2-core CI machine) and, on QEMU (skipped without
`arm-none-eabi-gcc` and `qemu-system-arm`), ten cases with one float32 input and output plus the
three cases a full Cortex-M run once found wrong or crashing there (Resize nearest, ScatterElements
and MaxUnpool with constant indices).  It asserts that every case passes or is refused cleanly,
that every sampled float32 case of an operator version listed in
`tbn_tvm/frontend/supported_ops.json` (when that file exists) passes, and on QEMU that the
Cortex-M section of that table holds: its `full` versions pass, its `host_only` versions are
refused at compile time.

## Cortex-M

The table is built per target.  Its host part comes from an llvm run (above); its `cortex_m`
section from a run on QEMU Cortex-M4 of every case with one float32 input and one float32 output
(the back end's inputs; `@const` variants count: their other inputs are constants):

```sh
python -m conformance --full --single-float32 --target cortex-m4 --jobs 2 --timeout 120 \
    --json conformance/results/cortex-m4-full.json --md docs/conformance-cortex-m.md \
    --write-table tbn_tvm/frontend/supported_ops.json    # merged: the cortex_m section
```

`cortex_m.ops` and `cortex_m.failing` read as the host's; `cortex_m.host_only` lists the
operator versions the host table supports whose Cortex-M cases fail (a case neither passes nor is
refused cleanly, or every case is refused): `tbn_tvm.compile` refuses them for a Cortex-M build
(`Op-v (builds for the host, not for Cortex-M)`), the host still builds them.  An operator with no
single-input float32 case is not measured on Cortex-M and follows the host table.

Rounding that no target changes: each ONNX operator rounds its result, so a multiply-add fused
across two operators (a Mul and the Add after it) is a different computation, visible where the
sum is rounded next (`Floor(x * a - 1)` where `x * a` rounds to 1.0: 0, not -1) or turned into an
index.  The Cortex-M library is compiled with `-ffp-contract=off` (GNU C's default contracts;
`vfma.f32` had moved the tie of `test_resize_upsample_sizes_nearest`).  TVM 0.27's LLVM back end
always allows fusing `a * b + c` (`AllowFPOpFusion::Fast`, no target option turns it off), which
a host CPU with FMA (`--mcpu native`, `haswell` ...) does: there each element-wise float product
passes through `llvm.arithmetic.fence`, so no other operator's add is fused with it; products
inside one operator (a matmul's, a convolution's accumulation) keep their multiply-adds.  Resize
(nearest) and Upsample compute their source index as ONNX's reference does, in float64 with no
multiply feeding an add (TVM's float32 reciprocal read the wrong neighbour at 2 -> 7, 6 -> 21 and
10 -> 35 on every target).

## What the columns mean

**Classes.** `pass`: every output has the expected shape and dtype and values within the case's
tolerance -- as ONNX's backend runner checks, `np.testing.assert_allclose` with the case's
rtol/atol (every node case sets rtol 1e-3, atol 1e-7), NaN equal to NaN.  `refused`: a
`TBNError` (a clean, one-line user error).  `internal`: any other exception (its type, first
line, and where in tbn_tvm/TVM it was raised; `raised while handling` names the exception it
hid).  `wrong`: it ran, but an output differs in value, shape or dtype -- the worst class.
`crash`: the worker process died (a signal, or the memory limit).  `hang`: no result within the
timeout.

**Versions.** ONNX generates most cases at the opset of its operator's newest schema.  With
`--versions` (on for `--full`) each direct case is also tried at one opset per earlier schema
version of its operator still in effect at opset 7 or later (named `<case>@opset<v>`), keeping
the data: down-converted with `onnx.version_converter.convert_version`, or, where the converter
has no adapter, *relabelled* (the opset import changed, nothing else).  Either way the model
must pass ONNX's checker and onnxruntime must reproduce the case's expected outputs with it (the
judge: ONNX's reference evaluator computes Softmax-1 as Softmax-13, and the converter turns one
into the other unchanged); otherwise that version has no case and it counts as `not
convertible`.  `--no-relabel` keeps only what the converter makes.

**float32 case.** Every graph input and output is a tensor of float32, int64, int32 or bool (the
ints and bools being indices, shapes, axes and conditions), and at least one of them is float32.
float16, bfloat16, float64, the 8-bit and smaller types, strings, complex numbers, sequences and
optionals make a case non-float32.  `[expanded]` rows are ONNX's function-expanded cases: the
graph holds the operator's function body, not the operator.

Everything below is generated by `python -m conformance ... --md docs/conformance.md`; every
case with its class and message is in the JSON file named in the run's header.
"""


def companion_summary(suite: Suite, report: str | None = None, supported: dict | None = None) -> list[str]:
    """Markdown lines summing up another target's run (the Cortex-M one, in the host report):
    its command, date, wall time and totals, those of the cases of operator versions the table
    supports (``supported``: the host table's ``ops``), and where its own report is."""
    meta, totals = suite.meta, suite.totals()
    f32 = [r for r in suite.records if r["float32"] and r["status"] != NOT_CONVERTIBLE]
    listed = [
        r
        for r in f32
        if supported is not None
        and not r["expanded"]
        and not r["domain"]
        and r["since_version"] in supported.get(r["op"], {}).get("versions", [])
    ]
    out = [f"## The {meta.get('target')} run\n"]
    info = [
        ("command", f"`{meta.get('command') or 'python -m conformance'}`"),
        ("date (UTC)", meta.get("date")),
        (
            "wall time",
            f"{meta.get('wall_s', 0):.0f} s with {meta.get('jobs')} workers, timeout {meta.get('timeout_s'):g} s per case",
        ),
        ("tbn-tvm", f"git {meta.get('tbn_tvm_git') or 'unknown'}"),
    ]
    if report:
        info.append(("its report", f"[{report}]({report.rsplit('/', 1)[-1]})"))
    out += _md_table(["", ""], info)
    out.append("")
    head = ["class", "cases", "float32 cases"] + (["of supported operator versions"] if supported else [])
    rows = [
        (
            k,
            totals[k],
            sum(r["status"] == k for r in f32),
            *([sum(r["status"] == k for r in listed)] if supported else []),
        )
        for k in CLASSES
    ]
    rows.append(
        ("**all run**", sum(totals[k] for k in CLASSES), len(f32), *([len(listed)] if supported else []))
    )
    out += _md_table(head, rows)
    bad = [r for r in f32 if r["status"] in BAD]
    if bad:
        out.append("")
        out.append(
            "Not passing: "
            + "; ".join(
                f"`{r['name']}` ({r['status']}, {r['op']}-{r['since_version']}"
                + (", a version the table lists)" if r in listed else ", a version the table does not list)")
                for r in bad
            )
            + "."
        )
    out.append("")
    return out


# ---------------------------------------------------------------------------- aggregation
def op_rows(suite: Suite) -> list[dict]:
    """One row per operator group (``Op`` or ``Op [expanded]``), sorted by group name."""
    rows: dict[str, dict] = {}
    for r in suite.records:
        group = f"{r['op']} [expanded]" if r["expanded"] else r["op"]
        if r["domain"]:
            group = f"{r['domain']}.{group}"
        row = rows.setdefault(
            group,
            {
                "op": group,
                "versions": set(),
                "cases": 0,
                **{k: 0 for k in CLASSES},
                "float32_cases": 0,
                "float32_pass": 0,
                NOT_CONVERTIBLE: 0,
            },
        )
        if r["status"] == NOT_CONVERTIBLE:
            row[NOT_CONVERTIBLE] += 1
            continue
        if r["since_version"] is not None:
            row["versions"].add(r["since_version"])
        row["cases"] += 1
        row[r["status"]] += 1
        if r["float32"]:
            row["float32_cases"] += 1
            row["float32_pass"] += r["status"] == "pass"
    out = []
    for group in sorted(rows, key=str.lower):
        row = rows[group]
        out.append({**row, "versions": sorted(row["versions"])})
    return out


def normalise(message: str) -> str:
    """A message with its case-specific parts (numbers, quoted names, shapes) blanked, so that
    messages of one cause group together."""
    msg = re.sub(r"^<model>: ", "", message)
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"\b(param|dtype)=\"?\w+\"?", r"\1=…", msg)
    msg = re.sub(r"\bT\.\w+", "T.…", msg)
    msg = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", msg)
    msg = re.sub(r"(N(, |x| )?){2,}", "N…", msg)
    return msg[:200]


def simplest(records: Iterable[dict]) -> dict:
    """The record with the shortest case name (the simplest to reproduce), ties by name."""
    return min(records, key=lambda r: (len(r["name"]), r["name"]))


def full_message(r: dict) -> str:
    """A record's message, with the exception it was raised while handling (``context``)."""
    msg = r.get("message", "")
    if r.get("context"):
        msg += f" [raised while handling {r['context']}]"
    return msg


def _group(records: list[dict], key) -> list[dict]:
    groups: dict = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    out = []
    for k, recs in groups.items():
        example = simplest(recs)
        out.append(
            {
                "key": k,
                "phase": example.get("phase", ""),
                "message": example.get("message", ""),
                "where": example.get("where", ""),
                "context": example.get("context", ""),
                "context_where": example.get("context_where", ""),
                "count": len(recs),
                "ops": sorted({r["op"] for r in recs}, key=str.lower),
                "smallest_case": example["name"],
                "records": recs,
            }
        )
    return sorted(out, key=lambda g: (-g["count"], g["smallest_case"]))


def failure_groups(suite: Suite, status: str) -> list[dict]:
    """Records of ``status`` grouped by cause (phase and normalised message): count, ops,
    smallest case, an example message; most frequent first.  Each group's ``contexts`` groups its
    records by the exception the error was raised while handling, when there is one."""
    groups = _group(suite.by_status(status), lambda r: (r.get("phase", ""), normalise(r.get("message", ""))))
    for g in groups:
        with_context = [r for r in g["records"] if r.get("context")]
        g["contexts"] = _group(with_context, lambda r: normalise(r["context"]))
    return groups


def per_op_failures(suite: Suite) -> list[dict]:
    """One line per (operator group, class, cause) of every non-pass class, worst class first:
    the compact list to work from."""
    records = [r for r in suite.records if r["status"] not in ("pass", NOT_CONVERTIBLE)]

    def key(r: dict) -> tuple[str, str, str]:
        group = f"{r['op']} [expanded]" if r["expanded"] else r["op"]
        return group, r["status"], normalise(full_message(r))

    order = {k: i for i, k in enumerate(CLASSES)}
    out = []
    for g in _group(records, key):
        group, status, _ = g["key"]
        out.append(
            {
                "op": group,
                "status": status,
                "count": g["count"],
                "message": full_message(simplest(g["records"])),
                "smallest_case": g["smallest_case"],
            }
        )
    return sorted(out, key=lambda g: (-order[g["status"]], g["op"].lower(), -g["count"], g["smallest_case"]))


# ---------------------------------------------------------------------------- text outputs
def _versions(vs: list[int]) -> str:
    return ",".join(map(str, vs)) or "-"


def console_table(suite: Suite) -> str:
    """The per-operator table, the totals and the wall time, as plain text."""
    head = ["op", "versions", "cases", *CLASSES, "f32", "f32 pass"]
    lines = []
    for row in op_rows(suite):
        lines.append(
            [
                row["op"],
                _versions(row["versions"]),
                row["cases"],
                *(row[k] for k in CLASSES),
                row["float32_cases"],
                row["float32_pass"],
            ]
        )
    totals = suite.totals()
    f32 = [r for r in suite.records if r["float32"] and r["status"] != NOT_CONVERTIBLE]
    lines.append(
        [
            "TOTAL",
            "",
            sum(totals[k] for k in CLASSES),
            *(totals[k] for k in CLASSES),
            len(f32),
            sum(r["status"] == "pass" for r in f32),
        ]
    )
    cells = [head, *[[str(c) for c in line] for line in lines]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [
        fmt(cells[0]),
        "  ".join("-" * w for w in widths),
        *map(fmt, cells[1:-1]),
        "  ".join("-" * w for w in widths),
        fmt(cells[-1]),
    ]
    meta = suite.meta
    out.append("")
    out.append(
        f"{meta.get('cases', len(suite.records))} cases on {meta.get('target')} in {meta.get('wall_s', 0):.0f} s "
        f"({meta.get('jobs')} workers); " + ", ".join(f"{k} {v}" for k, v in totals.items())
    )
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _md_table(head: list[str], rows: Iterable[Iterable]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return out


def _ops(ops: list[str], limit: int = 25) -> str:
    return ", ".join(ops[:limit]) + (f" … ({len(ops)} ops)" if len(ops) > limit else "")


def _wrong_nature(r: dict) -> str:
    return ", ".join(r.get("wrong_kinds", [])) or "values"


def markdown(suite: Suite, json_path: str | None = None, companion: list[str] | None = None) -> str:
    """The full markdown report: the fixed header, ``companion`` (another target's summary,
    :func:`companion_summary`), then the run's figures and failures."""
    meta, totals = suite.meta, suite.totals()
    out = [_HEADER, *(companion or [])]
    out.append("## The run\n")
    info = [
        ("command", f"`{meta.get('command') or 'python -m conformance'}`"),
        ("target", meta.get("target")),
        ("date (UTC)", meta.get("date")),
        (
            "wall time",
            f"{meta.get('wall_s', 0):.0f} s with {meta.get('jobs')} workers, timeout {meta.get('timeout_s'):g} s per case",
        ),
        (
            "onnx / apache-tvm / tbn-tvm",
            f"{meta.get('onnx_version')} / {meta.get('tvm_version')} / {meta.get('tbn_tvm_version')} (git {meta.get('tbn_tvm_git') or 'unknown'})",
        ),
        ("machine", f"{meta.get('machine')}, {meta.get('cpus')} CPUs, Python {meta.get('python')}"),
    ]
    if json_path:
        info.append(("per-case results", f"`{json_path}`"))
    out += _md_table(["", ""], info)
    out.append("")
    run = sum(totals[k] for k in CLASSES)
    f32 = [r for r in suite.records if r["float32"] and r["status"] != NOT_CONVERTIBLE]
    out.append("## Totals\n")
    out += _md_table(
        ["class", "cases", "float32 cases"],
        [(k, totals[k], sum(r["status"] == k for r in f32)) for k in CLASSES]
        + [
            ("**all run**", run, len(f32)),
            (NOT_CONVERTIBLE.replace("_", " ") + " (version cases)", totals[NOT_CONVERTIBLE], ""),
        ],
    )
    base = [r for r in suite.records if r["convert_to"] is None]
    out.append(
        f"\n{len(base)} ONNX cases ({sum(not r['expanded'] for r in base)} direct, "
        f"{sum(r['expanded'] for r in base)} function-expanded) and "
        f"{sum(r['convert_to'] is not None and r['status'] != NOT_CONVERTIBLE for r in suite.records)} "
        "down-converted version cases were run.\n"
    )

    out.append("## Failures to fix\n")
    wrong = sorted(suite.by_status("wrong"), key=lambda r: (r["op"].lower(), r["expanded"], r["name"]))
    out.append(f"### wrong ({len(wrong)}): every case\n")
    if wrong:
        out.append("`made by`: how a version case was made (see Versions above).\n")
        out += _md_table(
            ["op", "case", "nature", "error", "made by"],
            [
                (
                    r["op"] + (" [expanded]" if r["expanded"] else ""),
                    r["name"],
                    _wrong_nature(r),
                    r["message"][:300],
                    r.get("conversion", "").split(",")[0],
                )
                for r in wrong
            ],
        )
    else:
        out.append("None.")
    for status in ("internal", "crash", "hang"):
        groups = failure_groups(suite, status)
        out.append(f"\n### {status} ({len(suite.by_status(status))}): by cause\n")
        if not groups:
            out.append("None.")
            continue
        out += _md_table(
            ["cases", "phase", "message", "where", "ops", "smallest case"],
            [
                (g["count"], g["phase"], g["message"][:300], g["where"], _ops(g["ops"]), g["smallest_case"])
                for g in groups
            ],
        )
        for g in groups:
            if not g["contexts"]:
                continue
            out.append(f"\n`{g['message'][:120]}` was raised while handling these errors:\n")
            out += _md_table(
                ["cases", "error", "where", "ops", "smallest case"],
                [
                    (c["count"], c["context"][:300], c["context_where"], _ops(c["ops"]), c["smallest_case"])
                    for c in g["contexts"]
                ],
            )
    groups = failure_groups(suite, "refused")
    out.append(f"\n### refused ({len(suite.by_status('refused'))}): by reason\n")
    if groups:
        out += _md_table(
            ["cases", "phase", "message", "ops", "smallest case"],
            [
                (g["count"], g["phase"], g["message"][:300], _ops(g["ops"]), g["smallest_case"])
                for g in groups
            ],
        )
    else:
        out.append("None.")

    out.append("\n## Per operator\n")
    out.append("`versions`: the schema versions (since_version) exercised; `f32`: float32 cases.\n")
    out += _md_table(
        ["op", "versions", "cases", *CLASSES, "f32", "f32 pass"],
        [
            (
                r["op"],
                _versions(r["versions"]),
                r["cases"],
                *(r[k] or "" for k in CLASSES),
                r["float32_cases"],
                r["float32_pass"],
            )
            for r in op_rows(suite)
        ],
    )

    out.append("\n## Failures by operator\n")
    out.append("One line per operator, class and cause: count, first message, the smallest case.\n")
    out += _md_table(
        ["op", "class", "cases", "message", "smallest case"],
        [
            (g["op"], g["status"], g["count"], g["message"][:300], g["smallest_case"])
            for g in per_op_failures(suite)
        ],
    )

    nc = failure_groups(suite, NOT_CONVERTIBLE)
    out.append(f"\n## Version cases not convertible ({totals[NOT_CONVERTIBLE]})\n")
    if nc:
        out += _md_table(
            ["cases", "reason", "ops", "smallest case"],
            [(g["count"], g["message"][:200], _ops(g["ops"]), g["smallest_case"]) for g in nc],
        )
    else:
        out.append("None.")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- supported ops
def _failing_version(records: list[dict]) -> dict:
    """The float32 cases of one op version that do not pass, grouped by cause."""
    failing = [r for r in records if r["status"] != "pass"]
    reasons = _group(failing, lambda r: (r["status"], normalise(full_message(r))))
    return {
        "float32_cases": len(records),
        "failing": len(failing),
        "reasons": [
            {
                "status": g["key"][0],
                "cases": g["count"],
                "message": full_message(simplest(g["records"])),
                "smallest_case": g["smallest_case"],
            }
            for g in reasons
        ],
    }


def supported_table(suite: Suite) -> dict:
    """The supported-operator table derived from a run (direct cases; expanded ones left out).

    An operator version is supported when none of its cases is wrong, internal, crash or hang
    and at least one of them passes; among those, ``full`` lists the versions where every
    float32 case passes, and ``restricted`` the others, with the uses tbn-tvm refuses cleanly
    (e.g. a shape given as a graph input), grouped by cause with the smallest case of each.
    Operators without float32 cases (bitwise, comparison, integer ops) count their other cases.
    ``failing`` lists the versions with a case that is neither a pass nor a clean refusal, and
    versions that are only ever refused."""
    by_op: dict[str, list[dict]] = defaultdict(list)
    for r in suite.records:
        if r["expanded"] or r["status"] == NOT_CONVERTIBLE:
            continue
        key = f"{r['domain']}.{r['op']}" if r["domain"] else r["op"]
        by_op[key].append(r)
    ops: dict[str, dict] = {}
    failing: dict[str, dict] = {}
    for op in sorted(by_op, key=str.lower):
        recs = by_op[op]
        per_version: dict[int, list[dict]] = defaultdict(list)
        for r in recs:
            if r["since_version"] is not None:
                per_version[r["since_version"]].append(r)
        full, restricted, bad = [], {}, {}
        for v, rs in sorted(per_version.items()):
            f32 = [r for r in rs if r["float32"]] or rs
            if any(r["status"] in BAD for r in rs) or not any(r["status"] == "pass" for r in rs):
                bad[str(v)] = _failing_version(f32)
            elif all(r["status"] == "pass" for r in f32):
                full.append(v)
            else:
                restricted[str(v)] = _failing_version(f32)
        counts = {k: sum(r["status"] == k for r in recs) for k in CLASSES}
        entry = {
            "versions": sorted(full + [int(v) for v in restricted]),
            "full": full,
            "restricted": restricted,
            "cases": len(recs),
            **counts,
            "float32_cases": sum(r["float32"] for r in recs),
            "float32_pass": sum(r["float32"] and r["status"] == "pass" for r in recs),
        }
        if entry["versions"]:
            ops[op] = entry
        if bad:
            failing[op] = bad
    meta = suite.meta
    return {
        "onnx_version": meta.get("onnx_version"),
        "generated_by": meta.get("command") or "python -m conformance",
        "date": meta.get("date"),
        "target": meta.get("target"),
        "tbn_tvm_git": meta.get("tbn_tvm_git"),
        "ops": ops,
        "failing": failing,
    }


#: What the Cortex-M back end says when it cannot build an operator the host builds.
MCU_REFUSALS = ("C code generator", "C back end")


def _host_only(host_ops: dict, mcu_table: dict) -> dict[str, list[int]]:
    """Operator -> the versions the host table lists that do not build right for Cortex-M: a
    Cortex-M case neither passes nor is refused cleanly (wrong, internal, crash, hang), or the
    Cortex-M back end refuses it (:data:`MCU_REFUSALS`).  A version whose cases are refused for
    other reasons (a single-node model whose output is its input, a shape Cortex-M does not
    take) is not marked: a real model uses the operator between others."""
    out: dict[str, list[int]] = {}
    for op, entry in host_ops.items():
        failing = mcu_table.get("failing", {}).get(op, {})
        bad = {
            int(v)
            for v, info in failing.items()
            if any(
                r.get("status") in BAD or any(m in r.get("message", "") for m in MCU_REFUSALS)
                for r in info.get("reasons", [])
            )
        }
        versions = sorted(v for v in entry.get("versions", []) if v in bad)
        if versions:
            out[op] = versions
    return out


def merged_table(existing: dict | None, table: dict) -> dict:
    """The table file after a run: a host run's table (``target`` llvm) replaces the host part
    and keeps the file's ``cortex_m`` section (its ``host_only`` recomputed); a Cortex-M run's
    table becomes the ``cortex_m`` section of the file's host table, with ``host_only``: the
    host's versions whose Cortex-M cases fail (refused for a Cortex-M build)."""
    existing = existing or {}
    if not str(table.get("target") or "").startswith("cortex-m"):
        out = dict(table)
        if "cortex_m" in existing:
            section = dict(existing["cortex_m"])
            section["host_only"] = _host_only(out.get("ops", {}), section)
            out["cortex_m"] = section
        return out
    out = dict(existing)
    section = {k: table.get(k) for k in ("target", "generated_by", "date", "tbn_tvm_git", "onnx_version")}
    section["ops"] = table.get("ops", {})
    section["failing"] = table.get("failing", {})
    section["host_only"] = _host_only(out.get("ops", {}), table)
    out["cortex_m"] = section
    return out
