"""The real-architecture table of issue 19: the networks of :mod:`benchmarks.architectures` (eleven
published architectures and a held-out trio) at batch 1 and 8 on the host CPU, tbn-tvm's default
build against onnxruntime fp32 and onnxruntime int8.

Per architecture and batch (the batch is the ONNX input's fixed leading dimension, one export per
batch) a row times, alternated in one process with :func:`benchmarks.harness.measure`:

* ``tbn-tvm``: ``tbn_tvm.compile(model, "llvm")``, the default build a user gets (no ``mcpu``,
  untuned), its compile time, its output checked against onnxruntime fp32
  (max |y − y_ort| / max |y_ort|, :func:`benchmarks.harness.rel_err`);
* ``onnxruntime-fp32``: the same ONNX bytes in an ``InferenceSession``;
* ``onnxruntime-int8``: the model after ``onnxruntime.quantization.quant_pre_process`` (shape
  inference and onnxruntime's graph optimisations: the tile chains constant-folded, BatchNorm
  fused) and ``quantize_static`` with its defaults (QDQ format, int8 activations and weights, per
  tensor, MinMax calibration) on :data:`CALIBRATION_SAMPLES` random inputs of the row's shape;
  where the QDQ model cannot be made or run, the QOperator format is tried; where neither works
  the cell says why (:func:`quantize_int8`).  Its output's error against fp32 is reported, not
  checked;
* ``tbn-tvm-tuned`` with ``--tune-trials N``: ``tbn_tvm.schedules.tuning.tune`` for the same
  default target, then ``compile(..., tuning_db=...)``.

Threads: the suite's (2 on the CI machine) for TVM and onnxruntime alike.  Speed-ups are
onnxruntime's median over tbn-tvm's (> 1: tbn-tvm faster, < 1: slower), shown only where both
timings pass the trust rule.  Nothing here asserts speed.
"""

from __future__ import annotations

import gc
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import Log, Settings, Timer
from tbn_tvm import TBNError

TBN = "tbn-tvm"
TBN_TUNED = "tbn-tvm-tuned"
ORT = "onnxruntime-fp32"
ORT_INT8 = "onnxruntime-int8"
VARIANTS = (TBN, TBN_TUNED, ORT, ORT_INT8)  # timing order within a pass

FAMILY = "real"
#: ``--cases`` keys naming a group of real-architecture cases.
GROUPS = {"real": "all fourteen", "real_eleven": "the eleven of issue 19", "held_out": "the held-out trio"}

FULL_BATCHES = (1, 8)
QUICK_BATCHES = (1,)
CALIBRATION_SAMPLES = 8
SEED = 0  # weights; the input is seed + 1, the calibration inputs seeds 100, 101, ...


# ------------------------------------------------------------------------------------ the cases
def unavailable() -> str | None:
    """Why the real-architecture cases cannot run here (``None``: they can): they need torch and
    onnxscript (the exporter) besides onnxruntime."""
    import importlib.util

    missing = [m for m in ("torch", "onnxscript") if importlib.util.find_spec(m) is None]
    return " and ".join(missing) + " (pip install 'tbn-tvm[torch]')" if missing else None


def real_cases(settings: Settings) -> list:
    """One :class:`benchmarks.suite.Case` per architecture of :data:`architectures.ALL` (family
    ``"real"``), full size at batches 1 and 8, or (``--quick``) the small configuration at batch 1."""
    from benchmarks import architectures as arch
    from benchmarks.suite import Case

    small = settings.quick
    cases = []
    for name, spec in arch.ALL.items():
        config = spec.small if small else spec.full
        shown = ", ".join(f"{k}={v}" for k, v in config.items() if k != "arch" and k != "cfgs")
        cases.append(
            Case(
                name,
                f"{name}{' (held out)' if spec.held_out else ''}{' (small)' if small else ''}",
                _builder(name, small),
                lambda model, seed=1: {model.graph.input[0].name: _input_of(model, seed)},
                QUICK_BATCHES if small else FULL_BATCHES,
                cortex_m=False,
                generator=f'architectures.benchmark_model("{name}", batch{", small=True" if small else ""})'
                f" ({shown})",
                short=name,
                ablation=False,
                family=FAMILY,
            )
        )
    return cases


def group_keys(group: str) -> list[str] | None:
    """The architecture names a ``--cases`` group key stands for (``None``: not a group).  Raises
    TBNError where the real-architecture cases cannot run (:func:`unavailable`)."""
    if group not in GROUPS:
        return None
    why = unavailable()
    if why:
        raise TBNError(f"--cases {group}: the real-architecture cases need {why}")
    from benchmarks import architectures as arch

    if group == "real":
        return list(arch.ALL)
    if group == "real_eleven":
        return list(arch.ARCHITECTURES)
    if group == "held_out":
        return list(arch.HELD_OUT)
    return None


def _builder(name: str, small: bool):
    def build(batch: int):
        import onnx

        from benchmarks import architectures as arch

        with tempfile.TemporaryDirectory(prefix="tbn-bench-real-") as d:
            path = Path(d) / f"{name}-batch{batch}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arch.benchmark_model(name, path, batch=batch, seed=SEED, small=small)
            return onnx.load(str(path))

    return build


def _input_of(model, seed: int) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(dims, dtype=np.float32)


# ------------------------------------------------------------------------------------ int8
def quantize_int8(
    model_bytes: bytes, input_name: str, shape: list[int], workdir: Path
) -> tuple[bytes | None, dict]:
    """onnxruntime's static int8 quantization of the model, as a user does it: ``quant_pre_process``
    then ``quantize_static`` (defaults; QDQ, else QOperator) calibrated on
    :data:`CALIBRATION_SAMPLES` standard-normal inputs of ``shape``.  Returns the quantized model's
    bytes (``None`` where it could not be made) and what was done (``format``, the settings, or
    ``status`` / ``reason``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = [np.random.default_rng(100 + i) for i in range(CALIBRATION_SAMPLES)]
            self._it = iter([{input_name: r.standard_normal(shape, dtype=np.float32)} for r in rng])

        def get_next(self):
            return next(self._it, None)

    src = workdir / "fp32.onnx"
    src.write_bytes(model_bytes)
    pre = workdir / "pre.onnx"
    info: dict = {
        "calibration": f"{CALIBRATION_SAMPLES} standard-normal inputs, MinMax",
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "per_channel": False,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre))
        info["pre_process"] = "quant_pre_process (shape inference, onnxruntime graph optimisations)"
    except Exception as e:
        pre = src
        info["pre_process"] = f"skipped: quant_pre_process failed ({type(e).__name__}: {_short(e)})"
    failures = []
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        out = workdir / f"int8-{fmt.name}.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(pre), str(out), Reader(), quant_format=fmt)
            data = out.read_bytes()
            sess = harness.ort_session(data, 1)
            sess.run(None, {input_name: np.zeros(shape, np.float32)})
        except Exception as e:
            failures.append(f"{fmt.name}: {type(e).__name__}: {_short(e)}")
            continue
        info["format"] = fmt.name
        if failures:
            info["failed_first"] = failures
        return data, info
    info.update(status="not quantized", reason="; ".join(failures))
    return None, info


def _short(e: BaseException, n: int = 300) -> str:
    return " ".join(str(e).split())[:n]


# ------------------------------------------------------------------------------------ a row
def run_real(case, batch: int, settings: Settings, threads: int, log: Log) -> tuple[dict, dict]:
    """Export, compile, check and time one architecture at one batch.  Returns the report row (per
    variant: timing of :func:`benchmarks.harness.measure`, ``rel_err_vs_onnxruntime``,
    ``compile_s``; or ``status`` and ``reason`` where it could not be built) and the model's
    description (parameters, tiling, weight bytes)."""
    import tbn_tvm
    from benchmarks import architectures as arch

    label = f"real {case.key} batch {batch}"
    small = settings.quick
    row: dict = {"model": case.key, "batch": batch, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="tbn-bench-real-") as d:
        work = Path(d)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tbnify's "kept at p=1" notes; the plan is in the report
            bm = arch.benchmark_model(case.key, work / "model.onnx", batch=batch, seed=SEED, small=small)
        row["export_s"] = round(time.perf_counter() - t0, 2)
        model_bytes = bm.path.read_bytes()
        x = bm.input
        row["input_shape"] = list(x.shape)
        sess = harness.ort_session(model_bytes, threads)
        name = sess.get_inputs()[0].name
        feed = {name: x}
        ref = sess.run(None, feed)
        first: dict[str, float] = {ORT: _second_call(lambda: sess.run(None, feed))}
        timers: dict[str, Timer] = {ORT: harness.ort_timer(sess, feed)}
        row["variants"][ORT] = {"rel_err_vs_onnxruntime": 0.0}

        t0 = time.perf_counter()
        q_bytes, q_info = quantize_int8(model_bytes, name, list(x.shape), work)
        row["int8"] = {**q_info, "quantize_s": round(time.perf_counter() - t0, 2)}
        if q_bytes is None:
            row["variants"][ORT_INT8] = {"status": "not quantized", "reason": q_info["reason"]}
            log(f"{label}: {ORT_INT8}: not quantized: {q_info['reason']}")
        else:
            qsess = harness.ort_session(q_bytes, threads)
            qy = qsess.run(None, feed)
            first[ORT_INT8] = _second_call(lambda: qsess.run(None, feed))
            timers[ORT_INT8] = harness.ort_timer(qsess, {qsess.get_inputs()[0].name: x})
            err = max(harness.rel_err(a, b) for a, b in zip(qy, ref))
            row["variants"][ORT_INT8] = {"rel_err_vs_onnxruntime": err, "format": q_info["format"]}
            log(f"{label}: {ORT_INT8} ({q_info['format']}): max rel. error vs fp32 {err:.1e}")

        builds = [(TBN, {})]
        if settings.tune_trials:
            builds.append((TBN_TUNED, {"tuning_db": _tune(case, bm.path, batch, settings, log, label)}))
            row["tuning"] = {"trials": settings.tune_trials}
        compiled = []
        model_entry = _model_entry(case, bm)
        for vname, opts in builds:
            t0 = time.perf_counter()
            try:
                cm = tbn_tvm.compile(str(bm.path), "llvm", **opts)
            except Exception as e:  # a compiler failure is a row of the table, not the end of the run
                reason = f"{type(e).__name__}: {_short(e, 500)}"
                row["variants"][vname] = {"status": "not built", "reason": reason}
                log(f"{label}: {vname}: not built: {reason}")
                continue
            compile_s = time.perf_counter() - t0
            compiled.append(cm)
            y = cm.run(x)
            first[vname] = _second_call(lambda: cm.run(x))  # noqa: B023 - called here
            ys = [np.asarray(v) for v in y.values()] if isinstance(y, dict) else [np.asarray(y)]
            err = max(harness.rel_err(a, b) for a, b in zip(ys, ref))
            row["variants"][vname] = {"compile_s": round(compile_s, 2), "rel_err_vs_onnxruntime": err}
            timers[vname] = harness.tvm_timer(cm, x)
            if vname == TBN:
                rep = cm.report()
                row["target"] = ", ".join(f"{k}={v}" for k, v in cm.target.tvm_target.items())
                model_entry.update(
                    fp32_bytes=rep["total"]["fp32_bytes"],
                    weight_bytes=rep["total"]["weight_bytes"],
                    compression=rep["total"]["compression"],
                    formats=_formats(rep["layers"]),
                )
            log(f"{label}: {vname} compiled in {compile_s:.1f} s, max rel. error vs onnxruntime {err:.1e}")

        order = [n for n in VARIANTS if n in timers]
        timed = harness.measure(
            {n: timers[n] for n in order}, first, settings, lambda m: log(f"{label}: {m}")
        )
        for vname in order:
            row["variants"][vname].update(timed[vname])
            t = timed[vname]
            why = "" if t["trusted"] else f"; not measured enough: {', '.join(t['untrusted_reasons'])}"
            log(f"{label}: {vname} median {t['median_s'] * 1e3:.4g} ms ({t['rounds']} x {t['number']}{why})")
        v = row["variants"]
        row["speedup"], row["speedup_trusted"] = {}, {}
        for other in (ORT, ORT_INT8):  # the tuned build's ratios: report.pair_ratio_text
            if TBN in timed and other in timed:
                row["speedup"][f"vs_{other}"] = v[other]["median_s"] / v[TBN]["median_s"]
                row["speedup_trusted"][f"vs_{other}"] = bool(v[other]["trusted"] and v[TBN]["trusted"])
        built = [n for n in (TBN, TBN_TUNED) if "rel_err_vs_onnxruntime" in v.get(n, {})]
        from benchmarks.suite import REL_TOLERANCE

        row["outputs_within_tolerance"] = all(v[n]["rel_err_vs_onnxruntime"] <= REL_TOLERANCE for n in built)
        for cm in compiled:
            cm.close()
        del compiled, timers
    gc.collect()
    return row, model_entry


def _second_call(call) -> float:
    """Seconds of one more call after the checked one (the first call of a build pays one-off
    loading costs of seconds, which would make :func:`benchmarks.harness.measure` plan one call
    per round)."""
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _tune(case, path: Path, batch: int, settings: Settings, log: Log, label: str) -> Path:
    """Tune the model for the default host target into ``settings.tuning_dir`` (kept: a re-run
    resumes it); returns the database folder."""
    from tbn_tvm.schedules.tuning import tune

    root = (
        Path(settings.tuning_dir) if settings.tuning_dir else Path(tempfile.mkdtemp(prefix="tbn-bench-tune-"))
    )
    db = root / f"real-{case.key}-batch{batch}"
    t0 = time.perf_counter()
    res = tune(
        str(path),
        "llvm",
        trials=settings.tune_trials,
        db=db,
        progress=False,
        on_message=lambda m: log(f"{label}: tuning: {m}"),
    )
    log(f"{label}: tuned {res.trials_run} trials in {time.perf_counter() - t0:.0f} s")
    return db


def _formats(layers: list[dict]) -> dict[str, int]:
    """How many of the compiler's layers it found tiled, binary or dense (fp32)."""
    out: dict[str, int] = {}
    for la in layers:
        out[la.get("format", "?")] = out.get(la.get("format", "?"), 0) + 1
    return out


def _model_entry(case, bm) -> dict:
    from benchmarks import architectures as arch

    spec = arch.ALL[case.key]
    return {
        "key": case.key,
        "title": case.title,
        "source": spec.source,
        "held_out": spec.held_out,
        "generator": case.generator,
        "input_shape": [1, *bm.input.shape[1:]],
        "parameters": bm.parameters,
        "tbnify": dict(bm.tbnify),
        "tbnify_layers": bm.layer_counts,
        "onnx_bytes": bm.path.stat().st_size,
    }


# ------------------------------------------------------------------------------------ summary figures
def geomean(values: list[float]) -> float | None:
    """Geometric mean (``None`` for no values).

    >>> round(geomean([0.5, 2.0]), 6), geomean([])
    (1.0, None)
    """
    return float(np.exp(np.mean(np.log(values)))) if values else None


def geomeans(report: dict) -> list[dict]:
    """Geometric means of tbn-tvm's speed-ups over onnxruntime fp32 and int8, per batch and
    group (the eleven, the held-out trio), over the rows whose ratio is trusted; with how many
    rows that is and how many were left out."""
    from benchmarks import architectures as arch

    out = []
    rows = report.get("real", [])
    for batch in sorted({r["batch"] for r in rows}):
        for group, names in (("eleven", arch.ARCHITECTURES), ("held out", arch.HELD_OUT)):
            sel = [r for r in rows if r["batch"] == batch and r["model"] in names]
            if not sel:
                continue
            item = {"batch": batch, "group": group, "rows": len(sel)}
            for other in (ORT, ORT_INT8):
                key = f"vs_{other}"
                ok = [r["speedup"][key] for r in sel if r.get("speedup_trusted", {}).get(key)]
                item[key] = geomean(ok)
                item[f"{key}_rows"] = len(ok)
                item[f"{key}_wins"] = sum(1 for v in ok if v >= 1.0)
            out.append(item)
    return out


#: Issue 19's acceptance thresholds (the default untuned build over onnxruntime fp32, batch 1).
ISSUE19_EACH = 1.0
ISSUE19_HELD_OUT_GEOMEAN = 1.5


def issue19_figures(report: dict) -> list[dict]:
    """Issue 19's acceptance figures next to this run's (a report, not a test): every
    architecture ≥ 1.0× onnxruntime fp32 at batch 1 with outputs within 1e-5, the held-out
    trio's geometric mean ≥ 1.5×."""
    from benchmarks import architectures as arch
    from benchmarks.suite import REL_TOLERANCE

    rows = {r["model"]: r for r in report.get("real", []) if r["batch"] == 1}
    if not rows or report["meta"].get("quick"):
        return []
    items = []
    for name in arch.ALL:
        r = rows.get(name)
        if r is None:
            continue
        v = r["variants"].get(TBN, {})
        ratio = r.get("speedup", {}).get(f"vs_{ORT}")
        trusted = r.get("speedup_trusted", {}).get(f"vs_{ORT}", False)
        err = v.get("rel_err_vs_onnxruntime")
        if ratio is None:
            measured, ok = v.get("reason", "not built"), False
        else:
            measured = f"{ratio:.2f}×" + ("" if trusted else " (not measured enough)")
            measured += f", error {err:.1e}"
            ok = trusted and ratio >= ISSUE19_EACH and err <= REL_TOLERANCE
        items.append(
            {
                "criterion": f"{name}{' (held out)' if name in arch.HELD_OUT else ''}: batch 1 over onnxruntime fp32",
                "required": f">= {ISSUE19_EACH:g}×, error <= {REL_TOLERANCE:g}",
                "measured": measured,
                "pass": ok,
            }
        )
    g = next((x for x in geomeans(report) if x["batch"] == 1 and x["group"] == "held out"), None)
    if g is not None:
        complete = g[f"vs_{ORT}_rows"] == len(arch.HELD_OUT)
        gm = g[f"vs_{ORT}"]
        items.append(
            {
                "criterion": "held-out trio: geometric mean at batch 1 over onnxruntime fp32",
                "required": f">= {ISSUE19_HELD_OUT_GEOMEAN:g}×",
                "measured": "–" if gm is None else f"{gm:.2f}× over {g[f'vs_{ORT}_rows']} of 3 trusted rows",
                "pass": bool(complete and gm is not None and gm >= ISSUE19_HELD_OUT_GEOMEAN),
            }
        )
    return items
