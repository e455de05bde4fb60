"""The benchmark report: ``report.json`` (every figure and sample), ``report.md`` (the tables a
reader needs) and the few lines printed on the terminal.

Times in the JSON are seconds per call (``*_s``); the markdown shows milliseconds.  A timing that
fails the trust rule (:func:`benchmarks.harness.trust`) keeps its samples in the JSON, marked
``"trusted": false``; the markdown and the terminal show ``not measured enough (n rounds,
spread x%, t ms timed)`` instead of its median and of every ratio built on it.

>>> _ratio(24.3), _ratio(1478.2), _ratio(0.36)
('24.3×', '1,478×', '0.36×')
>>> not_measured({"rounds": 5, "spread": 0.62, "timed_s": 0.0004})
'not measured enough (5 rounds, spread 62%, 0.4 ms timed)'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks import harness, real
from benchmarks.cmsis_nn import TITLE as CMSIS_TITLE
from benchmarks.suite import (
    AUTHORS_INSTRUCTIONS,
    AUTHORS_SOURCE,
    CMSIS_INT8,
    ORT,
    REL_TOLERANCE,
    TBN,
    TBN_NO_REUSE,
    TBN_TUNED,
    TVM_FP32,
    build_tolerance,
    cycles_vs_cmsis_text,
)


# ------------------------------------------------------------------------------------ numbers
def _ms(s: float | None) -> str:
    if s is None:
        return "–"
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def _ratio(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:.2f}×" if r < 10 else f"{r:,.0f}×" if r >= 100 else f"{r:.1f}×"


def _int(v) -> str:
    return "–" if v is None else f"{int(round(v)):,}"


def not_measured(t: dict) -> str:
    """What replaces the figure of a timing ``t`` (a variant's entry) that fails the trust rule."""
    spread = t.get("spread")
    shown = "–" if spread is None else f"{spread:.0%}"
    return f"not measured enough ({t.get('rounds', 0)} rounds, spread {shown}, {t.get('timed_s', 0) * 1e3:.3g} ms timed)"


def _trusted(t: dict | None) -> bool:
    return t is None or t.get("trusted", True)


def median_text(v: dict, name: str) -> str:
    """A variant's median in ms, or why it is not shown."""
    if name not in v or "median_s" not in v[name]:
        return "–"
    return _ms(v[name]["median_s"]) if _trusted(v[name]) else not_measured(v[name])


def pair_ratio_text(row: dict, base: str, other: str) -> str:
    """``other``'s median over ``base``'s (how many times faster ``base`` is), or why not shown."""
    v = row["variants"]
    if base not in v or other not in v or "median_s" not in v[base] or "median_s" not in v[other]:
        return "–"
    bad = [v[n] for n in (base, other) if not _trusted(v[n])]
    if bad:
        return not_measured(bad[0])
    return _ratio(v[other]["median_s"] / v[base]["median_s"])


def ratio_text(row: dict, other: str, key: str = "speedup") -> str:
    """tbn-tvm's speed-up over ``other`` in ``row[key]``, or ``not measured enough (...)`` with the
    weakest figures of the timing(s) it rests on that fail the trust rule (fewest rounds, largest
    spread, least time timed; the median cells and the JSON say which variant)."""
    r = row.get(key, {}).get(f"vs_{other}")
    if r is None:
        return "–"
    v = row["variants"]
    bad = [v[n] for n in (TBN, other) if not _trusted(v.get(n))]
    if not bad:
        return _ratio(r)
    spreads = [t.get("spread") for t in bad if t.get("spread") is not None]
    return not_measured(
        {
            "rounds": min(t.get("rounds", 0) for t in bad),
            "spread": max(spreads) if spreads else None,
            "timed_s": min(t.get("timed_s", 0.0) for t in bad),
        }
    )


def untrusted_timings(report: dict) -> list[tuple[dict, str]]:
    """``(row, variant)`` of every host timing that fails the trust rule."""
    return [
        (r, n)
        for r in report["host"]
        for n, t in r["variants"].items()
        if "median_s" in t and not _trusted(t)
    ]


def _rule_text(report: dict) -> str:
    rule = report.get("trust_rule") or harness.trust_rule()
    return (
        f"at least {rule['min_rounds']} rounds, a spread (interquartile range of the per-round times over "
        f"their median) of at most {rule['max_spread_iqr_over_median']:.0%}, and at least "
        f"{rule['min_timed_s'] * 1e3:g} ms of calls timed in all"
    )


# ------------------------------------------------------------------------------------ markdown
def render_markdown(report: dict) -> str:
    """The human-readable report."""
    meta, mach, ver = report["meta"], report["machine"], report["versions"]
    suite = meta.get("kind", "suite") == "suite"
    cmd = meta["command"]
    titles = {m["key"]: m["title"] for m in report["models"]}
    title = "# tbn-tvm benchmark report" + ("" if suite else f": `{report['models'][0]['title']}`")
    lines = [
        title
        + (" (quick smoke run)" if meta["quick"] and suite else " (quick run)" if meta["quick"] else ""),
        "",
        f"Every figure below was produced by one run of **`{cmd}`** "
        f"(tbn-tvm {ver['tbn-tvm']}{', git ' + meta['git'] if meta.get('git') else ''}, "
        f"{meta['started']}, {meta['wall_s']:.0f} s)."
        + (
            f"  The only figure not measured by it is the authors' {AUTHORS_INSTRUCTIONS / 1e6:.3f} M "
            f"instructions per inference, quoted from {AUTHORS_SOURCE}."
            if suite
            else ""
        ),
        "",
    ]
    if meta["quick"]:
        lines += [
            (
                "> Quick mode: scaled-down models, few rounds, few samples. A smoke test of the suite; "
                "its numbers are not the benchmark."
                if suite
                else "> Quick mode: few rounds, few samples."
            )
            + ' Timings that fail the trust rule (see Method) are shown as "not measured enough".',
            "",
        ]
    lines += _acceptance(report, cmd)
    lines += _issue_figures(report, cmd)
    if report["host"]:
        lines += _host(report, cmd, titles)
    if report.get("real"):
        lines += _real(report, cmd)
    elif report["meta"].get("real_unavailable"):
        lines += [
            "## Real architectures (issue 19)",
            "",
            f"Not measured: {report['meta']['real_unavailable']}.",
            "",
        ]
    if report["cortex_m"]:
        lines += _cortex_m(report, cmd, titles)
    elif report["settings"].get("skip_cortex_m"):
        lines += ["## Cortex-M4 on QEMU", "", "Not measured in this run (`--skip-cortex-m`).", ""]
    if report["models"]:
        lines += _models(report, suite)
    lines += _method(report, suite)
    lines += [
        "## Machine and versions",
        "",
        f"- CPU: {mach.get('cpu_model')} ({', '.join(mach.get('simd', [])) or 'no SIMD flags read'}); "
        f"{mach.get('usable_cpus')} usable of {mach.get('logical_cpus')} logical CPUs; RAM "
        f"{mach.get('ram_bytes', 0) / 2**30:.1f} GiB; {mach.get('os')}",
        *(
            [f"- LLVM target of the host builds: `{report['host_target']}`"]
            if report.get("host_target")
            else []
        ),
        "",
        "| software | version |",
        "|---|---|",
        *[f"| {k} | {v if v else 'not found'} |" for k, v in ver.items()],
        "",
    ]
    return "\n".join(lines)


def _acceptance(report: dict, cmd: str) -> list[str]:
    acc = report["acceptance"]
    if not acc:
        return []
    lines = [
        "## Acceptance figures of issue 4",
        "",
        f"Produced by `{cmd}`; checked here against the issue's thresholds (not a CI test).",
        "",
        "| criterion | required | measured | met |",
        "|---|---|---|---|",
    ]
    rows = {(r["model"], r["batch"]): r for r in report["host"]}
    for a in acc:
        m = a["measured"]
        met = "yes" if a["pass"] else "**no**"
        if a.get("trusted") is False:
            row = rows.get(("wide_mlp_p8", 1))
            other = next((n for n in a.get("variants", []) if n != TBN), ORT)
            shown = ratio_text(row, other) if row else "not measured enough"
            met = "**no** (not measured enough)"
        elif isinstance(m, float) and a["criterion"].endswith("error of the outputs vs onnxruntime"):
            shown = f"{m:.1e}"
        elif isinstance(m, float) and "speed-up" in a["criterion"]:
            shown = _ratio(m)
        elif isinstance(m, int | float):
            shown = _int(m)
        else:
            shown = str(m)
        lines.append(f"| {a['criterion']} | {a['required']} | {shown} | {met} |")
    lines.append("")
    return lines


def _issue_figures(report: dict, cmd: str) -> list[str]:
    items = report.get("issue_figures") or []
    if not items:
        return []
    lines = [
        "## Figures of issues 13, 22 and 10",
        "",
        f"Produced by `{cmd}`; this run's figures next to the thresholds of issues 13 and 22 (Cortex-M) "
        "and issue 10 (tuned host builds; rows only when the run tuned). A report, not a CI test; "
        "'–' where the run did not measure the figure in the issue's configuration.",
        "",
        "| issue | criterion | required | measured | met |",
        "|---:|---|---|---|---|",
    ]
    for a in items:
        met = "–" if a["pass"] is None else "yes" if a["pass"] else "**no**"
        lines.append(f"| {a['issue']} | {a['criterion']} | {a['required']} | {a['measured']} | {met} |")
    lines.append("")
    return lines


def _host(report: dict, cmd: str, titles: dict) -> list[str]:
    threads, ver, mach = report["threads"], report["versions"], report["machine"]
    ablation = sorted({r["batch"] for r in report["host"] if TBN_NO_REUSE in r["variants"]})
    ablation_text = f"batch {', '.join(map(str, ablation))} only" if ablation else "not measured in this run"
    lines = [
        "## Host CPU: time per inference",
        "",
        f"Produced by `{cmd}`. Median milliseconds per call over rounds (rounds × calls per round in "
        'the JSON); speed-ups are ratios of the medians. tbn-tvm: `tbn_tvm.compile(model, "llvm", mcpu="native")` '
        '(`mcpu="native"`: code for every vector unit of this CPU; a plain `"llvm"` build is portable '
        "generic-CPU code); no row reuse: `reuse_rows=False` (compact weights, every output row computed; "
        f'{ablation_text}); TVM fp32: `compress=False` with the same `mcpu="native"` '
        "(TVM's own build of the dense model, same Relax pipeline, default schedules, untuned); "
        f"all timed with TVM's time evaluator (`CompiledModel.time`). onnxruntime "
        f"{ver['onnxruntime']}: `InferenceSession.run` in a `time.perf_counter` loop on the same ONNX "
        f"bytes. Threads: TVM {threads['tvm']} (the suite sets `TVM_NUM_THREADS`: TVM's runtime would "
        f"take half the logical CPUs on x86), onnxruntime intra-op {threads['onnxruntime_intra_op']} "
        f"(inter-op 1), on {mach.get('usable_cpus')} usable cores.",
        "",
        "| model | batch | tbn-tvm ms | no row reuse ms | TVM fp32 ms | onnxruntime ms | × vs onnxruntime "
        "| × vs TVM fp32 | max rel. err vs onnxruntime (tbn / no reuse / TVM) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["host"]:
        v = r["variants"]
        errs = " / ".join(
            f"{v[n]['rel_err_vs_onnxruntime']:.1e}" if n in v else "–" for n in (TBN, TBN_NO_REUSE, TVM_FP32)
        )
        lines.append(
            f"| {titles[r['model']]} | {r['batch']} | {median_text(v, TBN)} | {median_text(v, TBN_NO_REUSE)} | "
            f"{median_text(v, TVM_FP32)} | {median_text(v, ORT)} | {ratio_text(r, ORT)} | "
            f"{ratio_text(r, TVM_FP32)} | {errs} |"
        )
    bad_err = [r for r in report["host"] if r.get("outputs_within_tolerance") is False]
    lines += [
        "",
        "Max rel. err = max |y − y_onnxruntime| / max |y_onnxruntime| over the batch's outputs"
        + (
            f"; **outputs of {', '.join(sorted({titles[r['model']] for r in bad_err}))} differ from "
            f"onnxruntime by more than {REL_TOLERANCE:g}**."
            if bad_err
            else f" (all within {REL_TOLERANCE:g})."
        ),
        "",
    ]
    bad = untrusted_timings(report)
    total = sum(1 for r in report["host"] for t in r["variants"].values() if "median_s" in t)
    if bad:
        lines += [
            f"**{len(bad)} of {total} timings did not meet the trust rule** ({_rule_text(report)}): their "
            'medians and the ratios built on them are shown as "not measured enough"; their samples are in '
            'the JSON, marked `"trusted": false`.',
            "",
        ]
    else:
        lines += [f"All {total} timings met the trust rule ({_rule_text(report)}).", ""]
    tuned = [r for r in report["host"] if TBN_TUNED in r["variants"]]
    if tuned:
        trials = tuned[0].get("tuning", {}).get("trials")
        lines += [
            f"### Tuned: `tbn-tvm tune --trials {trials}`, then `compile --tuning-db`",
            "",
            "MetaSchedule with its XGBoost cost model over every kernel of the model (the tiled layers in "
            "their decoded form; each tiled layer then keeps the fastest of its hand-scheduled bit-serial "
            "kernel, its hand-scheduled decoded kernel and its tuned decoded kernel, and a record is applied "
            "only where it beats the hand schedule), measured on this machine.",
            "",
            "| model | batch | tuned ms | × vs onnxruntime | × vs untuned tbn-tvm | × vs TVM fp32 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in tuned:
            v = r["variants"]
            lines.append(
                f"| {titles[r['model']]} | {r['batch']} | {median_text(v, TBN_TUNED)} | "
                f"{pair_ratio_text(r, TBN_TUNED, ORT)} | {pair_ratio_text(r, TBN_TUNED, TBN)} | "
                f"{pair_ratio_text(r, TBN_TUNED, TVM_FP32)} |"
            )
        lines.append("")
    lines += [
        "The same speed-ups from each variant's fastest round (less sensitive to load from other work, "
        "more to luck):",
        "",
        "| model | batch | × vs onnxruntime | × vs TVM fp32 | × vs no row reuse |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["host"]:
        key = "speedup_fastest_rounds"
        lines.append(
            f"| {titles[r['model']]} | {r['batch']} | {ratio_text(r, ORT, key)} | "
            f"{ratio_text(r, TVM_FP32, key)} | {ratio_text(r, TBN_NO_REUSE, key)} |"
        )
    lines += [
        "",
        "TVM fp32 is TVM's build of the dense model with the loop nests Relax's default pipeline gives "
        "(no MetaSchedule tuning, no hand schedule), as `tbn_tvm.compile(..., compress=False)` makes it; "
        "the ratio against it compares the same compiler path with and without the compact weights, not "
        "tbn-tvm against a tuned TVM. The no-row-reuse kernels keep TVM's default loop nest as well "
        "(only the row-reuse kernels have a hand schedule).",
        "",
        "![speed-ups](speedup.png)",
        "",
    ]
    return lines


def _win_loss(r: float | None) -> str:
    """A speed-up with the word a reader needs: faster (> 1), slower (< 1)."""
    if r is None:
        return "–"
    return f"{_ratio(r)} ({'faster' if r >= 1 else 'slower'})"


def real_ratio_text(row: dict, other: str) -> str:
    """tbn-tvm's speed-up over ``other`` in a real-architecture row, with faster/slower, or why
    it is not shown."""
    v = row["variants"]
    for n in (real.TBN, other):
        if "median_s" not in v.get(n, {}):
            return "–"
    text = ratio_text(row, other)
    return _win_loss(row["speedup"][f"vs_{other}"]) if text.endswith("×") else text


def _real_cell(v: dict, name: str) -> str:
    t = v.get(name)
    if t is None:
        return "–"
    if "status" in t and "median_s" not in t:
        return f"{t['status']}: {t.get('reason', '')}"
    return median_text(v, name)


def _real(report: dict, cmd: str) -> list[str]:
    rows, threads, ver = report["real"], report["threads"], report["versions"]
    titles = {m["key"]: m["title"] for m in report.get("real_models", [])}
    targets = sorted({r["target"] for r in rows if r.get("target")})
    tuned = any(real.TBN_TUNED in r["variants"] for r in rows)
    quick = report["meta"]["quick"]
    args = next((m["tbnify"] for m in report.get("real_models", [])), real_tbnify())
    lines = [
        "## Real architectures (issue 19): host CPU, default build",
        "",
        f"Produced by `{cmd}`. The networks of `benchmarks/architectures.py` (plain-torch re-implementations "
        "of published architectures, random weights, see the models table below; those marked held out are the "
        "set nobody tunes code on)"
        + (", in their small test configurations" if quick else "")
        + f", made a TBN by `tbnify({', '.join(f'{k}={v}' for k, v in args.items())})`, BatchNorm/LayerNorm "
        "given non-trivial statistics, exported by `export_onnx` with the batch as the input's fixed leading "
        'dimension. tbn-tvm: `tbn_tvm.compile(model, "llvm")`, the default build a user gets (untuned, '
        f"no `mcpu`; LLVM target {', '.join(f'`{t}`' for t in targets) or '–'}), timed with TVM's time "
        f"evaluator. onnxruntime {ver['onnxruntime']} fp32: the same ONNX bytes; int8: "
        "`quant_pre_process`, then `quantize_static` with its defaults (QDQ, int8 activations and weights, per "
        f"tensor, MinMax calibration on {real.CALIBRATION_SAMPLES} random inputs; QOperator where QDQ fails), "
        "`InferenceSession.run` in a `time.perf_counter` loop. Threads: TVM "
        f"{threads['tvm']}, onnxruntime intra-op {threads['onnxruntime_intra_op']}. Medians over rounds, the "
        "variants alternated in one process (see Method); × = onnxruntime's median / tbn-tvm's: above 1 "
        "tbn-tvm is faster, below 1 slower. Max rel. err = max |y − y_fp32| / max |y_fp32| against "
        f"onnxruntime fp32 (tbn-tvm must be within {REL_TOLERANCE:g}; int8's is shown for information). "
        "Compile s: `tbn_tvm.compile`'s wall time.",
        "",
        "| architecture | batch | tbn-tvm ms | onnxruntime fp32 ms | onnxruntime int8 ms | × vs fp32 | × vs int8 "
        "| tbn-tvm max rel. err | int8 max rel. err | compile s |"
        + (" tuned ms | tuned × vs fp32 |" if tuned else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if tuned else ""),
    ]
    for r in rows:
        v = r["variants"]
        tb = v.get(real.TBN, {})
        err = tb.get("rel_err_vs_onnxruntime")
        err_text = (
            "–" if err is None else f"{err:.1e}" + (" **(> tolerance)**" if err > REL_TOLERANCE else "")
        )
        q = v.get(real.ORT_INT8, {})
        q_err = q.get("rel_err_vs_onnxruntime")
        line = (
            f"| {titles.get(r['model'], r['model'])} | {r['batch']} | {_real_cell(v, real.TBN)} | "
            f"{_real_cell(v, real.ORT)} | {_real_cell(v, real.ORT_INT8)} | {real_ratio_text(r, real.ORT)} | "
            f"{real_ratio_text(r, real.ORT_INT8)} | {err_text} | "
            f"{'–' if q_err is None else f'{q_err:.1e}'} | "
            f"{'–' if 'compile_s' not in tb else format(tb['compile_s'], '.1f')} |"
        )
        if tuned:
            line += f" {_real_cell(v, real.TBN_TUNED)} | {pair_ratio_text(r, real.TBN_TUNED, real.ORT)} |"
        lines.append(line)
    lines.append("")
    bad = [(r, n) for r in rows for n, t in r["variants"].items() if "median_s" in t and not _trusted(t)]
    total = sum(1 for r in rows for t in r["variants"].values() if "median_s" in t)
    lines += [
        (
            f"**{len(bad)} of {total} timings did not meet the trust rule** ({_rule_text(report)}); shown as "
            '"not measured enough".'
            if bad
            else f"All {total} timings met the trust rule ({_rule_text(report)})."
        ),
        "",
    ]
    if not tuned:
        lines += [
            "Tuned builds: not in this run (`--tune-trials N` adds a tuned column: `tbn_tvm.schedules.tuning.tune` "
            "for the same default target, then `compile(..., tuning_db=...)`).",
            "",
        ]
    gms = report.get("real_geomeans") or []
    if gms:
        lines += [
            "Geometric means of the × columns over the rows whose ratio is trusted (faster on: rows with × ≥ 1):",
            "",
            "| batch | architectures | × vs onnxruntime fp32 | faster on | × vs onnxruntime int8 | faster on |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for g in gms:
            cells = []
            for other in (real.ORT, real.ORT_INT8):
                key = f"vs_{other}"
                gm = g[key]
                cells += [
                    "–" if gm is None else _win_loss(gm),
                    f"{g[f'{key}_wins']} of {g[f'{key}_rows']}"
                    + (f" ({g['rows'] - g[f'{key}_rows']} left out)" if g[f"{key}_rows"] < g["rows"] else ""),
                ]
            lines.append(f"| {g['batch']} | {g['group']} | {' | '.join(cells)} |")
        lines.append("")
    acc = report.get("issue19_figures") or []
    if acc:
        lines += [
            "Issue 19's acceptance figures (the default untuned build at batch 1; a report, not a CI test):",
            "",
            "| criterion | required | measured | met |",
            "|---|---|---|---|",
        ]
        for a in acc:
            lines.append(
                f"| {a['criterion']} | {a['required']} | {a['measured']} | {'yes' if a['pass'] else '**no**'} |"
            )
        lines.append("")
    lines += [
        "Real-architecture models (parameters of the untiled network; layers as `tbnify` planned them and "
        "as the compiler found them in the batch-1 file; weight bytes as `tbn-tvm inspect` counts them):",
        "",
        "| architecture | follows | input (batch 1) | parameters | tbnify: tiled / binary / fp32 | compiler: formats "
        "| fp32 weight bytes | compact weight bytes | ONNX file bytes |",
        "|---|---|---|---:|---|---|---:|---:|---:|",
    ]
    for m in report.get("real_models", []):
        t = m["tbnify_layers"]
        formats = ", ".join(f"{k} {n}" for k, n in sorted(m.get("formats", {}).items())) or "–"
        lines.append(
            f"| {m['title']} | {m['source']} | {'x'.join(map(str, m['input_shape']))} | {m['parameters']:,} | "
            f"{t['tiled']} / {t['binary']} / {t.get('fp32', 0)} | {formats} | {_int(m.get('fp32_bytes'))} | "
            f"{_int(m.get('weight_bytes'))} | {m['onnx_bytes']:,} |"
        )
    lines.append("")
    return lines


def real_tbnify() -> dict:
    from benchmarks.architectures import TBNIFY

    return dict(TBNIFY)


def _cycles(b: dict, key: str) -> str:
    v = b.get(f"estimated_cycles_{key}_per_inference")
    return _int(v) if v is not None else "–"


def _cortex_m_row(model_title: str, build_title: str, b: dict, err: str | None = None) -> str:
    """One row of the Cortex-M table (a build that failed: its reason in the figures' place)."""
    if b.get("status") != "ok":
        why = b.get("reason", b.get("status"))
        if b.get("status") == "skipped" or "CMSIS" in build_title:
            why = f"{b.get('status')}: {b.get('reason', '')}"
        return f"| {model_title} | {build_title} | {why} | – | – | – | – | – | – | – |"
    if err is None:
        err = f"{b.get('rel_err_vs_onnxruntime', float('nan')):.1e}"
    return (
        f"| {model_title} | {build_title} | {_int(b['instructions_per_inference'])} | {_cycles(b, 'm4')} | "
        f"{_cycles(b, 'm7')} | {_int(b['flash_bytes'])} | {_int(b['ram_bytes'])} | "
        f"{_int(b['weight_bytes'])} | {b['samples']:,} | {err} |"
    )


def _cortex_m(report: dict, cmd: str, titles: dict) -> list[str]:
    first = next((b for r in report["cortex_m"] for b in r["builds"].values() if b.get("status") == "ok"), {})
    cycles_model = report.get("cycles_model")
    lines = [
        "## Cortex-M4 on QEMU: instructions, estimated cycles, flash and RAM per inference",
        "",
        f'Produced by `{cmd}`: `tbn_tvm.compile(model, "cortex-m4"[, compress=False | ram_size=... | '
        f'activations="float16"])`, `run(x, count_instructions=True)` on QEMU '
        f"`{first.get('qemu_machine', '?')}` (board `{first.get('board', '?')}`); QEMU counts executed "
        "instructions exactly. The estimated cycles come from the same instruction-count plugin, which "
        "adds each executed instruction's cycles"
        + (f" ({cycles_model})" if cycles_model else "")
        + "; an estimate, not a measurement on a board. Flash and RAM are the firmware's (RAM includes "
        "the stack); weight bytes are the model's constant arrays in flash. A `ram_size` build is the "
        "same model for a board with that much RAM (patch-wise execution where the activations do not "
        "fit).",
        "",
        "| model | build | instructions / inference | est. Cortex-M4 cycles | est. Cortex-M7 cycles "
        "| flash bytes | RAM bytes | weight bytes | samples | max rel. err vs onnxruntime |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["cortex_m"]:
        mt = titles[r["model"]]
        variants = [k for k in r["builds"] if k not in (TBN, TVM_FP32, CMSIS_INT8)]
        for name in (TBN, *variants, TVM_FP32):
            b = r["builds"].get(name)
            if b is None:
                continue
            title = (
                "tbn-tvm"
                if name == TBN
                else "dense fp32, same path (`compress=False`)"
                if name == TVM_FP32
                else b.get("title", name)
            )
            lines.append(_cortex_m_row(mt, title, b))
        c = r["builds"].get(CMSIS_INT8)
        if c is not None:
            title = CMSIS_TITLE if c.get("status") == "ok" else "CMSIS-NN int8"
            lines.append(_cortex_m_row(mt, title, c, err="int8 (not compared)"))
        if "authors_instructions_per_inference" in r:
            lines.append(
                f"| {mt} | the authors' float C loop (their figure from issue 4; gcc 12 -O2, "
                f"QEMU M4; not run here) | {r['authors_instructions_per_inference']:,} | – | – | – | – | – | – | – |"
            )
    lines.append("")
    ratios = []
    for r in report["cortex_m"]:
        if "fewer_instructions_than_dense" in r:
            ratios.append(
                f"{titles[r['model']]}: {_ratio(r['fewer_instructions_than_dense'])} fewer "
                f"instructions and {_ratio(r['smaller_flash_than_dense'])} less flash than the dense build"
            )
        c = r["builds"].get(CMSIS_INT8, {})
        if "fewer_instructions_than_cmsis_nn" in r:
            tbn = r["builds"][TBN]
            acc = r.get("mnist", {}).get("accuracy")
            ratios.append(
                f"{titles[r['model']]}: {_ratio(r['fewer_instructions_than_cmsis_nn'])} fewer instructions "
                f"and {_ratio(r['smaller_flash_than_cmsis_nn'])} less flash than CMSIS-NN int8 "
                f"({_int(tbn['instructions_per_inference'])} vs {_int(c['instructions_per_inference'])}; "
                f"{_int(c.get('instructions_in_fully_connected'))} of CMSIS-NN's inside its two "
                "`arm_fully_connected_s8` calls, the rest quantizing the input and dequantizing the logits)"
            )
            if "fewer_estimated_m4_cycles_than_cmsis_nn" in r:
                inside = c.get("estimated_cycles_m4_in_fully_connected")
                ratios.append(
                    f"**{titles[r['model']]} against CMSIS-NN int8 in estimated Cortex-M4 cycles (issue 22's "
                    f"bar: 3×): {cycles_vs_cmsis_text(r['fewer_estimated_m4_cycles_than_cmsis_nn'])}** "
                    f"({_cycles(tbn, 'm4')} vs {_cycles(c, 'm4')}"
                    + (f"; {_int(inside)} of CMSIS-NN's inside `arm_fully_connected_s8`" if inside else "")
                    + "; SMLAD, two 16-bit multiply-accumulates, credited 1 cycle as the Cortex-M4 TRM gives "
                    "it). Estimated Cortex-M7 cycles: "
                    + (
                        f"{_ratio(r['fewer_estimated_m7_cycles_than_cmsis_nn'])} fewer "
                        f"({_cycles(tbn, 'm7')} vs {_cycles(c, 'm7')})"
                        if "fewer_estimated_m7_cycles_than_cmsis_nn" in r
                        else "–"
                    )
                )
            ratios.append(
                f"CMSIS-NN int8 on the same {c['samples']:,} MNIST test images: accuracy "
                f"{c['accuracy'] * 100:.2f} %"
                + (f" (tbn-tvm {acc * 100:.2f} %)" if acc is not None else "")
                + f"; outputs bit-equal to a numpy model of the same int8 arithmetic on "
                f"{c['outputs_equal_numpy_int8_reference']:,}; CMSIS-NN source: {c.get('source', '?')}; "
                "quantization: "
                + "; ".join(f"{k} {v}" for k, v in c["quantization"].items() if isinstance(v, str))
            )
        for key, b in r["builds"].items():
            if key in (TBN, TVM_FP32, CMSIS_INT8) or b.get("status") != "ok":
                continue
            ratios.append(
                f"{titles[r['model']]}, {b.get('title', key)}: {_variant_text(b, r['builds'].get(TBN))}"
            )
        if "fewer_instructions_than_authors" in r:
            ratios.append(
                f"{titles[r['model']]}: {_ratio(r['fewer_instructions_than_authors'])} fewer "
                "instructions than the authors' figure"
            )
        if r.get("outputs_within_tolerance") is False:
            ratios.append(
                f"**{titles[r['model']]}: outputs differ from onnxruntime by more than {REL_TOLERANCE:g} "
                "(1e-2 for float16 activations)**"
            )
    lines += [f"- {s}" for s in ratios]
    mn = next((r["mnist"] for r in report["cortex_m"] if "mnist" in r), None)
    if mn:
        lines += [
            f"- MNIST test images through tbn-tvm on QEMU: {mn['images']:,}; accuracy "
            f"{mn['accuracy'] * 100:.2f} %; predictions equal to the numpy reference (from the authors' "
            f"tile bits and α's) on {mn['predictions_equal_numpy_reference']:,}, equal to onnxruntime on the "
            f"dense ONNX on {mn['predictions_equal_onnxruntime']:,}.",
        ]
    lines.append("")
    return lines


def _variant_text(b: dict, base: dict | None) -> str:
    """What a ``ram_size`` / float16 build did: the RAM limit, the patch-wise stage, the float16
    accuracy against the float32 build, and its cost against the default build."""
    parts = []
    limit = (b.get("memory") or {}).get("ram", {}).get("limit")
    if limit:
        parts.append(f"RAM {_int(b['ram_bytes'])} of {_int(limit)} B (arena {_int(b.get('arena_bytes'))} B)")
    patch = b.get("patchwise")
    if patch:
        layers = patch.get("layers") or []
        grid = patch.get("grid")
        over = patch.get("recompute_overhead_instructions")
        parts.append(
            f"patch-wise stage of {len(layers)} layer{'s' if len(layers) != 1 else ''}"
            + (f" ({layers[0]} … {layers[-1]})" if len(layers) > 1 else f" ({layers[0]})" if layers else "")
            + (f" in {'x'.join(map(str, grid))} tiles" if grid else "")
            + (
                f", {_int(over)} instructions of recompute over layer by layer"
                if isinstance(over, int | float)
                else ""
            )
        )
    acc = b.get("activation_accuracy")
    if acc and "max_rel_error" in acc:
        agree = acc.get("top1_agreement")
        parts.append(
            f"float16 activations: max rel. err {acc['max_rel_error']:.1e} against the float32 build"
            + (f", top-1 agreement {agree * 100:.0f} %" if isinstance(agree, int | float) else "")
            + (f" on {acc['inputs']}" if acc.get("inputs") else "")
        )
    elif acc and acc.get("skipped"):
        parts.append(f"float16 accuracy not measured: {acc['skipped']}")
    if base and base.get("status") == "ok":
        parts.append(
            f"{b['instructions_per_inference'] / base['instructions_per_inference']:.2f}× the default build's "
            f"instructions, {b['ram_bytes'] / base['ram_bytes']:.2f}× its RAM ({_int(base['ram_bytes'])} B)"
        )
    if b.get("rel_err_vs_onnxruntime", 0.0) > build_tolerance(b):
        parts.append(f"**outputs off onnxruntime by {b['rel_err_vs_onnxruntime']:.1e}**")
    return "; ".join(parts) or "built"


def _shape(m: dict) -> str:
    shapes = m.get("input_shapes")
    if shapes and len(shapes) > 1:
        return "; ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items())
    return "x".join(map(str, m["input_shape"]))


def _models(report: dict, suite: bool) -> list[str]:
    if suite:
        intro = (
            "Generated deterministically by `benchmarks/models.py` (fixed seeds); the batch dimension is "
            "fixed in each file. Weights as exporters write them: dense float32 (the conv-BN CNN also in tile + "
            "Tile/Expand form), Gemm `transB=1`, "
            "BatchNorm folded into the convs of the ResNet, its own node in the conv-BN CNN. Formats as the "
            "compiler detects them (`tbn-tvm inspect`)."
        )
        input_head = "input (batch 1)"
    else:
        intro = (
            "The ONNX file given with `--model`, as it is"
            + (" (dynamic dimensions set by `--input-shape`)" if report["meta"].get("input_shapes") else "")
            + ". Inputs: fixed random values (`numpy.random.default_rng(seed)`: float inputs standard normal, "
            "integer and bool inputs zero). Formats as the compiler detects them (`tbn-tvm inspect`)."
        )
        input_head = "input"
    lines = [
        "## Models",
        "",
        intro,
        "",
        f"| model | generator | {input_head} | parameters | fp32 weight bytes | compact weight bytes "
        "| smaller | layers |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for m in report["models"]:
        layer_s = "; ".join(
            f"{la['name']} {'x'.join(map(str, la['weight_shape']))} "
            f"{la['format'] + (' p=' + str(la['p']) if la['format'] == 'tiled' else '')}"
            for la in m["layers"]
        )
        lines.append(
            f"| {m['title']} | `{m['generator']}` | {_shape(m)} | "
            f"{m['parameters']:,} | {m['fp32_bytes']:,} | {m['weight_bytes']:,} | "
            f"{_ratio(m['compression'])} | {layer_s or 'no weighted layers'} |"
        )
    lines += [
        "",
        "Compact weight bytes: tiles and scales of the weighted layers as `tbn-tvm inspect` counts "
        "them (biases excluded; the Cortex-M table's weight bytes include them).",
        "",
    ]
    return lines


def _method(report: dict, suite: bool) -> list[str]:
    s, meta, mach = report["settings"], report["meta"], report["machine"]
    lines = ["## Method", ""]
    if report["host"] or report.get("real"):
        lines.append(
            f"- Host: each variant is compiled, run once and checked against onnxruntime, then timed: a round "
            f"is `number` calls (chosen so that a round lasts about {s['round_s'] * 1e3:g} ms), up to "
            f"{s['rounds']} rounds (at least {s['min_rounds']}, fewer when one measurement would exceed about "
            f"{s['budget_s']:g} s). The rounds are spread over {s['passes']} pass{'es' if s['passes'] != 1 else ''} "
            "through the variants, so that load from other work on the machine meets every variant alike (a "
            "variant slower than 1 s per call runs all its rounds in the first pass). Within a pass the "
            f"variants run one after the other, each after a {s['settle_s']:g} s pause and a warm-up call: "
            "onnxruntime's and TVM's spinning worker threads slow each other down when their calls alternate. "
            "The tables give the median over rounds; every sample is in the JSON."
        )
        lines.append(
            f"- Trust rule: a timing is trusted when it has {_rule_text(report)}. A median or ratio resting on "
            'a timing that fails it is shown as "not measured enough (rounds, spread, ms timed)" instead of a '
            'number, here, on the terminal and in the plot, and marked `"trusted": false` in the JSON '
            "(`speedup_trusted` for the ratios). Quick and full runs apply the same rule."
        )
    if report["cortex_m"]:
        if suite:
            lines.append(
                f"- Cortex-M: the authors' MLP runs {s['mnist_samples']:,} MNIST test images through tbn-tvm "
                f"and {s['mnist_dense_samples']:,} through the dense build; other models {s['mcu_samples']} "
                "random input(s) each. Instruction counts are per inference (mean; min and max in the JSON). "
                "Estimated cycles: the QEMU plugin's Cortex-M4 and Cortex-M7 estimates per inference "
                "(`tbn_tvm.targets.cortex_m.qemu.CYCLES_MODEL`), the same for every row, CMSIS-NN's included. "
                'The ResNet-style CNN 16/32/64 is built three times (the board\'s RAM, `ram_size="128K"`, '
                '`ram_size="64K", activations="float16"`) and the conv-BN CNN (dense weights) also '
                'with `ram_size="24K"` (issue 22); a float16 build is held to 1e-2 of onnxruntime, every '
                "other to 1e-5."
            )
            lines.append(
                "- CMSIS-NN int8 (`benchmarks/cmsis_nn.py`): built from CMSIS-NN's public source at the pinned "
                "commit (found through `--cmsis-nn DIR` or `TBN_BENCH_CMSIS_NN`, a clone of "
                "ARM-software/CMSIS-NN; never downloaded by the suite; the row says 'skipped' and why when "
                "there is none) with the same firmware harness, linker script, board flags (-O2) and "
                "instruction-count plugin as tbn-tvm's builds, on the same MNIST test images. "
                "`tbn_model_run` quantizes the 784 input floats to int8, calls `arm_fully_connected_s8` twice "
                "(per-tensor scales, fc1's ReLU as its clamp) and dequantizes the 10 logits; all of it is "
                "counted, and the count inside the two CMSIS-NN calls is given apart. Its weights are the "
                "authors' float weights quantized per tensor (symmetric int8); activation ranges from the "
                "first 1,000 test images. Its outputs are checked against a numpy model of the same int8 "
                "arithmetic, not against onnxruntime's float outputs."
            )
        else:
            lines.append(
                f"- Cortex-M: {s['mcu_samples']} random input(s) through each build. Instruction counts are "
                "per inference (mean; min and max in the JSON)."
            )
    if report["host"] or report.get("real"):
        lines.append(
            "- The machine is shared: timings are noisy, which is why medians and ratios taken in the same run "
            f"are reported. Load average (1, 5, 15 min) at the start {meta.get('load_average_start')}, at the "
            f"end {meta.get('load_average_end')}, on {mach.get('usable_cpus')} usable cores."
        )
    else:
        lines.append(
            "- No host timings in this run; QEMU's instruction counts do not depend on the machine's load."
        )
    lines.append("")
    return lines


# ------------------------------------------------------------------------------------ terminal
def render_summary(report: dict) -> str:
    """A few lines for the terminal: the host speed-ups and the Cortex-M figures."""
    lines = []

    def vs(r: dict, other: str, name: str) -> str:
        text = ratio_text(r, other)
        return f"{text:>7} vs {name}" if text.endswith("×") or text == "–" else f"vs {name}: {text}"

    for r in report["host"]:
        v = r["variants"]
        tbn = median_text(v, TBN)
        tbn = f"{tbn:>7} ms" if _trusted(v[TBN]) else tbn
        lines.append(
            f"{r['model']:<18} batch {r['batch']:>2}: tbn-tvm {tbn}  {vs(r, ORT, 'onnxruntime')}  "
            f"{vs(r, TVM_FP32, 'TVM fp32')}"
        )
        if TBN_TUNED in v:
            lines.append(
                f"{'':<18} tuned   {median_text(v, TBN_TUNED):>7} ms  "
                f"{pair_ratio_text(r, TBN_TUNED, ORT):>7} vs onnxruntime"
            )
        if r.get("outputs_within_tolerance") is False:
            worst = max(t["rel_err_vs_onnxruntime"] for t in v.values())
            lines.append(
                f"{'':<18} outputs differ from onnxruntime: max rel. err {worst:.1e} > {REL_TOLERANCE:g}"
            )
    for r in report.get("real", []):
        v = r["variants"]
        tb = v.get(real.TBN, {})
        head = f"{r['model']:<22} batch {r['batch']:>2}: tbn-tvm "
        if "median_s" not in tb:
            lines.append(head + f"{tb.get('status', 'not built')}: {tb.get('reason', '')[:200]}")
            continue
        ms = median_text(v, real.TBN)
        lines.append(
            head
            + (f"{ms:>7} ms" if _trusted(tb) else ms)
            + f"  {real_ratio_text(r, real.ORT)} vs onnxruntime "
            f"fp32  {real_ratio_text(r, real.ORT_INT8)} vs int8"
        )
        if r.get("outputs_within_tolerance") is False:
            lines.append(
                f"{'':<22} outputs differ from onnxruntime: max rel. err {tb['rel_err_vs_onnxruntime']:.1e}"
            )
    for g in report.get("real_geomeans", []):
        gm = g[f"vs_{real.ORT}"]
        lines.append(
            f"real architectures ({g['group']}), batch {g['batch']}: geometric mean "
            f"{_win_loss(gm)} vs onnxruntime fp32 over {g[f'vs_{real.ORT}_rows']} trusted rows, "
            f"faster on {g[f'vs_{real.ORT}_wins']}"
        )
    for r in report["cortex_m"]:
        b = r["builds"][TBN]
        if b.get("status") == "ok":
            line = (
                f"{r['model']:<18} cortex-m4: {_int(b['instructions_per_inference'])} instructions"
                + (
                    f" ({_cycles(b, 'm4')} est. M4 cycles)"
                    if b.get("estimated_cycles_m4_per_inference") is not None
                    else ""
                )
                + f", flash {_int(b['flash_bytes'])} B, RAM {_int(b['ram_bytes'])} B"
            )
            if "fewer_instructions_than_dense" in r:
                line += (
                    f"; {_ratio(r['fewer_instructions_than_dense'])} fewer instructions than the dense build"
                )
            lines.append(line)
        else:
            lines.append(f"{r['model']:<18} cortex-m4: tbn-tvm {b.get('status')}: {b.get('reason', '')}")
        for key, v in r["builds"].items():
            if key not in (TBN, TVM_FP32, CMSIS_INT8) and v.get("status") == "ok":
                lines.append(
                    f"{'':<18} {key}: {_int(v['instructions_per_inference'])} instructions "
                    f"({_cycles(v, 'm4')} est. M4 cycles), RAM {_int(v['ram_bytes'])} B, "
                    f"max rel. err {v.get('rel_err_vs_onnxruntime', float('nan')):.1e}"
                )
            elif key not in (TBN, TVM_FP32, CMSIS_INT8):
                lines.append(f"{'':<18} {key}: {v.get('status')}: {v.get('reason', '')}")
        if "fewer_estimated_m4_cycles_than_cmsis_nn" in r:
            lines.append(
                f"{'':<18} vs CMSIS-NN int8 in estimated M4 cycles: "
                f"{cycles_vs_cmsis_text(r['fewer_estimated_m4_cycles_than_cmsis_nn'])}"
            )
        if r.get("outputs_within_tolerance") is False:
            lines.append(f"{'':<18} outputs differ from onnxruntime by more than {REL_TOLERANCE:g}")
    for r in report["cortex_m"]:
        d = r["builds"].get(TVM_FP32, {})
        if (
            d.get("status") != "ok"
            and r["builds"][TBN].get("status") == "ok"
            and report["meta"].get("kind") == "model"
        ):
            lines.append(f"{r['model']:<18} cortex-m4 dense build: {d.get('reason', d.get('status'))}")
    bad = untrusted_timings(report)
    if bad:
        lines.append(
            f"{len(bad)} timing(s) did not meet the trust rule ({_rule_text(report)}): shown as 'not measured enough'"
        )
    if report["meta"].get("kind", "suite") == "suite":
        if report["meta"]["quick"]:
            lines.append("quick mode: scaled-down models; the acceptance figures of issue 4 need a full run")
        else:
            for a in report["acceptance"]:
                state = (
                    "met"
                    if a["pass"]
                    else "NOT met" + (" (not measured enough)" if a.get("trusted") is False else "")
                )
                lines.append(f"{state}: {a['criterion']} ({a['required']})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ files
def write(report: dict, out: Path, log=lambda msg: None) -> None:
    """Write ``report.json``, ``report.md`` (each atomically) and ``speedup.png`` into ``out``."""
    from benchmarks.plot import plot

    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("report.json", json.dumps(report, indent=1) + "\n"),
        ("report.md", render_markdown(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    plot(report, out / "speedup.png")
    log(f"wrote {out / 'report.md'}, {out / 'report.json'} and {out / 'speedup.png'}")
