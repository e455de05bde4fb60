"""The benchmark suite's runner (``python -m benchmarks`` in a checkout, or ``tbn-tvm bench``).

One run measures, on the same ONNX files, as ratios:

* host CPU, batch 1 and 32: tbn-tvm against onnxruntime (fp32, dense weights) and against TVM's
  own fp32 build of the dense model (``compress=False``, same pipeline), plus tbn-tvm without
  row reuse (``reuse_rows=False``) at batch 1 as an ablation; every output is checked against
  onnxruntime;
* Cortex-M4 on QEMU: instructions per inference, flash and RAM of tbn-tvm against the dense fp32
  model compiled by the same path (where it fits the board), and the authors' MNIST MLP on all
  10,000 MNIST test images;

and writes ``report.md``, ``report.json`` and ``speedup.png``.  The ONNX generators live in the
repository's ``benchmarks/models.py`` (not part of the installed package); :func:`load_models`
finds them.  Timings are medians over rounds (see :class:`Settings`); nothing here asserts speed.

>>> Settings.for_mode(quick=True).rounds
3
>>> rel_err(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 2e-6]))  # max |a - b| / max |b|
1e-06
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np

from tbn_tvm import __version__
from tbn_tvm.errors import TBNError

#: Instructions per inference of the paper authors' own float C implementation of their MNIST
#: MLP, on QEMU Cortex-M4 with gcc 12 -O2, as stated in the project's issue 4.  The one figure in
#: the report that is not measured by this suite (their code is not part of tbn-tvm).
AUTHORS_INSTRUCTIONS = 2_645_000
AUTHORS_SOURCE = "issue 4 (the authors' float C loop, QEMU Cortex-M4, gcc 12 -O2; not run here)"

#: Issue 4's acceptance figures (the report checks the measured values against them).
ACCEPT_MCU_INSTRUCTIONS = 260_000
ACCEPT_MCU_WEIGHT_BYTES = 3_340
ACCEPT_HOST_VS_ORT = 4.0
ACCEPT_HOST_VS_TVM = 8.0
ACCEPT_REL_ERR = 1e-5

TBN = "tbn-tvm"
TBN_NO_REUSE = "tbn-tvm-no-row-reuse"
TVM_FP32 = "tvm-fp32"
ORT = "onnxruntime-fp32"
HOST_VARIANTS = (TBN, TBN_NO_REUSE, TVM_FP32, ORT)
VARIANT_TITLES = {
    TBN: "tbn-tvm",
    TBN_NO_REUSE: "tbn-tvm, no row reuse",
    TVM_FP32: "TVM fp32",
    ORT: "onnxruntime fp32",
}


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """How much to measure.

    Each host measurement runs ``number`` calls per round, ``number`` chosen so that a round
    lasts about ``round_s``; the number of rounds is ``rounds``, cut down (never below
    ``min_rounds``) so that one measurement takes about ``budget_s``.  The median over rounds
    is reported."""

    quick: bool
    rounds: int
    min_rounds: int
    round_s: float
    budget_s: float
    settle_s: float
    passes: int
    batches: tuple[int, ...]
    ablation_batches: tuple[int, ...]
    mnist_samples: int  # MNIST test images run through tbn-tvm on QEMU
    mnist_dense_samples: int  # ... and through the dense build (its count is data-independent)
    mcu_samples: int  # random inputs for the other models on QEMU

    @classmethod
    def for_mode(cls, quick: bool, rounds: int | None = None) -> Settings:
        if quick:
            s = cls(True, 3, 3, 0.01, 0.3, 0.1, 1, (1, 4), (), 200, 10, 1)
        else:
            s = cls(False, 15, 3, 0.05, 6.0, 0.3, 3, (1, 32), (1,), 10_000, 200, 2)
        if rounds is not None:
            if rounds < 1:
                raise TBNError("--rounds must be at least 1")
            s = cls(**{**asdict(s), "rounds": rounds, "min_rounds": min(s.min_rounds, rounds)})
        return s


# ------------------------------------------------------------------------------------ the cases
@dataclass
class Case:
    """One benchmark model: ``build(batch)`` returns its ONNX model with that batch size."""

    key: str
    title: str
    build: Callable[[int], object]
    input_kind: str
    batches: tuple[int, ...]
    cortex_m: bool = True
    generator: str = ""  # how the model is made, for the report
    short: str = ""  # a label for the plot

    def sample(self, models: ModuleType, model, seed: int = 1) -> np.ndarray:
        return models.sample_input(self.input_kind, model, seed)


def suite(models: ModuleType, settings: Settings) -> list[Case]:
    """The models of issue 4 (full run), or scaled-down versions of them (``--quick``)."""
    b = settings.batches
    cases = [
        Case(
            "authors_mnist_mlp",
            "authors' MNIST MLP 784-128-10, fc1 tiled p=4",
            models.authors_mlp,
            "authors_mlp",
            b,
            generator="models.authors_mlp(batch)",
            short="MNIST MLP",
        )
    ]
    if settings.quick:
        w = 256
        cases.append(
            Case(
                "wide_mlp_p8",
                f"MLP {w}-{w}-{w}-10, hidden layers tiled p=8 (quick size)",
                lambda n: models.wide_mlp(8, n, width=w),
                "wide_mlp",
                (1,),
                cortex_m=False,
                generator=f"models.wide_mlp(p=8, batch, width={w})",
                short=f"MLP{w} p8",
            )
        )
        cases.append(
            Case(
                "tiled_resnet",
                "ResNet-style CNN 3x8x8, 2 blocks (quick size)",
                lambda n: models.tiled_resnet(n, image=8, stem=8, stages=((8, 1, 4), (16, 2, 8))),
                "tiled_resnet",
                (1,),
                cortex_m=False,
                short="ResNet CNN",
                generator="models.tiled_resnet(batch, image=8, stem=8, stages=((8,1,4),(16,2,8)))",
            )
        )
        return cases
    for p in (4, 8):
        cases.append(
            Case(
                f"wide_mlp_p{p}",
                f"MLP 4096-4096-4096-10, hidden layers tiled p={p}",
                lambda n, p=p: models.wide_mlp(p, n),
                "wide_mlp",
                b,
                generator=f"models.wide_mlp(p={p}, batch)",
                short=f"MLP4096 p{p}",
            )
        )
    cases.append(
        Case(
            "tiled_resnet",
            "ResNet-style CNN 3x32x32, 3 residual blocks (p=4,4,8)",
            models.tiled_resnet,
            "tiled_resnet",
            b,
            generator="models.tiled_resnet(batch)",
            short="ResNet CNN",
        )
    )
    return cases


def load_models(path: str | os.PathLike | None = None) -> ModuleType:
    """The ONNX generators: ``path``, else ``benchmarks/models.py`` of the working directory or
    of the checkout this package runs from."""
    candidates = (
        [Path(path)]
        if path
        else [
            Path.cwd() / "benchmarks" / "models.py",
            Path(__file__).resolve().parents[1] / "benchmarks" / "models.py",
        ]
    )
    for cand in candidates:
        if cand.is_file():
            spec = importlib.util.spec_from_file_location("tbn_bench_models", cand)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                raise TBNError(
                    f"{cand}: cannot load the benchmark models ({type(e).__name__}: {e})"
                ) from None
            module.__bench_path__ = cand
            return module
    if path:
        raise TBNError(f"{path}: no such file", hint="pass the benchmarks/models.py of a tbn-tvm checkout")
    raise TBNError(
        "the benchmark models (benchmarks/models.py) are not here",
        hint="run from a tbn-tvm source checkout, or pass --models PATH",
    )


# ------------------------------------------------------------------------------------ helpers
def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    """``max |y - ref| / max |ref|``: the error relative to the output's scale."""
    y = np.asarray(y, np.float64).reshape(np.shape(ref))
    ref = np.asarray(ref, np.float64)
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(y - ref).max() / scale)


class _Log:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[bench {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def _pkg_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of everything a figure depends on."""
    return {
        "tbn-tvm": __version__,
        "apache-tvm": _pkg_version("apache-tvm"),
        "apache-tvm-ffi": _pkg_version("apache-tvm-ffi"),
        "onnxruntime": _pkg_version("onnxruntime"),
        "onnx": _pkg_version("onnx"),
        "numpy": np.__version__,
        "matplotlib": _pkg_version("matplotlib"),
        "python": platform.python_version(),
        "arm-none-eabi-gcc": _first_line(["arm-none-eabi-gcc", "--version"]),
        "qemu-system-arm": _first_line(["qemu-system-arm", "--version"]),
    }


def machine() -> dict:
    """CPU model and features, cores, memory, OS."""
    info: dict = {"os": platform.platform(), "arch": platform.machine()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and "cpu_model" not in info:
            info["cpu_model"] = value.strip()
        if key.strip() == "flags" and "simd" not in info:
            flags = set(value.split())
            info["simd"] = [
                f for f in ("avx512f", "avx512bw", "avx512vl", "avx2", "fma", "neon") if f in flags
            ]
    info.setdefault("cpu_model", platform.processor() or "unknown")
    info["logical_cpus"] = os.cpu_count()
    info["usable_cpus"] = _usable_cpus()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_bytes"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return info


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _git_revision(where: Path) -> str | None:
    rev = _first_line(["git", "-C", str(where), "rev-parse", "--short", "HEAD"])
    if not rev or " " in rev:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return rev + ("+local changes" if dirty else "")


# ------------------------------------------------------------------------------------ timing
Timer = Callable[[int, int], list[float]]  # (number, repeat) -> seconds per call, one per repeat


def _tvm_timer(cm, x: np.ndarray) -> Timer:
    return lambda number, repeat: cm.time(x, number=number, repeat=repeat)


def _ort_timer(sess, feed: dict) -> Timer:
    def timer(number: int, repeat: int) -> list[float]:
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                sess.run(None, feed)
            out.append((time.perf_counter() - t0) / number)
        return out

    return timer


def measure(
    timers: dict[str, Timer],
    first_calls: dict[str, float],
    settings: Settings,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, dict]:
    """Time every variant: ``rounds`` rounds of ``number`` calls each, spread over ``passes``
    passes through the variants (so that load from other work on the machine, which comes and
    goes, meets every variant alike).  Variants run one after the other, each after a pause of
    ``settle_s`` that lets the other runtime's spinning worker threads go idle (onnxruntime's and
    TVM's thread pools slow each other down when their calls alternate).  A variant slower than
    a second per call runs all its rounds in the first pass.  Returns per variant the median and
    every sample (seconds per call)."""
    plans: dict[str, tuple[int, int, float, bool]] = {}
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for pass_no in range(settings.passes):
        for name, timer in timers.items():
            if pass_no == 0:
                time.sleep(settings.settle_s)
                est = max(_estimate(timer, first_calls[name]), 1e-7)  # also the warm-up
                number = max(1, math.ceil(settings.round_s / est))
                rounds = int(
                    min(settings.rounds, max(settings.min_rounds, settings.budget_s // (number * est)))
                )
                slow = number == 1 and est >= 1.0
                plans[name] = (number, rounds, est, slow)
                log(f"timing {name}: {rounds} rounds x {number} calls of ~{est * 1e3:.3g} ms")
                if slow:
                    samples[name] = [float(v) for v in timer(1, rounds)]
                    continue
            number, rounds, est, slow = plans[name]
            share = rounds // settings.passes + (1 if pass_no < rounds % settings.passes else 0)
            if slow or share == 0:
                continue
            if pass_no > 0:
                time.sleep(settings.settle_s)
                timer(1, 1)  # warm-up
            samples[name].extend(float(v) for v in timer(number, share))
    out = {}
    for name, values in samples.items():
        number, rounds, est, _ = plans[name]
        out[name] = {
            "median_s": float(np.median(values)),
            "min_s": float(np.min(values)),
            "max_s": float(np.max(values)),
            "rounds": len(values),
            "number": number,
            "estimate_s": est,
            "samples_s": values,
        }
    return out


def _estimate(timer: Timer, first_call_s: float) -> float:
    """Seconds per call, to plan the rounds: the first (checked) call when it took seconds (TVM's
    time evaluator makes an untimed warm-up call anyway), else a short timed run, which is also
    the warm-up (the first call paid one-off set-up costs)."""
    if first_call_s >= 2.0:
        return first_call_s
    est = float(timer(1, 1)[0])
    if est < 1e-3:
        est = float(np.median(timer(max(1, int(1e-3 / max(est, 1e-7))), 3)))
    return est


# ------------------------------------------------------------------------------------ host
def _ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def run_host(case: Case, batch: int, models: ModuleType, settings: Settings, threads: int, log: _Log) -> dict:
    """Compile and time every host variant of one model at one batch size."""
    import tbn_tvm

    label = f"host {case.key} batch {batch}"
    model = case.build(batch)
    x = case.sample(models, model)
    model_bytes = model.SerializeToString()
    sess = _ort_session(model_bytes, threads)
    feed = {model.graph.input[0].name: x}
    t0 = time.perf_counter()
    ref = sess.run(None, feed)[0]
    first = {ORT: time.perf_counter() - t0}
    timers: dict[str, Timer] = {ORT: _ort_timer(sess, feed)}
    row: dict = {"model": case.key, "batch": batch, "input_shape": list(x.shape), "variants": {}}
    builds = [(TBN, {}), (TVM_FP32, {"compress": False})]
    if batch in settings.ablation_batches:
        builds.insert(1, (TBN_NO_REUSE, {"reuse_rows": False}))
    compiled = {}
    for name, opts in builds:
        t0 = time.perf_counter()
        cm = tbn_tvm.compile(model, "llvm", mcpu="native", **opts)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = cm.run(x)
        first[name] = time.perf_counter() - t0
        err = rel_err(y, ref)
        rep = cm.report()
        row["variants"][name] = {
            "compile_s": round(compile_s, 2),
            "rel_err_vs_onnxruntime": err,
            "weight_bytes_in_build": rep["total"]["built_constant_bytes"],
        }
        if name == TBN:
            row["target"] = ", ".join(f"{k}={v}" for k, v in cm.target.tvm_target.items())
            row["layers"] = rep["layers"]
            row["total"] = rep["total"]
        compiled[name] = cm
        timers[name] = _tvm_timer(cm, x)
        log(f"{label}: {name} compiled in {compile_s:.1f} s, max rel. error vs onnxruntime {err:.1e}")
    row["variants"][ORT] = {"rel_err_vs_onnxruntime": 0.0}
    order = [n for n in HOST_VARIANTS if n in timers]
    timed = measure({n: timers[n] for n in order}, first, settings, lambda msg: log(f"{label}: {msg}"))
    for name in order:
        row["variants"][name].update(timed[name])
        t = timed[name]
        log(
            f"{label}: {name} median {t['median_s'] * 1e3:.4g} ms per call "
            f"({t['rounds']} rounds x {t['number']} calls)"
        )
    tbn = row["variants"][TBN]["median_s"]
    row["speedup"] = {f"vs_{n}": row["variants"][n]["median_s"] / tbn for n in order if n != TBN}
    best = row["variants"][TBN]["min_s"]
    row["speedup_fastest_rounds"] = {f"vs_{n}": row["variants"][n]["min_s"] / best for n in order if n != TBN}
    del compiled, timers, sess, model, model_bytes
    gc.collect()
    return row


# ------------------------------------------------------------------------------------ cortex-m
def _board():
    from tbn_tvm.targets.cortex_m import get_board

    return get_board("cortex-m4")


def _mcu_build(
    model, compress: bool, samples: np.ndarray, log: _Log, label: str
) -> tuple[dict, np.ndarray | None]:
    """Compile for cortex-m4, run ``samples`` (``[N, *input_shape]``) on QEMU counting
    instructions.  Returns the figures and the outputs (``None`` when the build failed)."""
    import tbn_tvm

    t0 = time.perf_counter()
    try:
        cm = tbn_tvm.compile(model, "cortex-m4", compress=compress)
    except TBNError as e:
        log(f"{label}: not built: {e}")
        return {"status": "not built", "reason": " ".join(str(e).split())}, None
    compile_s = time.perf_counter() - t0
    y = cm.run(samples, count_instructions=True)
    stats = cm.last_run_stats
    rep = cm.report()
    fig = {
        "status": "ok",
        "board": rep.get("board"),
        "qemu_machine": rep.get("qemu_machine"),
        "instructions_per_inference": stats.get("instructions_per_inference"),
        "instructions_min": stats.get("instructions_min"),
        "instructions_max": stats.get("instructions_max"),
        "flash_bytes": rep["flash_bytes"],
        "ram_bytes": rep["ram_bytes"],
        "weight_bytes": rep["library_weight_bytes"],
        "arena_bytes": rep.get("arena_bytes"),
        "stack_peak_bytes": stats.get("stack_peak_bytes"),
        "samples": int(len(samples)),
        "compile_s": round(compile_s, 2),
        "qemu_s": round(stats["seconds"], 2),
    }
    ins = fig["instructions_per_inference"]
    log(
        f"{label}: {ins:,.0f} instructions per inference, flash {fig['flash_bytes']:,} B, RAM "
        f"{fig['ram_bytes']:,} B ({len(samples)} samples, {stats['seconds']:.1f} s on QEMU)"
    )
    return fig, np.asarray(y).reshape(len(samples), -1)


def _ort_outputs(model, x: np.ndarray, threads: int) -> np.ndarray:
    sess = _ort_session(model.SerializeToString(), threads)
    name = model.graph.input[0].name
    return np.concatenate([sess.run(None, {name: x[i]})[0].reshape(1, -1) for i in range(len(x))])


def run_cortex_m(case: Case, models: ModuleType, settings: Settings, threads: int, log: _Log) -> dict:
    """tbn-tvm and the dense fp32 build of one model (batch 1) on QEMU Cortex-M4."""
    model = case.build(1)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    out: dict = {"model": case.key, "builds": {}}
    board = _board()
    mnist = case.key == "authors_mnist_mlp"
    if mnist:
        from tbn_tvm import zoo
        from tbn_tvm.datasets import load_mnist_test

        images, labels = load_mnist_test()
        images, labels = images[: settings.mnist_samples], labels[: settings.mnist_samples]
        x = images.reshape(len(images), *shape).astype(np.float32)
    else:
        x = np.stack([case.sample(models, model, seed=1 + i) for i in range(settings.mcu_samples)])
    ref = _ort_outputs(model, x, threads)
    fig, y = _mcu_build(model, True, x, log, f"cortex-m4 {case.key} {TBN}")
    if y is not None:
        fig["rel_err_vs_onnxruntime"] = rel_err(y, ref)
        fig["predictions_equal_onnxruntime"] = float((y.argmax(1) == ref.argmax(1)).mean())
    out["builds"][TBN] = fig
    if mnist and y is not None:
        numpy_ref = zoo.authors_mnist_mlp_reference(images)
        out["mnist"] = {
            "images": int(len(images)),
            "accuracy": float((y.argmax(1) == labels).mean()),
            "predictions_equal_numpy_reference": int((y.argmax(1) == numpy_ref.argmax(1)).sum()),
            "predictions_equal_onnxruntime": int((y.argmax(1) == ref.argmax(1)).sum()),
            "numpy_reference": "tbn_tvm.zoo.authors_mnist_mlp_reference (from the authors' tile bits and alphas)",
        }
    # the dense build by the same path, where its fp32 weights can fit the board's flash
    fp32_bytes = int(sum(4 * int(np.prod(t.dims)) for t in model.graph.initializer))
    if fp32_bytes > board.flash_bytes:
        reason = (
            f"does not fit: {fp32_bytes:,} bytes of fp32 weights > {board.flash_bytes:,} bytes of flash "
            f"on {board.name} (not attempted)"
        )
        log(f"cortex-m4 {case.key} {TVM_FP32}: {reason}")
        out["builds"][TVM_FP32] = {"status": "does not fit", "reason": reason}
    else:
        n = settings.mnist_dense_samples if mnist else settings.mcu_samples
        fig, y = _mcu_build(model, False, x[:n], log, f"cortex-m4 {case.key} {TVM_FP32}")
        if y is not None:
            fig["rel_err_vs_onnxruntime"] = rel_err(y, ref[:n])
            fig["predictions_equal_onnxruntime"] = float((y.argmax(1) == ref[:n].argmax(1)).mean())
        out["builds"][TVM_FP32] = fig
    tbn, dense = out["builds"][TBN], out["builds"][TVM_FP32]
    if tbn.get("status") == "ok" and dense.get("status") == "ok":
        out["fewer_instructions_than_dense"] = (
            dense["instructions_per_inference"] / tbn["instructions_per_inference"]
        )
        out["smaller_flash_than_dense"] = dense["flash_bytes"] / tbn["flash_bytes"]
    if mnist and tbn.get("status") == "ok":
        out["authors_instructions_per_inference"] = AUTHORS_INSTRUCTIONS
        out["authors_source"] = AUTHORS_SOURCE
        out["fewer_instructions_than_authors"] = AUTHORS_INSTRUCTIONS / tbn["instructions_per_inference"]
    gc.collect()
    return out


# ------------------------------------------------------------------------------------ verdicts
def acceptance(report: dict) -> list[dict]:
    """Issue 4's acceptance figures next to the measured ones (a report, not a test)."""
    items = []
    mcu = next((r for r in report["cortex_m"] if r["model"] == "authors_mnist_mlp"), None)
    if mcu and mcu["builds"][TBN].get("status") == "ok":
        b = mcu["builds"][TBN]
        mn = mcu.get("mnist", {})
        items.append(
            {
                "criterion": "MNIST MLP on QEMU Cortex-M4: instructions per inference",
                "required": f"<= {ACCEPT_MCU_INSTRUCTIONS:,}",
                "measured": b["instructions_per_inference"],
                "pass": b["instructions_per_inference"] <= ACCEPT_MCU_INSTRUCTIONS,
            }
        )
        n = mn.get("images", 0)
        same = min(
            mn.get("predictions_equal_numpy_reference", -1), mn.get("predictions_equal_onnxruntime", -1)
        )
        items.append(
            {
                "criterion": "MNIST MLP on QEMU Cortex-M4: same predictions on the 10,000 test images "
                "(as the numpy reference and onnxruntime)",
                "required": "10,000 of 10,000",
                "measured": f"{same:,} of {n:,}",
                "pass": n == 10_000 and same == n,
            }
        )
        items.append(
            {
                "criterion": "MNIST MLP on QEMU Cortex-M4: weight bytes in flash",
                "required": f"<= {ACCEPT_MCU_WEIGHT_BYTES:,}",
                "measured": b["weight_bytes"],
                "pass": b["weight_bytes"] <= ACCEPT_MCU_WEIGHT_BYTES,
            }
        )
    host = next((r for r in report["host"] if r["model"] == "wide_mlp_p8" and r["batch"] == 1), None)
    if host:
        sp, v = host["speedup"], host["variants"]
        items.append(
            {
                "criterion": "host batch 1, MLP p=8: speed-up over onnxruntime fp32",
                "required": f">= {ACCEPT_HOST_VS_ORT:g}x",
                "measured": sp[f"vs_{ORT}"],
                "pass": sp[f"vs_{ORT}"] >= ACCEPT_HOST_VS_ORT,
            }
        )
        items.append(
            {
                "criterion": "host batch 1, MLP p=8: speed-up over TVM's fp32 build",
                "required": f">= {ACCEPT_HOST_VS_TVM:g}x",
                "measured": sp[f"vs_{TVM_FP32}"],
                "pass": sp[f"vs_{TVM_FP32}"] >= ACCEPT_HOST_VS_TVM,
            }
        )
        err = v[TBN]["rel_err_vs_onnxruntime"]
        items.append(
            {
                "criterion": "host batch 1, MLP p=8: max relative error of the outputs vs onnxruntime",
                "required": f"<= {ACCEPT_REL_ERR:g}",
                "measured": err,
                "pass": err <= ACCEPT_REL_ERR,
            }
        )
    if report["meta"]["quick"]:
        for item in items:
            item["note"] = (
                "quick mode: scaled-down models and sample counts, not the acceptance configuration"
            )
    return items


# ------------------------------------------------------------------------------------ output
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


def render_markdown(report: dict) -> str:
    """The human-readable report."""
    meta, mach, ver = report["meta"], report["machine"], report["versions"]
    cmd = meta["command"]
    titles = {m["key"]: m["title"] for m in report["models"]}
    lines = [
        "# tbn-tvm benchmark report" + (" (quick smoke run)" if meta["quick"] else ""),
        "",
        f"Every figure below was produced by one run of **`{cmd}`** "
        f"(tbn-tvm {ver['tbn-tvm']}{', git ' + meta['git'] if meta.get('git') else ''}, "
        f"{meta['started']}, {meta['wall_s']:.0f} s).  The only figure not measured by it is the authors' "
        f"{AUTHORS_INSTRUCTIONS / 1e6:.3f} M instructions per inference, quoted from {AUTHORS_SOURCE}.",
        "",
    ]
    if meta["quick"]:
        lines += [
            "> Quick mode: scaled-down models, few rounds, few samples. A smoke test of the suite; "
            "its numbers are not the benchmark.",
            "",
        ]
    acc = report["acceptance"]
    if acc:
        lines += [
            "## Acceptance figures of issue 4",
            "",
            f"Produced by `{cmd}`; checked here against the issue's thresholds (not a CI test).",
            "",
            "| criterion | required | measured | met |",
            "|---|---|---|---|",
        ]
        for a in acc:
            m = a["measured"]
            if isinstance(m, float) and a["criterion"].endswith("error of the outputs vs onnxruntime"):
                shown = f"{m:.1e}"
            elif isinstance(m, float) and "speed-up" in a["criterion"]:
                shown = _ratio(m)
            elif isinstance(m, int | float):
                shown = _int(m)
            else:
                shown = str(m)
            lines.append(
                f"| {a['criterion']} | {a['required']} | {shown} | {'yes' if a['pass'] else '**no**'} |"
            )
        lines.append("")

    # ---------------------------------------------------------------- host
    threads = report["threads"]
    lines += [
        "## Host CPU: time per inference",
        "",
        f"Produced by `{cmd}`. Median milliseconds per call over rounds (rounds × calls per round in "
        'the JSON); speed-ups are ratios of the medians. tbn-tvm: `tbn_tvm.compile(model, "llvm", mcpu="native")`; '
        "no row reuse: `reuse_rows=False` (compact weights, every output row computed; batch "
        f"{', '.join(map(str, report['settings']['ablation_batches']))} only); TVM fp32: `compress=False` "
        "(TVM's own build of the dense model, same Relax pipeline, default schedules, untuned); "
        f"all three timed with TVM's time evaluator (`CompiledModel.time`). onnxruntime "
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
        v, sp = r["variants"], r["speedup"]

        def med(name, v=v):
            return _ms(v[name]["median_s"]) if name in v else "–"

        errs = " / ".join(
            f"{v[n]['rel_err_vs_onnxruntime']:.1e}" if n in v else "–" for n in (TBN, TBN_NO_REUSE, TVM_FP32)
        )
        lines.append(
            f"| {titles[r['model']]} | {r['batch']} | {med(TBN)} | {med(TBN_NO_REUSE)} | {med(TVM_FP32)} | "
            f"{med(ORT)} | {_ratio(sp.get(f'vs_{ORT}'))} | {_ratio(sp.get(f'vs_{TVM_FP32}'))} | {errs} |"
        )
    lines += [
        "",
        "Max rel. err = max |y − y_onnxruntime| / max |y_onnxruntime| over the batch's outputs.",
        "",
        "The same speed-ups from each variant's fastest round (less sensitive to load from other work, "
        "more to luck):",
        "",
        "| model | batch | × vs onnxruntime | × vs TVM fp32 | × vs no row reuse |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["host"]:
        b = r.get("speedup_fastest_rounds", {})
        lines.append(
            f"| {titles[r['model']]} | {r['batch']} | {_ratio(b.get(f'vs_{ORT}'))} | "
            f"{_ratio(b.get(f'vs_{TVM_FP32}'))} | {_ratio(b.get(f'vs_{TBN_NO_REUSE}'))} |"
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

    # ---------------------------------------------------------------- cortex-m
    if report["cortex_m"]:
        first = next(
            (b for r in report["cortex_m"] for b in r["builds"].values() if b.get("status") == "ok"), {}
        )
        lines += [
            "## Cortex-M4 on QEMU: instructions per inference, flash and RAM",
            "",
            f'Produced by `{cmd}`: `tbn_tvm.compile(model, "cortex-m4"[, compress=False])`, '
            f"`run(x, count_instructions=True)` on QEMU "
            f"`{first.get('qemu_machine', '?')}` (board `{first.get('board', '?')}`); QEMU counts executed "
            "instructions exactly (not cycles). Flash and RAM are the firmware's (RAM includes the stack); "
            "weight bytes are the model's constant arrays in flash.",
            "",
            "| model | build | instructions / inference | flash bytes | RAM bytes | weight bytes | samples "
            "| max rel. err vs onnxruntime |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["cortex_m"]:
            for name in (TBN, TVM_FP32):
                b = r["builds"].get(name)
                if b is None:
                    continue
                title = "tbn-tvm" if name == TBN else "dense fp32, same path (`compress=False`)"
                if b.get("status") != "ok":
                    lines.append(
                        f"| {titles[r['model']]} | {title} | {b.get('reason', b.get('status'))} "
                        "| – | – | – | – | – |"
                    )
                    continue
                lines.append(
                    f"| {titles[r['model']]} | {title} | {_int(b['instructions_per_inference'])} | "
                    f"{_int(b['flash_bytes'])} | {_int(b['ram_bytes'])} | {_int(b['weight_bytes'])} | "
                    f"{b['samples']:,} | {b.get('rel_err_vs_onnxruntime', float('nan')):.1e} |"
                )
            if "authors_instructions_per_inference" in r:
                lines.append(
                    f"| {titles[r['model']]} | the authors' float C loop (their figure from issue 4; gcc 12 -O2, "
                    f"QEMU M4; not run here) | {r['authors_instructions_per_inference']:,} | – | – | – | – | – |"
                )
        lines.append("")
        ratios = []
        for r in report["cortex_m"]:
            if "fewer_instructions_than_dense" in r:
                ratios.append(
                    f"{titles[r['model']]}: {_ratio(r['fewer_instructions_than_dense'])} fewer "
                    f"instructions and {_ratio(r['smaller_flash_than_dense'])} less flash than the "
                    "dense build"
                )
            if "fewer_instructions_than_authors" in r:
                ratios.append(
                    f"{titles[r['model']]}: {_ratio(r['fewer_instructions_than_authors'])} fewer "
                    "instructions than the authors' figure"
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

    elif report["settings"].get("skip_cortex_m"):
        lines += ["## Cortex-M4 on QEMU", "", "Not measured in this run (`--skip-cortex-m`).", ""]

    # ---------------------------------------------------------------- models
    lines += [
        "## Models",
        "",
        "Generated deterministically by `benchmarks/models.py` (fixed seeds); the batch dimension is "
        "fixed in each file. Weights as exporters write them: dense float32, Gemm `transB=1`, "
        "BatchNorm folded into the convs. Formats as the compiler detects them (`tbn-tvm inspect`).",
        "",
        "| model | generator | input (batch 1) | parameters | fp32 weight bytes | compact weight bytes "
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
            f"| {m['title']} | `{m['generator']}` | {'x'.join(map(str, m['input_shape']))} | "
            f"{m['parameters']:,} | {m['fp32_bytes']:,} | {m['weight_bytes']:,} | "
            f"{_ratio(m['compression'])} | {layer_s} |"
        )
    lines += [
        "",
        "Compact weight bytes: tiles and scales of the weighted layers as `tbn-tvm inspect` counts "
        "them (biases excluded; the Cortex-M table's weight bytes include them).",
        "",
    ]

    # ---------------------------------------------------------------- method, machine
    s = report["settings"]
    lines += [
        "## Method",
        "",
        f"- Host: each variant is compiled, run once and checked against onnxruntime, then timed: a round "
        f"is `number` calls (chosen so that a round lasts about {s['round_s'] * 1e3:g} ms), up to "
        f"{s['rounds']} rounds (at least {s['min_rounds']}, fewer when one measurement would exceed about "
        f"{s['budget_s']:g} s). The rounds are spread over {s['passes']} passes through the variants, so "
        "that load from other work on the machine meets every variant alike (a variant slower than 1 s "
        "per call runs all its rounds in the first pass). Within a pass the variants run one after the "
        f"other, each after a {s['settle_s']:g} s pause and a warm-up call: onnxruntime's and TVM's spinning "
        "worker threads slow each other down when their calls alternate. The tables give the median over "
        "rounds; every sample is in the JSON.",
        f"- Cortex-M: the authors' MLP runs {s['mnist_samples']:,} MNIST test images through tbn-tvm "
        f"and {s['mnist_dense_samples']:,} through the dense build; other models {s['mcu_samples']} random "
        "input(s) each. Instruction counts are per inference (mean; min and max in the JSON).",
        "- The machine is shared: timings are noisy, which is why medians and ratios taken in the same run "
        f"are reported. Load average (1, 5, 15 min) at the start {meta.get('load_average_start')}, at the end "
        f"{meta.get('load_average_end')}, on {mach.get('usable_cpus')} usable cores.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {mach.get('cpu_model')} ({', '.join(mach.get('simd', [])) or 'no SIMD flags read'}); "
        f"{mach.get('usable_cpus')} usable of {mach.get('logical_cpus')} logical CPUs; RAM "
        f"{mach.get('ram_bytes', 0) / 2**30:.1f} GiB; {mach.get('os')}",
        f"- LLVM target of the host builds: `{report['host_target']}`",
        "",
        "| software | version |",
        "|---|---|",
        *[f"| {k} | {v if v else 'not found'} |" for k, v in ver.items()],
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Bar charts: host speed-ups per model/batch (log scale) and Cortex-M instruction ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {m["key"]: m["short"] for m in report["models"]}
    host = report["host"]
    mcu = [
        r
        for r in report["cortex_m"]
        if "fewer_instructions_than_dense" in r or "fewer_instructions_than_authors" in r
    ]
    fig, axes = plt.subplots(
        1,
        2 if mcu else 1,
        figsize=(13 if mcu else 9, 4.8),
        gridspec_kw={"width_ratios": [3, 1]} if mcu else None,
        squeeze=False,
    )
    ax = axes[0][0]
    labels = [f"{titles[r['model']]}\nbatch {r['batch']}" for r in host]
    series = [
        (f"vs {VARIANT_TITLES[ORT]}", f"vs_{ORT}"),
        (f"vs {VARIANT_TITLES[TVM_FP32]}", f"vs_{TVM_FP32}"),
    ]
    width = 0.8 / len(series)
    xs = np.arange(len(host))
    for i, (name, key) in enumerate(series):
        vals = [r["speedup"].get(key, np.nan) for r in host]
        bars = ax.bar(xs + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, labels=[_ratio(v) if np.isfinite(v) else "" for v in vals], fontsize=7, padding=1)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("tbn-tvm speed-up (median time ratio, log)")
    ax.set_title(f"Host CPU ({report['machine'].get('usable_cpus')} cores): tbn-tvm speed-up")
    ax.legend(fontsize=8)
    if mcu:
        ax2 = axes[0][1]
        names, vals = [], []
        for r in mcu:
            if "fewer_instructions_than_dense" in r:
                names.append(f"{titles[r['model']]}\nvs dense")
                vals.append(r["fewer_instructions_than_dense"])
            if "fewer_instructions_than_authors" in r:
                names.append(f"{titles[r['model']]}\nvs authors'*")
                vals.append(r["fewer_instructions_than_authors"])
        bars = ax2.bar(np.arange(len(vals)), vals, 0.6, color="tab:green")
        ax2.bar_label(bars, labels=[_ratio(v) for v in vals], fontsize=7, padding=1)
        ax2.set_xticks(np.arange(len(vals)), names, fontsize=8)
        ax2.set_title("Cortex-M4 (QEMU): fewer instructions")
        ax2.set_ylabel("instructions ratio")
        ax2.text(
            0.0,
            -0.22,
            "* authors' 2.645 M from issue 4 (not measured here)",
            transform=ax2.transAxes,
            fontsize=7,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ driver
def _check_dependencies(skip_cortex_m: bool) -> None:
    for mod, why in (("onnxruntime", "the baseline"), ("matplotlib", "the plot")):
        if importlib.util.find_spec(mod) is None:
            raise TBNError(
                f"{mod} is not installed ({why} of the benchmarks)", hint="pip install 'tbn-tvm[bench]'"
            )
    if not skip_cortex_m:
        from tbn_tvm.targets.cortex_m import ensure_toolchain

        ensure_toolchain(install=False, need_qemu=True)


def _threads_setup(threads: int) -> int:
    """Ask TVM's thread pool for ``threads`` workers (it uses half the logical CPUs by default on
    x86) before its first use; returns what it has."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm  # noqa: F401 - registers the runtime functions
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def run(
    models: ModuleType,
    out_dir: str | os.PathLike,
    *,
    quick: bool = False,
    command: str = "tbn-tvm bench",
    rounds: int | None = None,
    threads: int | None = None,
    skip_cortex_m: bool = False,
    publish_dir: str | os.PathLike | None = None,
) -> dict:
    """Run the suite; write ``report.md``, ``report.json``, ``speedup.png`` into ``out_dir`` (and
    copies of them into ``publish_dir`` when given).  Returns the report dict."""
    log = _Log()
    settings = Settings.for_mode(quick, rounds)
    if threads is not None and threads < 1:
        raise TBNError("--threads must be at least 1")
    _check_dependencies(skip_cortex_m)
    threads = threads or _usable_cpus()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    tvm_threads = _threads_setup(threads)
    cases = suite(models, settings)
    log(
        f"{'quick' if quick else 'full'} run: {len(cases)} models, batches {settings.batches}, TVM threads "
        f"{tvm_threads}, onnxruntime threads {threads}"
    )
    report: dict = {
        "meta": {
            "command": command,
            "quick": quick,
            "started": started,
            "load_average_start": _load(),
            "git": _git_revision(Path(getattr(models, "__bench_path__", models.__file__)).parent),
        },
        "settings": {**asdict(settings), "skip_cortex_m": skip_cortex_m},
        "machine": machine(),
        "versions": versions(),
        "threads": {"tvm": tvm_threads, "onnxruntime_intra_op": threads, "onnxruntime_inter_op": 1},
        "host_target": None,
        "authors": {"instructions_per_inference": AUTHORS_INSTRUCTIONS, "source": AUTHORS_SOURCE},
        "models": [],
        "host": [],
        "cortex_m": [],
    }
    for case in cases:
        for batch in case.batches:
            row = run_host(case, batch, models, settings, threads, log)
            if batch == case.batches[0]:
                total = row.pop("total")
                report["models"].append(
                    {
                        "key": case.key,
                        "title": case.title,
                        "short": case.short or case.key,
                        "generator": case.generator,
                        "input_shape": [1, *row["input_shape"][1:]],
                        "parameters": total["fp32_bytes"] // 4,
                        "fp32_bytes": total["fp32_bytes"],
                        "weight_bytes": total["weight_bytes"],
                        "compression": total["compression"],
                        "layers": [
                            {
                                k: la[k]
                                for k in ("name", "op", "weight_shape", "format", "p", "alpha", "bytes")
                            }
                            for la in row.pop("layers")
                        ],
                    }
                )
            row.pop("layers", None)
            row.pop("total", None)
            report["host"].append(row)
        if case.cortex_m and not skip_cortex_m:
            report["cortex_m"].append(run_cortex_m(case, models, settings, threads, log))
    report["host_target"] = report["host"][0].get("target") if report["host"] else None
    report["meta"]["wall_s"] = round(time.perf_counter() - log.t0, 1)
    report["meta"]["load_average_end"] = _load()
    report["acceptance"] = acceptance(report)
    _write(report, out, log)
    if publish_dir is not None:
        pub = Path(publish_dir)
        shutil.copyfile(out / "report.md", pub / "REPORT.md")
        shutil.copyfile(out / "report.json", pub / "report.json")
        shutil.copyfile(out / "speedup.png", pub / "speedup.png")
        log(f"copied the report to {pub / 'REPORT.md'}, {pub / 'report.json'} and {pub / 'speedup.png'}")
    return report


def _write(report: dict, out: Path, log: _Log) -> None:
    for name, text in (
        ("report.json", json.dumps(report, indent=1) + "\n"),
        ("report.md", render_markdown(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    plot(report, out / "speedup.png")
    log(f"wrote {out / 'report.md'}, {out / 'report.json'} and {out / 'speedup.png'}")


def run_from_args(args, prog: str, models: ModuleType | None = None) -> int:
    """Entry point shared by ``tbn-tvm bench`` and ``python -m benchmarks`` (parsed arguments)."""
    models = models or load_models(args.models)
    bench_dir = Path(getattr(models, "__bench_path__", getattr(models, "__file__", "."))).resolve().parent
    out = Path(args.out) if args.out else bench_dir / "results"
    publish = None if (args.quick or args.no_publish) else bench_dir
    parts = [prog] + (["--quick"] if args.quick else []) + ([f"--out {args.out}"] if args.out else [])
    parts += [f"--rounds {args.rounds}"] if args.rounds else []
    parts += [f"--threads {args.threads}"] if args.threads else []
    parts += ["--skip-cortex-m"] if args.skip_cortex_m else []
    parts += ["--no-publish"] if args.no_publish else []
    report = run(
        models,
        out,
        quick=args.quick,
        command=" ".join(parts),
        rounds=args.rounds,
        threads=args.threads,
        skip_cortex_m=args.skip_cortex_m,
        publish_dir=publish,
    )
    print(render_summary(report))
    return 0


def render_summary(report: dict) -> str:
    """A few lines for the terminal: the host speed-ups and the Cortex-M figures."""
    lines = []
    for r in report["host"]:
        v, sp = r["variants"], r["speedup"]
        lines.append(
            f"{r['model']:<18} batch {r['batch']:>2}: tbn-tvm {_ms(v[TBN]['median_s']):>7} ms  "
            f"{_ratio(sp.get(f'vs_{ORT}')):>7} vs onnxruntime  {_ratio(sp.get(f'vs_{TVM_FP32}')):>7} vs TVM fp32"
        )
    for r in report["cortex_m"]:
        b = r["builds"][TBN]
        if b.get("status") == "ok":
            lines.append(
                f"{r['model']:<18} cortex-m4: {_int(b['instructions_per_inference'])} instructions, "
                f"flash {_int(b['flash_bytes'])} B, RAM {_int(b['ram_bytes'])} B"
            )
    if report["meta"]["quick"]:
        lines.append("quick mode: scaled-down models; the acceptance figures of issue 4 need a full run")
    else:
        for a in report["acceptance"]:
            lines.append(f"{'met' if a['pass'] else 'NOT met'}: {a['criterion']} ({a['required']})")
    return "\n".join(lines)
