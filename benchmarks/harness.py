"""Timing for the benchmarks: how much to measure, the timers, the measurement itself, the rule
that says whether a measurement can be trusted, and probes of the machine and of the versions a
figure depends on.  Nothing here knows the models.

Times are seconds per call (one inference of the model's batch).  A *round* is ``number`` calls
timed together; a measurement is several rounds, and its figure the median over rounds.

>>> Settings.for_mode(quick=True).rounds
5
>>> round(rel_err(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 2e-6])), 9)  # max |a - b| / max |b|
1e-06
>>> trust([1e-3] * 5, number=10)["trusted"]  # 5 rounds x 10 calls x 1 ms = 50 ms timed, no spread
True
>>> trust([1e-3] * 5, number=1)["reasons"]  # 5 ms timed in all
['5 ms timed < 25 ms']
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tbn_tvm import TBNError, __version__

# ------------------------------------------------------------------------------------ trust rule
#: A measurement (one variant at one batch) is *trusted* when it has at least this many rounds,
TRUST_MIN_ROUNDS = 3
#: ... a relative spread (interquartile range of the per-round seconds / their median) of at most
#: this (the full runs on the shared 2-core CI machine stay below 0.38; broken ones reach 0.8+),
TRUST_MAX_SPREAD = 0.40
#: ... and at least this many seconds of calls timed in all (rounds x calls x seconds per call):
#: a few calls of tens of microseconds are at the mercy of one scheduler hiccup.
TRUST_MIN_TIMED_S = 0.025


def trust_rule() -> dict:
    """The thresholds of :func:`trust`, for the JSON report."""
    return {
        "min_rounds": TRUST_MIN_ROUNDS,
        "max_spread_iqr_over_median": TRUST_MAX_SPREAD,
        "min_timed_s": TRUST_MIN_TIMED_S,
    }


def trust(samples_s: Sequence[float], number: int) -> dict:
    """Whether a measurement can be trusted: ``samples_s`` are seconds per call, one per round of
    ``number`` calls.  Returns ``rounds``, ``spread`` (IQR / median, a fraction), ``timed_s``
    (seconds of calls timed: sum of the samples x ``number``), ``trusted`` and the ``reasons`` it
    is not (empty when trusted)."""
    s = np.asarray(samples_s, np.float64)
    rounds = int(s.size)
    if rounds == 0:
        return {"rounds": 0, "spread": None, "timed_s": 0.0, "trusted": False, "reasons": ["no rounds"]}
    median = float(np.median(s))
    q75, q25 = np.percentile(s, [75, 25])
    spread = float((q75 - q25) / median) if median > 0 else math.inf
    timed = float(s.sum() * number)
    reasons = []
    if rounds < TRUST_MIN_ROUNDS:
        reasons.append(f"{rounds} rounds < {TRUST_MIN_ROUNDS}")
    if not spread <= TRUST_MAX_SPREAD:
        reasons.append(f"spread {spread:.0%} > {TRUST_MAX_SPREAD:.0%}")
    if timed < TRUST_MIN_TIMED_S:
        reasons.append(f"{timed * 1e3:.3g} ms timed < {TRUST_MIN_TIMED_S * 1e3:g} ms")
    return {"rounds": rounds, "spread": spread, "timed_s": timed, "trusted": not reasons, "reasons": reasons}


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """How much to measure.

    Each host measurement runs ``number`` calls per round, ``number`` chosen so that a round
    lasts about ``round_s`` seconds; the number of rounds is ``rounds``, cut down (never below
    ``min_rounds``) so that one measurement takes about ``budget_s`` seconds.  ``settle_s``
    seconds of pause precede each variant; ``passes`` passes go through the variants.  The
    median over rounds is reported."""

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
    tune_trials: int = 0  # MetaSchedule trials per host model and batch (0: no tuned variant)
    tuning_dir: str | None = None  # where the tuning databases live (kept: a re-run resumes)

    @classmethod
    def for_mode(
        cls, quick: bool, rounds: int | None = None, tune_trials: int = 0, tuning_dir: str | None = None
    ) -> Settings:
        if quick:  # 5 rounds of ~10 ms: enough for the trust rule when the estimate is right
            s = cls(True, 5, 3, 0.01, 0.3, 0.1, 1, (1, 4), (), 200, 10, 1)
        else:
            s = cls(False, 15, 3, 0.05, 6.0, 0.3, 3, (1, 32), (1,), 10_000, 200, 2)
        if rounds is not None:
            if rounds < 1:
                raise TBNError("--rounds must be at least 1")
            s = cls(**{**asdict(s), "rounds": rounds, "min_rounds": min(s.min_rounds, rounds)})
        if tune_trials < 0:
            raise TBNError("--tune-trials must be 0 or more")
        return cls(**{**asdict(s), "tune_trials": tune_trials, "tuning_dir": tuning_dir})


# ------------------------------------------------------------------------------------ timers
Timer = Callable[[int, int], list[float]]  # (number, repeat) -> seconds per call, one per repeat


def tvm_timer(cm, inputs: np.ndarray | Mapping[str, np.ndarray]) -> Timer:
    """A compiled host model timed by TVM's time evaluator (``CompiledModel.time``)."""
    return lambda number, repeat: cm.time(inputs, number=number, repeat=repeat)


def ort_session(model_bytes: bytes, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads, one inter-op, sequential."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own errors: the baseline cannot run this model
        raise TBNError(
            f"onnxruntime cannot load the model ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        ) from None


def ort_timer(sess, feed: Mapping[str, np.ndarray]) -> Timer:
    """``InferenceSession.run`` in a ``time.perf_counter`` loop."""

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
    a second per call runs all its rounds in the first pass.  ``first_calls`` holds the seconds
    of each variant's first (checked) call.

    Returns per variant the median, min and max seconds per call, every sample (one per round),
    ``rounds``, ``number``, the planning estimate and the verdict of :func:`trust` (``spread``,
    ``timed_s``, ``trusted``, ``untrusted_reasons``)."""
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
        verdict = trust(values, number)
        out[name] = {
            "median_s": float(np.median(values)),
            "min_s": float(np.min(values)),
            "max_s": float(np.max(values)),
            "rounds": len(values),
            "number": number,
            "estimate_s": est,
            "samples_s": values,
            "spread": verdict["spread"],
            "timed_s": verdict["timed_s"],
            "trusted": verdict["trusted"],
            "untrusted_reasons": verdict["reasons"],
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


# ------------------------------------------------------------------------------------ helpers
def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    """``max |y - ref| / max |ref|``: the error relative to the output's scale (``y`` is
    reshaped to ``ref``'s shape; an all-zero ``ref`` counts as scale 1)."""
    y = np.asarray(y, np.float64).reshape(np.shape(ref))
    ref = np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(y - ref).max() / scale)


class Log:
    """Progress lines on stderr: ``[bench  12.3s] message`` (seconds since the start)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[bench {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def threads_setup(threads: int) -> int:
    """Ask TVM's thread pool for ``threads`` workers (it uses half the logical CPUs by default on
    x86) before its first use; returns what it has."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm  # noqa: F401 - registers the runtime functions
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


# ------------------------------------------------------------------------------------ probes
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
    """Versions of everything a figure depends on (``None`` where not found)."""
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
    """CPU model and SIMD features, logical and usable cores, memory (``ram_bytes``), OS."""
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
    info["usable_cpus"] = usable_cpus()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_bytes"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def usable_cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def git_revision(where: Path) -> str | None:
    """The short commit of the checkout holding ``where`` (``+local changes`` when tracked files
    differ from it), or ``None`` outside a git checkout."""
    rev = _first_line(["git", "-C", str(where), "rev-parse", "--short", "HEAD"])
    if not rev or " " in rev:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return rev + ("+local changes" if dirty else "")
