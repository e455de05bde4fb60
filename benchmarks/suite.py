"""The benchmark cases and running them: on the host CPU against onnxruntime and TVM's fp32 build,
on QEMU Cortex-M4 against the dense build by the same path; issue 4's acceptance figures.

A run measures, on the same ONNX files, as ratios:

* host CPU (``tbn_tvm.compile(model, "llvm", mcpu="native")``): tbn-tvm against onnxruntime
  (fp32, dense weights) and against TVM's own fp32 build of the dense model
  (``compress=False``, same pipeline, same ``mcpu``), plus tbn-tvm without row reuse
  (``reuse_rows=False``) at the ablation batch sizes; every output is checked against
  onnxruntime (max relative error, see :func:`benchmarks.harness.rel_err`);
* Cortex-M4 on QEMU: instructions and estimated Cortex-M4/M7 cycles per inference (the QEMU
  plugin's estimate), flash and RAM bytes of tbn-tvm against the dense fp32 model compiled by
  the same path (where its weights fit the board's flash), the authors' MNIST MLP on the MNIST
  test images (and against CMSIS-NN int8), and issue 22's builds for small boards (a
  ``ram_size`` limit, float16 activations: :attr:`Case.mcu_variants`).

The cases are the default suite (:func:`default_cases`, models from ``benchmarks/models.py``) or
one ONNX file of the user's (:func:`model_case`, ``python -m benchmarks --model FILE``).  Only
tbn-tvm's public API is used: ``tbn_tvm.compile``, ``CompiledModel.run`` / ``.time`` /
``.report()`` / ``.last_run_stats`` / ``.target``, ``tbn_tvm.inspect``.  Nothing here asserts
speed; timings are medians over rounds (:mod:`benchmarks.harness`).
"""

from __future__ import annotations

import gc
import importlib.util
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np

from benchmarks import harness, real
from benchmarks.harness import Log, Settings, Timer, rel_err
from tbn_tvm import TBNError

#: Instructions per inference of the paper authors' own float C implementation of their MNIST
#: MLP, on QEMU Cortex-M4 with gcc 12 -O2, as stated in the project's issue 4.  The one figure in
#: the report that is not measured by this suite (their code is not part of tbn-tvm).
AUTHORS_INSTRUCTIONS = 2_645_000
AUTHORS_SOURCE = "issue 4 (the authors' float C loop, QEMU Cortex-M4, gcc 12 -O2; not run here)"

#: Issue 4's acceptance figures (the report checks the measured values against them).
ACCEPT_MCU_INSTRUCTIONS = 260_000  # instructions per inference
ACCEPT_MCU_WEIGHT_BYTES = 3_340  # bytes of weights in flash
ACCEPT_HOST_VS_ORT = 4.0  # speed-up (ratio of medians)
ACCEPT_HOST_VS_TVM = 8.0  # speed-up (ratio of medians)
ACCEPT_REL_ERR = 1e-5  # max |y - y_ort| / max |y_ort|

#: The tolerance the outputs of every build are checked against (relative to onnxruntime's).
REL_TOLERANCE = 1e-5
#: ... and a Cortex-M build with ``activations="float16"`` (issue 22: within 1e-2 relative)
REL_TOLERANCE_FLOAT16 = 1e-2

TBN = "tbn-tvm"
TBN_NO_REUSE = "tbn-tvm-no-row-reuse"
TBN_TUNED = "tbn-tvm-tuned"
CMSIS_INT8 = "cmsis-nn-int8"  # the authors' MLP with CMSIS-NN int8 on QEMU (benchmarks/cmsis_nn.py)
TVM_FP32 = "tvm-fp32"
ORT = "onnxruntime-fp32"
HOST_VARIANTS = (TBN, TBN_TUNED, TBN_NO_REUSE, TVM_FP32, ORT)
VARIANT_TITLES = {
    TBN: "tbn-tvm",
    TBN_NO_REUSE: "tbn-tvm, no row reuse",
    TBN_TUNED: "tbn-tvm, tuned (MetaSchedule)",
    TVM_FP32: "TVM fp32",
    ORT: "onnxruntime fp32",
}
MODEL_TARGETS = ("llvm", "cortex-m4")  # what --model can be measured on

Feeds = dict[str, np.ndarray]  # input name -> array


# ------------------------------------------------------------------------------------ the cases
@dataclass
class Case:
    """One benchmark model: ``build(batch)`` returns its ONNX model with that batch size,
    ``sample(model, seed)`` a fixed input for it (name -> array of the input's shape)."""

    key: str
    title: str
    build: Callable[[int], object]
    sample: Callable[[object, int], Feeds]
    batches: tuple[int, ...]
    cortex_m: bool = True
    host: bool = True
    generator: str = ""  # how the model is made, for the report
    short: str = ""  # a label for the plot
    input_shapes: dict[str, list[int]] | None = None  # given to tbn_tvm.compile (--input-shape)
    ablation: bool = True  # also time tbn-tvm without row reuse (at the settings' ablation batches)
    classifier: bool = True  # one output of class scores: compare predictions (argmax) too
    family: str = "suite"  # "real": a real-architecture case (benchmarks/real.py), its own table
    #: more tbn-tvm builds on QEMU Cortex-M4 beside the default one: (build key, title, options of
    #: ``tbn_tvm.compile``), e.g. a RAM limit (``ram_size="64K"``) and float16 activations
    mcu_variants: tuple[tuple[str, str, dict], ...] = ()


#: Issue 22's ResNet-style CNN: widths 16/32/64 at 3x32x32 (stem 16), built for a 128 KiB board
#: (fp32 activations) and a 64 KiB one (float16 activations), see :func:`default_cases`.
RESNET16_STAGES = ((16, 1, 4), (32, 2, 4), (64, 2, 8))
TBN_128K = "tbn-tvm-ram-128K"
TBN_64K_FP16 = "tbn-tvm-ram-64K-fp16"
TBN_24K = "tbn-tvm-ram-24K"


def _sampler(models: ModuleType, kind: str) -> Callable[[object, int], Feeds]:
    return lambda model, seed=1: {model.graph.input[0].name: models.sample_input(kind, model, seed)}


def default_cases(models: ModuleType, settings: Settings) -> list[Case]:
    """The models of issue 4 (full run), or scaled-down versions of them (``--quick``)."""
    b = settings.batches
    cases = [
        Case(
            "authors_mnist_mlp",
            "authors' MNIST MLP 784-128-10, fc1 tiled p=4",
            models.authors_mlp,
            _sampler(models, "authors_mlp"),
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
                _sampler(models, "wide_mlp"),
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
                _sampler(models, "tiled_resnet"),
                (1,),
                cortex_m=False,
                short="ResNet CNN",
                generator="models.tiled_resnet(batch, image=8, stem=8, stages=((8,1,4),(16,2,8)))",
            )
        )
        for c in conv_bn_cases(models, (1,))[1:]:  # the tile form, on QEMU only
            c.host = False
            cases.append(c)
        return cases
    for p in (4, 8):
        cases.append(
            Case(
                f"wide_mlp_p{p}",
                f"MLP 4096-4096-4096-10, hidden layers tiled p={p}",
                lambda n, p=p: models.wide_mlp(p, n),
                _sampler(models, "wide_mlp"),
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
            _sampler(models, "tiled_resnet"),
            b,
            generator="models.tiled_resnet(batch)",
            short="ResNet CNN",
        )
    )
    cases.append(
        Case(
            "tiled_resnet_16",
            "ResNet-style CNN 3x32x32, widths 16/32/64 (p=4,4,8)",
            lambda n: models.tiled_resnet(n, stem=16, stages=RESNET16_STAGES),
            _sampler(models, "tiled_resnet"),
            (1,),
            host=False,  # issue 22's RAM rows: Cortex-M only
            generator="models.tiled_resnet(batch, stem=16, stages=((16,1,4),(32,2,4),(64,2,8)))",
            short="ResNet CNN 16",
            mcu_variants=(
                (TBN_128K, 'tbn-tvm, `ram_size="128K"` (fp32 activations)', {"ram_size": "128K"}),
                (
                    TBN_64K_FP16,
                    'tbn-tvm, `ram_size="64K", activations="float16"`',
                    {"ram_size": "64K", "activations": "float16"},
                ),
            ),
        )
    )
    cases += conv_bn_cases(models, b)
    cases += subbit_cases(models, b)
    if real.unavailable() is None:  # issue 19's real-architecture table (needs torch + onnxscript)
        cases += real.real_cases(settings)
    return cases


def selectable_cases(models: ModuleType, settings: Settings) -> list[Case]:
    """What ``--cases`` picks from: :func:`default_cases` and, where they are not among them
    (``--quick``: the small configurations), the real-architecture cases (where torch and
    onnxscript are installed)."""
    cases = default_cases(models, settings)
    if not any(c.family == real.FAMILY for c in cases) and real.unavailable() is None:
        cases += real.real_cases(settings)
    return cases


def select_cases(cases: list[Case], keys: str) -> list[Case]:
    """The cases named in ``keys`` (comma-separated :attr:`Case.key` values, the group keys of
    :data:`benchmarks.real.GROUPS`: ``real``, ``real_eleven``, ``held_out``, or ``subbit``:
    issue 23's layers), in suite order.
    Raises TBNError naming the known keys for an unknown one."""
    wanted = [k.strip() for k in keys.split(",") if k.strip()]
    known = [c.key for c in cases]
    expanded = []
    for k in wanted:
        expanded += SUBBIT_KEYS if k == SUBBIT_GROUP else (real.group_keys(k) or [k])
    unknown = [k for k in expanded if k not in known]
    if unknown or not wanted:
        raise TBNError(
            f"--cases: unknown case {', '.join(unknown) or repr(keys)}",
            hint=f"known: {', '.join(known + list(real.GROUPS) + [SUBBIT_GROUP])}",
        )
    return [c for c in cases if c.key in expanded]


def conv_bn_cases(models: ModuleType, batches: tuple[int, ...]) -> list[Case]:
    """Issue 13's conv-BN-ReLU-pool CNN (``models.conv_bn_cnn``), BatchNorm as its own node, in
    its two exporter forms: dense float weights, and tile + Tile/Expand."""
    if not hasattr(models, "conv_bn_cnn"):  # a --models file without it
        return []
    return [
        Case(
            f"conv_bn_cnn_{form}",
            f"conv-BN-ReLU-pool CNN 1x28x28 (p=2,4,4), {title}",
            lambda n, form=form: models.conv_bn_cnn(form, n),
            _sampler(models, "conv_bn_cnn"),
            batches,
            generator=f'models.conv_bn_cnn("{form}", batch)',
            short=f"conv-BN CNN {form}",
            # issue 22: the dense-weight form also built for a 24 KiB board (patch-wise stage)
            mcu_variants=((TBN_24K, 'tbn-tvm, `ram_size="24K"`', {"ram_size": "24K"}),)
            if form == "dense"
            else (),
        )
        for form, title in (("dense", "dense weights"), ("tile", "tile + Tile/Expand form"))
    ]


#: ``--cases subbit``: issue 23's sub-bit layers (:func:`subbit_cases`).
SUBBIT_GROUP = "subbit"
SUBBIT_KEYS = ["bitplane_gemm_k4", "codebook_conv_96x48", "binary_conv_96x48"]


def subbit_cases(models: ModuleType, batches: tuple[int, ...]) -> list[Case]:
    """Issue 23's sub-bit layers in one run: the 4-bit bit-plane GEMM 128x512 (host against
    onnxruntime and TVM's dense build, QEMU against the dense build) and the codebook conv
    96x48x3x3 τ=4 at 12x12 beside its unstructured binary twin (QEMU; host too)."""
    if not hasattr(models, "bitplane_gemm"):  # a --models file without them
        return []
    common = {"classifier": False, "ablation": False}
    return [
        Case(
            "bitplane_gemm_k4",
            "bit-plane GEMM 128x512, 4-bit integers, α per row",
            lambda n: models.bitplane_gemm(n),
            _sampler(models, "bitplane_gemm"),
            batches,
            generator="models.bitplane_gemm(batch)",
            short="bit-plane GEMM k4",
            **common,
        ),
        *(
            Case(
                f"{form}_conv_96x48",
                f"conv 96x48x3x3 at 12x12, {title}",
                lambda n, form=form: models.codebook_conv(form, n),
                _sampler(models, "codebook_conv"),
                (1,),
                generator=f'models.codebook_conv("{form}", batch)',
                short=f"{form} conv",
                **common,
            )
            for form, title in (
                ("codebook", "SNN codebook τ=4"),
                ("binary", "unstructured binary (the twin)"),
            )
        ),
    ]


def load_models(path: str | None = None) -> ModuleType:
    """The ONNX generators: the file ``path``, else this package's ``benchmarks/models.py``.
    The module gets ``__bench_path__``, the file it came from."""
    if not path:
        from benchmarks import models

        models.__bench_path__ = Path(models.__file__).resolve()
        return models
    cand = Path(path)
    if not cand.is_file():
        hint = (
            "--models takes a models.py of generators; to benchmark an ONNX file use --model"
            if cand.suffix == ".onnx"
            else "pass the benchmarks/models.py of a tbn-tvm checkout"
        )
        raise TBNError(f"{path}: no such file", hint=hint)
    if cand.suffix == ".onnx":
        raise TBNError(
            f"{path}: --models takes a models.py of generators", hint="use --model for an ONNX file"
        )
    spec = importlib.util.spec_from_file_location("tbn_bench_models", cand)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise TBNError(f"{path}: cannot load the benchmark models ({type(e).__name__}: {e})") from None
    module.__bench_path__ = cand.resolve()
    return module


# ------------------------------------------------------------------------------------ a user model
def parse_input_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """``["x=1,784", ...]`` (``--input-shape NAME=D0,D1,...``) -> ``{"x": [1, 784]}``.

    >>> parse_input_shapes(["input=1,3,32,32"])
    {'input': [1, 3, 32, 32]}
    """
    out: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or min(shape) < 1:
            raise TBNError(
                f"--input-shape {item}: expected NAME=D0,D1,... with positive sizes",
                hint="e.g. --input-shape input=1,784",
            )
        out[name] = shape
    return out


def model_inputs(proto, input_shapes: Mapping[str, list[int]]) -> list[tuple[str, np.dtype, list[int]]]:
    """``(name, dtype, shape)`` of each graph input of ``proto`` (initializers excluded), dynamic
    dimensions set from ``input_shapes``.  Raises :class:`TBNError` for a dimension left
    dynamic, an unknown input name or a shape that contradicts a fixed one."""
    from onnx import helper

    inits = {t.name for t in proto.graph.initializer}
    graph_inputs = [vi for vi in proto.graph.input if vi.name not in inits]
    names = [vi.name for vi in graph_inputs]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise TBNError(
            f"--input-shape names {', '.join(unknown)}, which the model has no input of",
            hint="its inputs are " + (", ".join(names) or "none"),
        )
    out = []
    for vi in graph_inputs:
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            raise TBNError(f"input '{vi.name}' is not a tensor of a numeric type") from None
        declared = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim
        ]
        given = input_shapes.get(vi.name)
        if given is not None:
            fixed = [d for d in declared if d is not None]
            if tt.HasField("shape") and (
                len(given) != len(declared) or any(d is not None and d != g for d, g in zip(declared, given))
            ):
                shown = "x".join("?" if d is None else str(d) for d in declared)
                raise TBNError(
                    f"--input-shape {vi.name}={','.join(map(str, given))} contradicts the model's shape {shown}",
                    hint="it can only set the dynamic (?) dimensions" if fixed else None,
                )
            shape = list(given)
        elif not tt.HasField("shape"):
            raise TBNError(
                f"input '{vi.name}' declares no shape", hint=f"give it with --input-shape {vi.name}=D0,D1,..."
            )
        elif any(d is None for d in declared):
            shown = "x".join("?" if d is None else str(d) for d in declared)
            raise TBNError(
                f"input '{vi.name}' has the dynamic shape {shown}",
                hint=f"fix it with --input-shape {vi.name}="
                + ",".join("1" if d is None else str(d) for d in declared),
            )
        else:
            shape = declared
        out.append((vi.name, dtype, shape))
    return out


def random_inputs(specs: list[tuple[str, np.dtype, list[int]]], seed: int = 1) -> Feeds:
    """A fixed input per spec: float inputs standard normal, integer and bool inputs zero
    (they are often indices or masks), from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dtype, shape in specs:
        if np.issubdtype(dtype, np.floating):
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = np.zeros(shape, dtype)
    return out


def model_case(path: str, input_shapes: Mapping[str, list[int]], target: str) -> Case:
    """The case of ``--model PATH`` on ``target`` (``llvm``: host timings; ``cortex-m4``:
    instructions on QEMU)."""
    import onnx

    if target not in MODEL_TARGETS:
        raise TBNError(f"--target {target}: not one of {', '.join(MODEL_TARGETS)}")
    p = Path(path)
    if not p.is_file():
        raise TBNError(f"{path}: no such file")
    try:
        proto = onnx.load(str(p))
    except Exception as e:
        raise TBNError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    if not proto.graph.node and not proto.graph.output:
        raise TBNError(f"{path}: not a readable ONNX model (no graph)")
    specs = model_inputs(proto, input_shapes)
    batch = specs[0][2][0] if specs and specs[0][2] else 1
    return Case(
        p.stem,
        p.name,
        lambda n: proto,
        lambda model, seed=1: random_inputs(specs, seed),
        (batch,),
        cortex_m=target == "cortex-m4",
        host=target == "llvm",
        generator=f"--model {path}",
        short=p.stem,
        input_shapes=dict(input_shapes) or None,
        ablation=False,
        classifier=False,
    )


# ------------------------------------------------------------------------------------ outputs
def _outputs(y) -> list[np.ndarray]:
    """``CompiledModel.run``'s result (an array, or a dict name -> array) as a list."""
    return [np.asarray(v) for v in y.values()] if isinstance(y, Mapping) else [np.asarray(y)]


def outputs_rel_err(ys: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """The largest :func:`rel_err` over the outputs (each relative to its own scale)."""
    if len(ys) != len(refs):
        raise TBNError(f"the build gives {len(ys)} outputs, onnxruntime {len(refs)}")
    return max((rel_err(y, r) for y, r in zip(ys, refs)), default=0.0)


def _compile_opts(case: Case) -> dict:
    return {"input_shapes": case.input_shapes} if case.input_shapes else {}


# ------------------------------------------------------------------------------------ host
def _tune(case: Case, model, batch: int, settings: Settings, log: Log, label: str) -> Path:
    """Tune ``model`` (``tbn_tvm.schedules.tuning.tune``) into a database kept under
    ``settings.tuning_dir`` (a re-run resumes it); returns the database folder."""
    import tempfile

    from tbn_tvm.schedules.tuning import tune

    root = (
        Path(settings.tuning_dir) if settings.tuning_dir else Path(tempfile.mkdtemp(prefix="tbn-bench-tune-"))
    )
    db = root / f"{case.key}-batch{batch}"
    t0 = time.perf_counter()
    res = tune(
        model,
        "llvm",
        mcpu="native",
        trials=settings.tune_trials,
        db=db,
        progress=False,
        on_message=lambda m: log(f"{label}: tuning: {m}"),
        **_compile_opts(case),
    )
    log(f"{label}: tuned {res.trials_run} trials in {time.perf_counter() - t0:.0f} s; forms {res.forms}")
    return db


def run_host(case: Case, batch: int, settings: Settings, threads: int, log: Log) -> dict:
    """Compile and time every host variant of one model at one batch size; returns the row of
    the report (``variants``: per variant the timing of :func:`benchmarks.harness.measure`, the
    error against onnxruntime, the weight bytes in the build; ``speedup``: ratios of medians)."""
    import tbn_tvm

    label = f"host {case.key} batch {batch}"
    model = case.build(batch)
    feed = case.sample(model, 1)
    model_bytes = model.SerializeToString()
    sess = harness.ort_session(model_bytes, threads)
    t0 = time.perf_counter()
    try:
        ref = sess.run(None, feed)
    except Exception as e:
        raise TBNError(
            f"onnxruntime cannot run the model ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        ) from None
    first = {ORT: time.perf_counter() - t0}
    timers: dict[str, Timer] = {ORT: harness.ort_timer(sess, feed)}
    first_x = next(iter(feed.values())) if feed else np.zeros(0)
    row: dict = {"model": case.key, "batch": batch, "input_shape": list(first_x.shape), "variants": {}}
    if len(feed) > 1 or case.input_shapes:
        row["input_shapes"] = {k: list(v.shape) for k, v in feed.items()}
    x = feed if len(feed) != 1 else first_x
    builds = [(TBN, {}), (TVM_FP32, {"compress": False})]
    if case.ablation and batch in settings.ablation_batches:
        builds.insert(1, (TBN_NO_REUSE, {"reuse_rows": False}))
    if settings.tune_trials:
        db = _tune(case, model, batch, settings, log, label)
        builds.insert(1, (TBN_TUNED, {"tuning_db": db}))
        row["tuning"] = {"trials": settings.tune_trials, "db": db.name}
    compiled = {}
    for name, opts in builds:
        t0 = time.perf_counter()
        cm = tbn_tvm.compile(model, "llvm", mcpu="native", **opts, **_compile_opts(case))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = cm.run(x)
        first[name] = time.perf_counter() - t0
        err = outputs_rel_err(_outputs(y), ref)
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
        timers[name] = harness.tvm_timer(cm, x)
        log(f"{label}: {name} compiled in {compile_s:.1f} s, max rel. error vs onnxruntime {err:.1e}")
    row["variants"][ORT] = {"rel_err_vs_onnxruntime": 0.0}
    order = [n for n in HOST_VARIANTS if n in timers]
    timed = harness.measure(
        {n: timers[n] for n in order}, first, settings, lambda msg: log(f"{label}: {msg}")
    )
    for name in order:
        row["variants"][name].update(timed[name])
        t = timed[name]
        why = "" if t["trusted"] else f"; not measured enough: {', '.join(t['untrusted_reasons'])}"
        log(
            f"{label}: {name} median {t['median_s'] * 1e3:.4g} ms per call "
            f"({t['rounds']} rounds x {t['number']} calls, spread {t['spread']:.0%}{why})"
        )
    v = row["variants"]
    tbn = v[TBN]["median_s"]
    others = [n for n in order if n != TBN]
    row["speedup"] = {f"vs_{n}": v[n]["median_s"] / tbn for n in others}
    row["speedup_trusted"] = {f"vs_{n}": bool(v[n]["trusted"] and v[TBN]["trusted"]) for n in others}
    best = v[TBN]["min_s"]
    row["speedup_fastest_rounds"] = {f"vs_{n}": v[n]["min_s"] / best for n in others}
    row["outputs_within_tolerance"] = all(
        v[n]["rel_err_vs_onnxruntime"] <= REL_TOLERANCE for n in order if n != ORT
    )
    for cm in compiled.values():
        cm.close()
    del compiled, timers, sess, model, model_bytes
    gc.collect()
    return row


# ------------------------------------------------------------------------------------ cortex-m
def _board():
    from tbn_tvm.targets.cortex_m import get_board

    return get_board("cortex-m4")


def _mcu_build(
    model, compress: bool, feeds: Feeds, case: Case, log: Log, label: str, options: dict | None = None
) -> tuple[dict, list[np.ndarray] | None]:
    """Compile for cortex-m4 (``options``: more keywords of ``tbn_tvm.compile``, e.g.
    ``ram_size``), run the stacked ``feeds`` (name -> ``[N, *input_shape]``) on QEMU counting
    instructions and estimated cycles.  Returns the figures and the outputs (each
    ``[N, *output_shape]``; ``None`` when the build failed)."""
    import tbn_tvm

    n = len(next(iter(feeds.values())))
    t0 = time.perf_counter()
    try:
        cm = tbn_tvm.compile(model, "cortex-m4", compress=compress, **_compile_opts(case), **(options or {}))
    except TBNError as e:
        log(f"{label}: not built: {e}")
        return {"status": "not built", "reason": " ".join(str(e).split())}, None
    compile_s = time.perf_counter() - t0
    try:
        y = cm.run(feeds if len(feeds) != 1 else next(iter(feeds.values())), count_instructions=True)
        stats = cm.last_run_stats
        rep = cm.report()
    finally:
        cm.close()
    fig = {
        "status": "ok",
        "board": rep.get("board"),
        "qemu_machine": rep.get("qemu_machine"),
        "instructions_per_inference": stats.get("instructions_per_inference"),
        "instructions_min": stats.get("instructions_min"),
        "instructions_max": stats.get("instructions_max"),
        # the QEMU plugin's estimate from the Cortex-M4 / M7 Technical Reference Manuals' timings
        "estimated_cycles_m4_per_inference": stats.get("estimated_cycles_m4_per_inference"),
        "estimated_cycles_m7_per_inference": stats.get("estimated_cycles_m7_per_inference"),
        "flash_bytes": rep["flash_bytes"],
        "ram_bytes": rep["ram_bytes"],
        "weight_bytes": rep["library_weight_bytes"],
        "arena_bytes": rep.get("arena_bytes"),
        "stack_peak_bytes": stats.get("stack_peak_bytes"),
        "samples": int(n),
        "compile_s": round(compile_s, 2),
        "qemu_s": round(stats["seconds"], 2),
    }
    if options:
        fig["compile_options"] = dict(options)
        for key in ("memory", "activations", "activation_accuracy", "patchwise"):
            if rep.get(key) is not None:
                fig[key] = rep[key]
    ins, cyc = fig["instructions_per_inference"], fig["estimated_cycles_m4_per_inference"]
    log(
        f"{label}: {ins:,.0f} instructions per inference"
        + (f" (estimated {cyc:,} Cortex-M4 cycles)" if cyc is not None else "")
        + f", flash {fig['flash_bytes']:,} B, RAM {fig['ram_bytes']:,} B ({n} samples, "
        f"{stats['seconds']:.1f} s on QEMU)"
    )
    return fig, _outputs(y)


def _ort_outputs(model, feeds: Feeds, threads: int) -> list[np.ndarray]:
    """onnxruntime's outputs for each of the N stacked samples: one ``[N, *shape]`` per output."""
    sess = harness.ort_session(model.SerializeToString(), threads)
    n = len(next(iter(feeds.values())))
    per_sample = [sess.run(None, {k: v[i] for k, v in feeds.items()}) for i in range(n)]
    return [np.stack([outs[j] for outs in per_sample]) for j in range(len(per_sample[0]))]


def _check(fig: dict, ys: list[np.ndarray], refs: list[np.ndarray], case: Case) -> None:
    fig["rel_err_vs_onnxruntime"] = outputs_rel_err(ys, refs)
    if case.classifier and len(ys) == 1:
        n = len(ys[0])
        fig["predictions_equal_onnxruntime"] = float(
            (ys[0].reshape(n, -1).argmax(1) == refs[0].reshape(n, -1).argmax(1)).mean()
        )


def _cmsis_nn(source: tuple[Path | None, str] | None, images, labels, log: Log) -> dict | None:
    """The CMSIS-NN int8 build of the authors' MLP (:mod:`benchmarks.cmsis_nn`), or why not."""
    from benchmarks import cmsis_nn

    if source is None:
        return None
    path, how = source
    if path is None:
        log(f"cortex-m4 authors_mnist_mlp {CMSIS_INT8}: skipped: {how}")
        return {"status": "skipped", "reason": how}
    try:
        fig = cmsis_nn.run(path, images, labels, log)
    except TBNError as e:
        reason = " ".join(str(e).split())
        log(f"cortex-m4 authors_mnist_mlp {CMSIS_INT8}: not built: {reason}")
        return {"status": "not built", "reason": reason}
    fig["source"] = how
    return fig


def run_cortex_m(
    case: Case,
    settings: Settings,
    threads: int,
    log: Log,
    cmsis_nn: tuple[Path | None, str] | None = None,
) -> dict:
    """tbn-tvm and the dense fp32 build of one model (batch 1) on QEMU Cortex-M4; for the
    authors' MLP also CMSIS-NN int8 when ``cmsis_nn`` is given (``(source, how)`` of
    :func:`benchmarks.cmsis_nn.find_source`; a ``None`` source gives a skipped row)."""
    model = case.build(1)
    out: dict = {"model": case.key, "builds": {}}
    board = _board()
    mnist = case.key == "authors_mnist_mlp" and case.classifier
    if mnist:
        from tbn_tvm import zoo
        from tbn_tvm.datasets import load_mnist_test

        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        images, labels = load_mnist_test()
        images, labels = images[: settings.mnist_samples], labels[: settings.mnist_samples]
        feeds = {model.graph.input[0].name: images.reshape(len(images), *shape).astype(np.float32)}
    else:
        samples = [case.sample(model, 1 + i) for i in range(settings.mcu_samples)]
        feeds = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    ref = _ort_outputs(model, feeds, threads)
    fig, y = _mcu_build(model, True, feeds, case, log, f"cortex-m4 {case.key} {TBN}")
    if y is not None:
        _check(fig, y, ref, case)
    out["builds"][TBN] = fig
    for key, title, options in case.mcu_variants:  # the same model under a RAM limit, float16 ...
        vfig, vy = _mcu_build(model, True, feeds, case, log, f"cortex-m4 {case.key} {key}", options)
        if vy is not None:
            _check(vfig, vy, ref, case)
        out["builds"][key] = {"title": title, **vfig}
    if mnist and y is not None:
        pred = y[0].reshape(len(images), -1).argmax(1)
        numpy_ref = zoo.authors_mnist_mlp_reference(images)
        out["mnist"] = {
            "images": int(len(images)),
            "accuracy": float((pred == labels).mean()),
            "predictions_equal_numpy_reference": int((pred == numpy_ref.argmax(1)).sum()),
            "predictions_equal_onnxruntime": int((pred == ref[0].reshape(len(images), -1).argmax(1)).sum()),
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
        sub = {k: v[:n] for k, v in feeds.items()}
        fig, y = _mcu_build(model, False, sub, case, log, f"cortex-m4 {case.key} {TVM_FP32}")
        if y is not None:
            _check(fig, y, [r[:n] for r in ref], case)
        out["builds"][TVM_FP32] = fig
    tbn, dense = out["builds"][TBN], out["builds"][TVM_FP32]
    if mnist:
        cm = _cmsis_nn(cmsis_nn, images, labels, log)
        if cm is not None:
            out["builds"][CMSIS_INT8] = cm
            if cm.get("status") == "ok" and tbn.get("status") == "ok":
                out["fewer_instructions_than_cmsis_nn"] = (
                    cm["instructions_per_inference"] / tbn["instructions_per_inference"]
                )
                out["smaller_flash_than_cmsis_nn"] = cm["flash_bytes"] / tbn["flash_bytes"]
                c4, t4 = (
                    cm.get("estimated_cycles_m4_per_inference"),
                    tbn.get("estimated_cycles_m4_per_inference"),
                )
                if c4 and t4:
                    out["fewer_estimated_m4_cycles_than_cmsis_nn"] = c4 / t4
                c7, t7 = (
                    cm.get("estimated_cycles_m7_per_inference"),
                    tbn.get("estimated_cycles_m7_per_inference"),
                )
                if c7 and t7:
                    out["fewer_estimated_m7_cycles_than_cmsis_nn"] = c7 / t7
    if tbn.get("status") == "ok" and dense.get("status") == "ok":
        out["fewer_instructions_than_dense"] = (
            dense["instructions_per_inference"] / tbn["instructions_per_inference"]
        )
        out["smaller_flash_than_dense"] = dense["flash_bytes"] / tbn["flash_bytes"]
        if dense.get("estimated_cycles_m4_per_inference") and tbn.get("estimated_cycles_m4_per_inference"):
            out["fewer_estimated_m4_cycles_than_dense"] = (
                dense["estimated_cycles_m4_per_inference"] / tbn["estimated_cycles_m4_per_inference"]
            )
    if mnist and tbn.get("status") == "ok":
        out["authors_instructions_per_inference"] = AUTHORS_INSTRUCTIONS
        out["authors_source"] = AUTHORS_SOURCE
        out["fewer_instructions_than_authors"] = AUTHORS_INSTRUCTIONS / tbn["instructions_per_inference"]
    out["outputs_within_tolerance"] = all(
        b.get("rel_err_vs_onnxruntime", 0.0) <= build_tolerance(b) for b in out["builds"].values()
    )
    gc.collect()
    return out


def build_tolerance(build: dict) -> float:
    """The error against onnxruntime a Cortex-M build is held to: :data:`REL_TOLERANCE`, or
    :data:`REL_TOLERANCE_FLOAT16` for a build that stores its activations as float16."""
    return REL_TOLERANCE_FLOAT16 if build.get("activations") == "float16" else REL_TOLERANCE


# ------------------------------------------------------------------------------------ verdicts
def acceptance(report: dict) -> list[dict]:
    """Issue 4's acceptance figures next to the measured ones (a report, not a test).  A
    speed-up from measurements that fail the trust rule is not met (``"trusted": false``)."""
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
        trusted = host.get("speedup_trusted", {})
        for other, title, need in (
            (ORT, "onnxruntime fp32", ACCEPT_HOST_VS_ORT),
            (TVM_FP32, "TVM's fp32 build", ACCEPT_HOST_VS_TVM),
        ):
            key = f"vs_{other}"
            ok = trusted.get(key, True)
            item = {
                "criterion": f"host batch 1, MLP p=8: speed-up over {title}",
                "required": f">= {need:g}x",
                "measured": sp[key],
                "pass": ok and sp[key] >= need,
                "variants": [TBN, other],
            }
            if not ok:
                item["trusted"] = False
            items.append(item)
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


# Issue 13's and issue 10's thresholds (reported next to the measured figures, not tests)
ISSUE13_MCU_INSTRUCTIONS = 60_000
ISSUE13_VS_CMSIS = 3.3
ISSUE13_CNN_RATIO = 0.5  # compressed build's instructions / the dense build's
ISSUE10_TUNED_VS_ORT = {("tiled_resnet", 1): 1.5, ("tiled_resnet", 32): 1.0, ("wide_mlp_p8", 32): 5.0}
# Issue 22's
ISSUE22_VS_CMSIS_CYCLES = 3.0  # CMSIS-NN int8's estimated M4 cycles / the authors' MLP's
ISSUE22_RAM = (  # (model, build key, title, RAM limit in bytes, max rel. error vs onnxruntime)
    ("tiled_resnet_16", TBN_128K, "ResNet-style CNN 16/32/64, fp32 activations", 128 * 1024, 1e-5),
    (
        "tiled_resnet_16",
        TBN_64K_FP16,
        "ResNet-style CNN 16/32/64, float16 activations",
        64 * 1024,
        REL_TOLERANCE_FLOAT16,
    ),
    ("conv_bn_cnn_dense", TBN_24K, "conv-BN-ReLU-pool CNN, fp32 activations", 24 * 1024, 1e-5),
)


def cycles_vs_cmsis_text(ratio: float, need: float = ISSUE22_VS_CMSIS_CYCLES) -> str:
    """How the authors' MLP's estimated cycles compare with CMSIS-NN's, said plainly.

    >>> cycles_vs_cmsis_text(3.6)
    '3.60x fewer (the 3x bar met)'
    >>> cycles_vs_cmsis_text(2.4)
    '2.40x fewer: the 3x bar is not met, short by 0.60x (CMSIS-NN would need 1.25x more cycles)'
    """
    if ratio >= need:
        return f"{ratio:.2f}x fewer (the {need:g}x bar met)"
    return (
        f"{ratio:.2f}x fewer: the {need:g}x bar is not met, short by {need - ratio:.2f}x "
        f"(CMSIS-NN would need {need / ratio:.2f}x more cycles)"
    )


def issue_figures(report: dict) -> list[dict]:
    """Issues 13 and 10: their thresholds next to this run's figures (``pass`` is ``None``
    where the run did not measure the figure in the issue's configuration)."""
    items: list[dict] = []
    mcu = {r["model"]: r for r in report["cortex_m"]}
    mlp = mcu.get("authors_mnist_mlp")
    if mlp and mlp["builds"][TBN].get("status") == "ok":
        b = mlp["builds"][TBN]
        ins = b["instructions_per_inference"]
        items.append(
            {
                "issue": 13,
                "criterion": "authors' MNIST MLP on QEMU M4: instructions per inference",
                "required": f"<= {ISSUE13_MCU_INSTRUCTIONS:,}",
                "measured": f"{ins:,.0f}",
                "pass": ins <= ISSUE13_MCU_INSTRUCTIONS,
            }
        )
        c = mlp["builds"].get(CMSIS_INT8, {})
        if c.get("status") == "ok":
            r = c["instructions_per_inference"] / ins
            items.append(
                {
                    "issue": 13,
                    "criterion": "authors' MNIST MLP: fewer instructions than CMSIS-NN int8 (same harness)",
                    "required": f">= {ISSUE13_VS_CMSIS:g}x",
                    "measured": f"{r:.2f}x ({c['instructions_per_inference']:,.0f} / {ins:,.0f})",
                    "pass": r >= ISSUE13_VS_CMSIS,
                }
            )
        else:
            items.append(
                {
                    "issue": 13,
                    "criterion": "authors' MNIST MLP: fewer instructions than CMSIS-NN int8 (same harness)",
                    "required": f">= {ISSUE13_VS_CMSIS:g}x",
                    "measured": f"CMSIS-NN row {c.get('status', 'absent')}: {c.get('reason', '')}",
                    "pass": None,
                }
            )
        items.append(
            {
                "issue": 13,
                "criterion": "authors' MNIST MLP: weight bytes / firmware flash",
                "required": "<= 3,340 / <= 9 KB (9,216)",
                "measured": f"{b['weight_bytes']:,} / {b['flash_bytes']:,}",
                "pass": b["weight_bytes"] <= 3340 and b["flash_bytes"] <= 9216,
            }
        )
        mn = mlp.get("mnist", {})
        if mn:
            acc = mn["accuracy"] * 100
            items.append(
                {
                    "issue": 13,
                    "criterion": "authors' MNIST MLP: accuracy on the 10,000 test images",
                    "required": "95.93 % ± 0.02",
                    "measured": f"{acc:.2f} % on {mn['images']:,}",
                    "pass": abs(acc - 95.93) <= 0.02 if mn["images"] == 10_000 else None,
                }
            )
    for key, r in mcu.items():
        if not key.startswith("conv_bn_cnn"):
            continue
        tbn, dense = r["builds"][TBN], r["builds"].get(TVM_FP32, {})
        if tbn.get("status") == "ok" and dense.get("status") == "ok":
            ratio = tbn["instructions_per_inference"] / dense["instructions_per_inference"]
            items.append(
                {
                    "issue": 13,
                    "criterion": f"{key}: compressed build's instructions / the dense build's (QEMU M4)",
                    "required": f"<= {ISSUE13_CNN_RATIO:g}",
                    "measured": f"{ratio:.3f} ({tbn['instructions_per_inference']:,.0f} / "
                    f"{dense['instructions_per_inference']:,.0f})",
                    "pass": ratio <= ISSUE13_CNN_RATIO,
                }
            )
            err = max(tbn.get("rel_err_vs_onnxruntime", 0.0), dense.get("rel_err_vs_onnxruntime", 0.0))
            items.append(
                {
                    "issue": 13,
                    "criterion": f"{key}: max rel. error vs onnxruntime (both builds, QEMU M4)",
                    "required": f"<= {REL_TOLERANCE:g}",
                    "measured": f"{err:.1e}",
                    "pass": err <= REL_TOLERANCE,
                }
            )
    items += _issue22_figures(mcu)
    rows = {(r["model"], r["batch"]): r for r in report["host"]}
    items += _issue23_figures(mcu, rows)
    for (model, batch), need in ISSUE10_TUNED_VS_ORT.items():
        r = rows.get((model, batch))
        if r is None or TBN_TUNED not in r["variants"]:
            continue
        v = r["variants"]
        ratio = v[ORT]["median_s"] / v[TBN_TUNED]["median_s"]
        trusted = bool(v[ORT]["trusted"] and v[TBN_TUNED]["trusted"])
        items.append(
            {
                "issue": 10,
                "criterion": f"host {model} batch {batch}: tuned tbn-tvm over onnxruntime fp32 "
                f"({r['tuning']['trials']} trials)",
                "required": f">= {need:g}x",
                "measured": f"{ratio:.2f}x" + ("" if trusted else " (not measured enough)"),
                "pass": trusted and ratio >= need,
            }
        )
    return items


ISSUE23_MCU_RATIO = 0.5  # compact build's instructions / the comparison build's (QEMU M4)


def _issue23_figures(mcu: dict[str, dict], host: dict[tuple[str, int], dict]) -> list[dict]:
    """Issue 23: on QEMU M4 the codebook conv against its binary twin and the 4-bit bit-plane GEMM
    against its dense build (instructions, both within 1e-5 of onnxruntime); on the host the
    bit-plane GEMM at batch 1 against onnxruntime fp32."""
    items: list[dict] = []

    def ok(build: dict) -> bool:
        return build.get("status") == "ok"

    pairs = (
        (
            "codebook_conv_96x48",
            TBN,
            "binary_conv_96x48",
            TBN,
            "codebook conv 96x48x3x3 τ=4 at 12x12 / its binary twin",
        ),
        (
            "bitplane_gemm_k4",
            TBN,
            "bitplane_gemm_k4",
            TVM_FP32,
            "4-bit bit-plane GEMM 128x512 / its dense build",
        ),
    )
    for model, key, other_model, other_key, title in pairs:
        if model not in mcu or other_model not in mcu:
            continue
        a, b = mcu[model]["builds"].get(key, {}), mcu[other_model]["builds"].get(other_key, {})
        crit = f"{title}: instructions (QEMU M4), both within {REL_TOLERANCE:g} of onnxruntime"
        need = f"<= {ISSUE23_MCU_RATIO:g}x"
        if not (ok(a) and ok(b)):
            why = "; ".join(
                f"{x.get('status', 'absent')}: {x.get('reason', '')}" for x in (a, b) if not ok(x)
            )
            items.append({"issue": 23, "criterion": crit, "required": need, "measured": why, "pass": False})
            continue
        ratio = a["instructions_per_inference"] / b["instructions_per_inference"]
        err = max(
            a.get("rel_err_vs_onnxruntime", float("inf")), b.get("rel_err_vs_onnxruntime", float("inf"))
        )
        items.append(
            {
                "issue": 23,
                "criterion": crit,
                "required": need,
                "measured": f"{ratio:.3f}x ({a['instructions_per_inference']:,.0f} / "
                f"{b['instructions_per_inference']:,.0f}), error {err:.1e}",
                "pass": ratio <= ISSUE23_MCU_RATIO and err <= REL_TOLERANCE,
            }
        )
    r = host.get(("bitplane_gemm_k4", 1))
    if r is not None and TBN in r["variants"] and ORT in r["variants"]:
        v = r["variants"]
        ratio = v[ORT]["median_s"] / v[TBN]["median_s"]
        trusted = bool(v[ORT]["trusted"] and v[TBN]["trusted"])
        items.append(
            {
                "issue": 23,
                "criterion": "host: 4-bit bit-plane GEMM 128x512 at batch 1 over onnxruntime fp32 (default build)",
                "required": "> 1x",
                "measured": f"{ratio:.2f}x ({v[TBN]['median_s'] * 1e6:.2f} vs {v[ORT]['median_s'] * 1e6:.2f} µs)"
                + ("" if trusted else " (not measured enough)"),
                "pass": trusted and ratio > 1.0,
            }
        )
    return items


def _issue22_figures(mcu: dict[str, dict]) -> list[dict]:
    """Issue 22: the authors' MLP against CMSIS-NN int8 in estimated Cortex-M4 cycles (same
    harness, same plugin); the ResNet-style CNN 16/32/64 for a 128 KiB and a 64 KiB board, the
    conv-BN CNN for a 24 KiB one."""
    items: list[dict] = []
    mlp = mcu.get("authors_mnist_mlp")
    if mlp and mlp["builds"][TBN].get("status") == "ok":
        tbn, c = mlp["builds"][TBN], mlp["builds"].get(CMSIS_INT8, {})
        crit = "authors' MNIST MLP: fewer estimated Cortex-M4 cycles than CMSIS-NN int8 (same harness)"
        need = f">= {ISSUE22_VS_CMSIS_CYCLES:g}x"
        t4, c4 = tbn.get("estimated_cycles_m4_per_inference"), c.get("estimated_cycles_m4_per_inference")
        if c.get("status") == "ok" and t4 and c4:
            r = c4 / t4
            items.append(
                {
                    "issue": 22,
                    "criterion": crit,
                    "required": need,
                    "measured": f"{cycles_vs_cmsis_text(r)} ({c4:,.0f} / {t4:,.0f})",
                    "pass": r >= ISSUE22_VS_CMSIS_CYCLES,
                }
            )
        else:
            why = (
                "no cycle estimate from the QEMU plugin"
                if c.get("status") == "ok"
                else f"CMSIS-NN row {c.get('status', 'absent')}: {c.get('reason', '')}"
            )
            items.append({"issue": 22, "criterion": crit, "required": need, "measured": why, "pass": None})
    for model, key, title, limit, tol in ISSUE22_RAM:
        if model not in mcu:
            continue
        b = mcu[model]["builds"].get(key, {})
        crit = (
            f"{title}, built for a {limit // 1024} KiB board: RAM and max rel. error vs onnxruntime (QEMU M4)"
        )
        need = f"RAM <= {limit:,} B, error <= {tol:g}"
        if b.get("status") != "ok":
            items.append(
                {
                    "issue": 22,
                    "criterion": crit,
                    "required": need,
                    "measured": f"{b.get('status', 'absent')}: {b.get('reason', '')}",
                    "pass": False,
                }
            )
            continue
        err = b.get("rel_err_vs_onnxruntime", float("inf"))
        items.append(
            {
                "issue": 22,
                "criterion": crit,
                "required": need,
                "measured": f"RAM {b['ram_bytes']:,} B, error {err:.1e}",
                "pass": b["ram_bytes"] <= limit and err <= tol,
            }
        )
    return items


# ------------------------------------------------------------------------------------ driver
def check_dependencies(need_qemu: bool) -> None:
    """onnxruntime and matplotlib, and the Arm toolchain with QEMU when ``need_qemu``."""
    for mod, why in (("onnxruntime", "the baseline"), ("matplotlib", "the plot")):
        if importlib.util.find_spec(mod) is None:
            raise TBNError(
                f"{mod} is not installed ({why} of the benchmarks)", hint="pip install 'tbn-tvm[bench]'"
            )
    if need_qemu:
        from tbn_tvm.targets.cortex_m import ensure_toolchain

        ensure_toolchain(install=False, need_qemu=True)


def _model_entry(case: Case, total: dict, layers: list[dict], input_shape: list[int], extra: dict) -> dict:
    return {
        "key": case.key,
        "title": case.title,
        "short": case.short or case.key,
        "generator": case.generator,
        "input_shape": input_shape,
        "parameters": total["fp32_bytes"] // 4,
        "fp32_bytes": total["fp32_bytes"],
        "weight_bytes": total["weight_bytes"],
        "compression": total["compression"],
        "layers": [
            {k: la.get(k) for k in ("name", "op", "weight_shape", "format", "p", "alpha", "bytes")}
            for la in layers
        ],
        **extra,
    }


def run_cases(
    cases: list[Case],
    settings: Settings,
    *,
    command: str,
    kind: str,
    threads: int | None = None,
    skip_cortex_m: bool = False,
    cmsis_nn: tuple[Path | None, str] | None = None,
    git_dir: Path | None = None,
    meta: dict | None = None,
    log: Log | None = None,
) -> dict:
    """Run ``cases`` (host rows at each of their batches, then Cortex-M where they ask for it);
    returns the report dict (see :mod:`benchmarks.report`).  ``kind`` is ``"suite"`` or
    ``"model"`` (a ``--model`` run); ``wall_s`` counts from the start of ``log``."""
    import tbn_tvm

    log = log or Log()
    if threads is not None and threads < 1:
        raise TBNError("--threads must be at least 1")
    need_qemu = not skip_cortex_m and any(c.cortex_m for c in cases)
    check_dependencies(need_qemu)
    threads = threads or harness.usable_cpus()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    tvm_threads = harness.threads_setup(threads)
    batches = sorted({b for c in cases for b in c.batches})
    log(
        f"{'quick' if settings.quick else 'full'} run: {len(cases)} model{'s' if len(cases) != 1 else ''}, "
        f"batches {tuple(batches)}, TVM threads {tvm_threads}, onnxruntime threads {threads}"
    )
    report: dict = {
        "meta": {
            "command": command,
            "kind": kind,
            "quick": settings.quick,
            "started": started,
            "load_average_start": harness.load_average(),
            "git": harness.git_revision(git_dir) if git_dir else None,
            **(meta or {}),
        },
        "settings": {**asdict(settings), "skip_cortex_m": skip_cortex_m},
        "trust_rule": harness.trust_rule(),
        "machine": harness.machine(),
        "versions": harness.versions(),
        "threads": {"tvm": tvm_threads, "onnxruntime_intra_op": threads, "onnxruntime_inter_op": 1},
        "host_target": None,
        "models": [],
        "host": [],
        "cortex_m": [],
        "real": [],  # issue 19's real-architecture rows (benchmarks/real.py)
        "real_models": [],
    }
    if kind == "suite":
        report["authors"] = {"instructions_per_inference": AUTHORS_INSTRUCTIONS, "source": AUTHORS_SOURCE}
    for case in cases:
        if case.family == real.FAMILY:  # host only, its own table
            for batch in case.batches if case.host else ():
                row, model_entry = real.run_real(case, batch, settings, threads, log)
                report["real"].append(row)
                if not any(m["key"] == case.key for m in report["real_models"]):
                    report["real_models"].append(model_entry)
                else:  # the compiler's figures of the first batch's build, if that one failed
                    first = next(m for m in report["real_models"] if m["key"] == case.key)
                    for k, val in model_entry.items():
                        first.setdefault(k, val)
            continue
        entry = None
        for batch in case.batches if case.host else ():
            row = run_host(case, batch, settings, threads, log)
            layers, total = row.pop("layers", None), row.pop("total", None)
            if entry is None:
                shape = [1, *row["input_shape"][1:]] if kind == "suite" else row["input_shape"]
                extra = {"input_shapes": row["input_shapes"]} if "input_shapes" in row else {}
                entry = _model_entry(case, total, layers, shape, extra)
                report["models"].append(entry)
            report["host"].append(row)
        if entry is None:  # not timed on the host: the formats from tbn_tvm.inspect
            model = case.build(case.batches[0])
            feed = case.sample(model, 1)
            rep = tbn_tvm.inspect(model).to_dict()
            first = list(next(iter(feed.values())).shape) if feed else []
            extra = {"input_shapes": {k: list(v.shape) for k, v in feed.items()}} if kind == "model" else {}
            report["models"].append(_model_entry(case, rep["total"], rep["layers"], first, extra))
        if case.cortex_m and not skip_cortex_m:
            report["cortex_m"].append(run_cortex_m(case, settings, threads, log, cmsis_nn))
    report["host_target"] = report["host"][0].get("target") if report["host"] else None
    if report["cortex_m"]:
        from tbn_tvm.targets.cortex_m.qemu import CYCLES_MODEL

        report["cycles_model"] = CYCLES_MODEL  # what the estimated cycles of the Cortex-M rows are
    report["meta"]["wall_s"] = round(time.perf_counter() - log.t0, 1)
    report["meta"]["load_average_end"] = harness.load_average()
    report["acceptance"] = acceptance(report) if kind == "suite" else []
    report["issue_figures"] = issue_figures(report) if kind == "suite" else []
    report["real_geomeans"] = real.geomeans(report)
    if kind == "suite" and not report["real"] and real.unavailable():
        report["meta"]["real_unavailable"] = f"the real-architecture table needs {real.unavailable()}"
    report["issue19_figures"] = real.issue19_figures(report)
    return report
