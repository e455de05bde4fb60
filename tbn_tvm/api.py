"""The Python API: ``compile`` a model for a target, ``run`` it, ``save`` / ``load`` the artifact.

>>> import numpy as np, tbn_tvm
>>> m = tbn_tvm.compile("examples/tbn-mnist-mlp.onnx", target="llvm")   # doctest: +SKIP
>>> m.run(np.zeros((1, 784), np.float32)).shape                         # doctest: +SKIP
(1, 10)
>>> m.save("out/mlp")                                                   # doctest: +SKIP
>>> tbn_tvm.load("out/mlp").report()["total"]["weight_bytes"]           # doctest: +SKIP
3316
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from tbn_tvm import __version__
from tbn_tvm.errors import TBNError
from tbn_tvm.frontend.onnx import TensorSpec
from tbn_tvm.targets import TargetSpec, resolve_target

MANIFEST = "manifest.json"


def check_inputs(specs: list[TensorSpec], inputs: Mapping[str, np.ndarray]):
    """Check arrays by input name against the model's input ``specs`` (every input present,
    its dtype, its shape in one of the forms of :mod:`tbn_tvm.batching`); returns them as
    :class:`tbn_tvm.batching.Samples`.  Raises :class:`TBNError` naming what is wrong."""
    from tbn_tvm.batching import as_samples

    given = {}
    for spec in specs:
        if spec.name not in inputs:
            raise TBNError(f"missing input '{spec.name}'")
        a = np.asarray(inputs[spec.name])
        if a.dtype != np.dtype(spec.dtype):
            raise TBNError(
                f"input '{spec.name}' has dtype {a.dtype}, the model expects {spec.dtype}",
                hint=f"convert it, e.g. x.astype(np.{spec.dtype})",
            )
        given[spec.name] = a
    return as_samples(specs, given)


class CompiledModel:
    """A model built for one target.  Run it, look at its report, save it."""

    def __init__(
        self,
        target: TargetSpec,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        report: dict,
        backend,
        extra: dict | None = None,
    ) -> None:
        self.target = target
        self.inputs = inputs
        self.outputs = outputs
        self._report = report
        self.backend = backend
        self.extra = dict(extra or {})
        self.last_run_stats: dict = {}

    # ------------------------------------------------------------------ running
    def _stack(self, inputs):
        """Validate inputs; returns them as per-input arrays ``[N, *shape]`` with the form they
        were given in (:func:`tbn_tvm.batching.as_samples`: one sample, N stacked on a new
        axis, or N on the model's batch axis of 1)."""
        from tbn_tvm.batching import ONE, Samples

        if not self.inputs:  # a model without inputs (constants only): one run
            if inputs not in (None, {}) and not (isinstance(inputs, Mapping) and not inputs):
                raise TBNError("the model has no inputs: call run() or run({})")
            return Samples([], 1, ONE)
        if isinstance(inputs, np.ndarray) or not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(t.name for t in self.inputs)
                raise TBNError(
                    f"the model has {len(self.inputs)} inputs ({names}): pass a dict name -> array"
                )
            inputs = {self.inputs[0].name: inputs}
        unknown = set(inputs) - {t.name for t in self.inputs}
        if unknown:
            raise TBNError(
                f"unknown input name(s): {', '.join(sorted(unknown))}",
                hint="inputs are " + ", ".join(t.name for t in self.inputs),
            )
        return check_inputs(self.inputs, inputs)

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray] | None = None, **run_options):
        """Run one sample (arrays of the input shapes) or N samples: ``[N, *shape]``, or, for an
        input whose leading dimension is 1 (``[1, 1, 28, 28]``), ``[N, *shape[1:]]`` on that
        batch axis (``[4, 1, 28, 28]``: 4 samples); see :mod:`tbn_tvm.batching`.

        Returns one array for a single-output model, else a dict name -> array, in the form the
        inputs were given in: the output shapes for one sample, ``[N, *output_shape]`` for
        stacked samples, ``[N, *output_shape[1:]]`` on the batch axis (outputs with a leading
        1).  ``run_options`` go to the back end (:meth:`run_options`; e.g.
        ``count_instructions=True`` or ``port="/dev/ttyACM0"`` for Cortex-M).  Timing of the call and the back end's statistics
        are left in :attr:`last_run_stats`.  Raises :class:`TBNError` for inputs of the wrong
        name, dtype or shape, and for unknown options."""
        known = type(self.backend).run_options
        unknown = sorted(set(run_options) - set(known))
        if unknown:
            valid = ", ".join(sorted(known)) or "none"
            raise TBNError(
                f"unknown run option(s) for a {self.target.family} build: {', '.join(unknown)}",
                hint=f"valid: {valid}",
            )
        from tbn_tvm.batching import restore_outputs

        samples = self._stack(inputs)
        arrays, n = samples.arrays, samples.count
        t0 = time.perf_counter()
        if n == 0:
            outs, stats = [np.zeros((0, *o.shape), o.dtype) for o in self.outputs], {}
        else:
            outs, stats = self.backend.run(arrays, **run_options)
        elapsed = time.perf_counter() - t0
        self.last_run_stats = {
            "samples": n,
            "seconds": elapsed,
            "seconds_per_inference": elapsed / max(n, 1),
            **stats,
        }
        outs = restore_outputs(outs, samples.layout)
        if len(outs) == 1:
            return outs[0]
        return {spec.name or f"output{i}": o for i, (spec, o) in enumerate(zip(self.outputs, outs))}

    def run_options(self) -> dict[str, str]:
        """The keyword options :meth:`run` accepts for this target, with their help."""
        return {k: v.help for k, v in type(self.backend).run_options.items()}

    def time(
        self, inputs: np.ndarray | Mapping[str, np.ndarray], number: int = 10, repeat: int = 5
    ) -> list[float]:
        """The model's own time: seconds per inference of one sample (the first, in any form
        :meth:`run` accepts), one value per repeat, each the mean of ``number`` back-to-back
        calls, measured by TVM's time evaluator inside the runtime (no Python, no copies of the
        inputs, no loading).  Host builds; Cortex-M builds report instructions (QEMU) or
        cycles (a board) through :meth:`run` and ``tbn-tvm run --repeat/--number``."""
        timer = getattr(self.backend, "time", None)
        if timer is None:
            raise TBNError(f"timing is not available for a {self.target.family} build")
        return timer([a[0] for a in self._stack(inputs).arrays], number=number, repeat=repeat)

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}: {t.dtype}[{'x'.join(map(str, t.shape))}]" for t in self.inputs)
        outs = ", ".join(f"{t.dtype}[{'x'.join(map(str, t.shape))}]" for t in self.outputs)
        total = self._report.get("total", {})
        layers = self._report.get("layers", [])
        compact = sum(1 for layer in layers if layer.get("format") != "dense")
        where = f", board {self.extra['board']}" if self.extra.get("board") else ""
        sizes = "".join(
            f", {label} {self.extra[key]:,} B"
            for key, label in (("flash_bytes", "flash"), ("ram_bytes", "RAM"))
            if isinstance(self.extra.get(key), int)
        )
        return (
            f"<CompiledModel {self.target.name} ({self.target.family}{where}): ({ins}) -> ({outs}); "
            f"{len(layers)} layers, {compact} compact, {total.get('weight_bytes', 0):,} weight bytes{sizes}>"
        )

    def close(self) -> None:
        """Release what the build holds outside the process (temporary files); idempotent."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    # ------------------------------------------------------------------ reporting
    def report(self) -> dict:
        """Per-layer formats, totals, target and sizes (the manifest without file names)."""
        return {
            "target": self.target.name,
            "target_family": self.target.family,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            **self._report,
            **{k: v for k, v in self.extra.items() if k != "artifact"},
        }

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | os.PathLike, force: bool = False) -> Path:
        """Write the artifact and ``manifest.json`` into ``out_dir``, all or nothing.

        An existing ``out_dir`` is replaced only when it holds nothing but an earlier tbn-tvm
        output (``force=True`` replaces it anyway); see :mod:`tbn_tvm.outdir`."""
        from tbn_tvm.outdir import write_dir
        from tbn_tvm.versions import package_versions

        def fill(tmp: Path) -> dict:
            files = self.backend.save(tmp)
            return {
                "tbn_tvm_version": __version__,
                **self.report(),
                "versions": {**package_versions(), **self.extra.get("versions", {})},
                "target": self.target.to_dict(),
                **files,
            }

        return write_dir(out_dir, fill, force=force)


def compile(  # noqa: A001 - the natural name for users
    model: str | os.PathLike | onnx.ModelProto,
    target: str | dict | TargetSpec | None = None,
    *,
    mcpu: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    compress: bool = True,
    reuse_rows: bool = True,
    tuning_db: str | os.PathLike | None = None,
    **options,
) -> CompiledModel:
    """Compile an ONNX model for ``target``.

    ``model``: a path or an ``onnx.ModelProto``.  ``target``: ``"llvm"`` (the default without a
    ``board``; this machine: its CPU with every vector unit it has, ``mcpu="generic"`` or
    a CPU name such as ``"x86-64-v3"`` for a portable build), an LLVM triple
    (``"aarch64-linux-gnu"``: a cross-compiled object archive), a TVM target string
    (``"llvm -mcpu=skylake"``), ``"cortex-m4"``, ``"cortex-m7"`` (see
    :func:`tbn_tvm.targets.known_targets`).  ``input_shapes`` fixes dynamic input dimensions
    (``{"x": [1, 784]}``).  ``compress=False`` builds every weight dense (TVM's plain fp32
    build, the baseline of the benchmarks); ``reuse_rows=False`` keeps compact weights but
    computes every output row.  ``tuning_db`` applies the records of ``tbn-tvm tune`` (a
    folder; records for other targets or shapes are ignored, the manifest lists the tuned
    kernels).

    Other keyword ``options`` go to the target's back end (its ``compile_options``, listed with
    their help by ``tbn_tvm.targets.backend_class(family).compile_options``):

    - Cortex-M: ``board=`` (a profile from ``tbn-tvm targets``; without ``target`` it implies
      the board's target), ``flash_size=``, ``ram_size=``, ``stack_size=`` (bytes, or strings
      such as ``"512K"``), ``measure=`` (``False``: no QEMU run at build time),
      ``uart_driver=`` (a ``.c`` file with the board's UART functions: also builds
      ``firmware_uart.elf``);
    - host: none beyond the keywords above.

    A keyword no back end knows (``bord=``) raises :class:`TBNError` naming the valid ones.
    Raises :class:`TBNError` for anything the user can fix: a bad model, an unsupported
    operator, an unknown target or option, a model too large for the board.

    >>> m = compile("examples/tbn-mnist-mlp.onnx", "cortex-m4", board="nrf52840")  # doctest: +SKIP
    """
    from tbn_tvm.targets import backend_class

    if target is None:  # a board implies its target (its CPU); else the host
        board = options.get("board")
        if isinstance(board, str):
            from tbn_tvm.targets.cortex_m.boards import get_board

            target = get_board(board).cpu
        else:
            target = "llvm" if board is None else getattr(board, "cpu", "llvm")
    spec = resolve_target(target, mcpu)
    backend_cls = backend_class(spec.family)
    unknown = sorted(set(options) - set(backend_cls.compile_options))
    if unknown:
        raise _unknown_options(spec, backend_cls, unknown)
    from tbn_tvm import progress
    from tbn_tvm.frontend.onnx import load_onnx, output_specs, to_relax
    from tbn_tvm.report import inspect

    progress.stage("import")
    # cheap checks first: TVM is imported after them
    loaded = load_onnx(model, input_shapes, family=spec.family)
    from tbn_tvm.passes.pipeline import prepare

    progress.stage("weight formats")
    layer_report = inspect(loaded)
    progress.stage("to Relax")
    mod = to_relax(loaded, [lr.layer for lr in layer_report.layers])
    outputs = output_specs(mod, loaded)
    forms: dict[str, str] = {}
    if tuning_db is not None:
        from tbn_tvm.schedules.records import read_forms, target_key, tuning_target

        forms = read_forms(tuning_db, target_key(tuning_target(spec)))
        options["tuning_db"] = tuning_db
    progress.stage("passes")
    prepared = prepare(mod, compress=compress, reuse_rows=reuse_rows, forms=forms, **backend_cls.pass_options)
    report = layer_report.to_dict()
    report.pop("model", None)
    import hashlib

    report["source"] = Path(loaded.source).name  # the file's name only: no machine path in artifacts
    report["source_sha256"] = hashlib.sha256(loaded.proto.SerializeToString(deterministic=True)).hexdigest()
    report["total"]["built_constant_bytes"] = prepared.constant_bytes()
    report["compressed_layers"] = sum(1 for layer in prepared.layers if layer.kernel)
    _mark_built_dense(report, {layer.name for layer in prepared.layers if layer.kernel})
    kinds = {layer.name: layer.kernel_kind for layer in prepared.layers if layer.kernel_kind}
    whys = {layer.name: layer.why for layer in prepared.layers if layer.why}
    built = {layer.name: layer.built_bytes for layer in prepared.layers if layer.built_bytes is not None}
    for layer in report["layers"]:  # the kernel form each compact layer was built in
        if layer["name"] in kinds:
            layer["kernel"] = kinds[layer["name"]]
        if layer["name"] in whys:  # and why the cost model chose it (kernels.cost)
            layer["kernel_choice"] = whys[layer["name"]]
        if layer["name"] in built:  # the kernel's own layout of the weight (scales included)
            layer["built_bytes"] = built[layer["name"]]
    notes = [layer.note for layer in prepared.layers if layer.note]
    if notes:
        report["notes"] = notes
    progress.stage("build")
    backend, extra = backend_cls.create(spec, prepared, loaded.inputs, outputs, **options)
    for layer in report["layers"]:  # the kernels each layer ended up in (its call sites), their flash
        steps = [s for s in extra.get("steps", []) if layer["name"] in s.get("layers", [])]
        if steps:
            layer["kernels"] = [s["kernel"] for s in steps]
        if steps and all("weight_bytes" in s for s in steps):
            layer["flash_bytes"] = sum(s["weight_bytes"] + s["code_bytes"] for s in steps)
            if all(s.get("instructions") is not None for s in steps):  # measured at build time
                layer["instructions"] = sum(s["instructions"] for s in steps)
                for key in ("estimated_cycles_m4", "estimated_cycles_m7"):
                    if all(key in s for s in steps):
                        layer[key] = sum(s[key] for s in steps)
            if all("arena_bytes" in s for s in steps):
                layer["arena_bytes"] = max(s["arena_bytes"] for s in steps)
    model = CompiledModel(getattr(backend, "spec", spec), loaded.inputs, outputs, report, backend, extra)
    backend.output_shape = outputs[0].shape if len(outputs) == 1 else None
    return model


def _mark_built_dense(report: dict, built_compact: set[str]) -> None:
    """Layers ``inspect`` finds compact but the build keeps dense (``compress=False``, or a
    layer the pass left alone) are reported as built: ``dense``, their dense bytes, the format
    found kept under ``found``; the totals follow (a shared weight counted once)."""
    delta, seen = 0, set()
    for layer in report["layers"]:
        if layer.get("format") == "dense" or layer["name"] in built_compact:
            continue
        itemsize = {"float16": 2, "float64": 8}.get(layer.get("dtype", "float32"), 4)
        dense_bytes = layer["fp32_bytes"] // 4 * itemsize
        if layer["weight"] not in seen:
            seen.add(layer["weight"])
            delta += dense_bytes - layer["bytes"]
        layer["found"] = layer["label"]
        layer.update(format="dense", label="dense", bytes=dense_bytes, bits_per_weight=float(8 * itemsize))
    if not seen:
        return
    total = report["total"]
    total["weight_bytes"] += delta
    total["constant_bytes"] += delta
    total["compression"] = (
        round(total["fp32_bytes"] / total["weight_bytes"], 2) if total["weight_bytes"] else 1.0
    )
    total["compact_layers"] = sum(1 for layer in report["layers"] if layer.get("format") != "dense")
    total["dense_layers"] = len(report["layers"]) - total["compact_layers"]


def _unknown_options(spec: TargetSpec, backend_cls, unknown: list[str]) -> TBNError:
    """The error for keywords ``compile`` does not know: the valid ones, and a near miss
    (``bord`` -> ``board``) or an option of another target family named as such."""
    import difflib

    from tbn_tvm.targets import BACKENDS, backend_class

    common = ["mcpu", "input_shapes", "compress", "reuse_rows", "tuning_db"]
    valid = list(dict.fromkeys([*common, *sorted(backend_cls.compile_options)]))
    elsewhere = {
        name: family
        for family in BACKENDS
        if family != spec.family
        for name in backend_class(family).compile_options
        if name not in valid
    }
    notes = []
    for key in unknown:
        if key in elsewhere:
            notes.append(f"{key} is a {elsewhere[key]} option")
            continue
        close = difflib.get_close_matches(key, valid + sorted(elsewhere), n=1, cutoff=0.6)
        if close:
            family = elsewhere.get(close[0])
            notes.append(f"{key}: did you mean {close[0]}" + (f" (a {family} option)" if family else ""))
    hint = f"valid: {', '.join(valid)}" + "".join(f"; {n}" for n in notes)
    return TBNError(f"unknown option(s) for a {spec.family} build: {', '.join(unknown)}", hint=hint)


def read_manifest(out: Path) -> dict:
    """The manifest of an artifact directory (TBNError when missing or not JSON)."""
    path = out / MANIFEST
    if not out.is_dir():
        raise TBNError(f"{out}: not a directory written by 'tbn-tvm compile'")
    if not path.is_file():
        raise TBNError(f"{out}: no {MANIFEST} here", hint="pass a directory written by 'tbn-tvm compile'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise TBNError(
            f"{path}: damaged manifest ({type(e).__name__})", hint="compile the model again"
        ) from None
    if not isinstance(manifest, dict):
        raise TBNError(f"{path}: damaged manifest (not an object)", hint="compile the model again")
    return manifest


def read_signature(out: Path, manifest: dict) -> tuple[TargetSpec, list[TensorSpec], list[TensorSpec]]:
    """The target and the input and output specs an artifact's manifest declares (nothing is
    loaded: what ``tbn-tvm run`` checks its arguments against first)."""
    try:
        spec = TargetSpec.from_dict(manifest["target"])
        inputs = [TensorSpec.from_dict(d) for d in manifest["inputs"]]
        outputs = [TensorSpec.from_dict(d) for d in manifest["outputs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise TBNError(
            f"{out / MANIFEST}: damaged manifest ({type(e).__name__}: {e})", hint="compile the model again"
        ) from None
    return spec, inputs, outputs


def load(out_dir: str | os.PathLike) -> CompiledModel:
    """Load what :meth:`CompiledModel.save` (or ``tbn-tvm compile``) wrote."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    from tbn_tvm.outdir import verify_dir

    verify_dir(out, manifest)  # nothing is loaded from a directory that does not validate
    spec, inputs, outputs = read_signature(out, manifest)
    from tbn_tvm.targets import backend_class

    backend = backend_class(spec.family).load(spec, out, manifest)
    backend.output_shape = outputs[0].shape if len(outputs) == 1 else None
    report = {k: manifest[k] for k in ("layers", "total", "compressed_layers", "source") if k in manifest}
    extra = {
        k: v
        for k, v in manifest.items()
        if k not in report and k not in ("target", "inputs", "outputs", "tbn_tvm_version", "target_family")
    }
    return CompiledModel(spec, inputs, outputs, report, backend, extra)
