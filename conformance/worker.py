"""The worker process: receives cases over a pipe, compiles and runs each, sends the verdict back.

One case at a time, in its own process (TVM can crash or hang); the pool in
:mod:`conformance.pool` replaces a worker that dies or runs past the timeout.  The worker caps its
address space with ``RLIMIT_AS`` and sends a ``phase`` message before each step (``convert``,
``compile``, ``run``, ``compare``) so a crash or a hang can be placed.

Messages parent -> worker: a job dict (see :func:`job_payload`) or ``None`` to stop.
Messages worker -> parent: ``("ready",)``, ``("phase", name, phase)``, ``("result", name, dict)``.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import sys
import time
import traceback
import warnings
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from conformance.cases import Case

#: The verdicts, best first; ``not_convertible`` marks a version case that could not be made.
CLASSES = ("pass", "refused", "internal", "wrong", "crash", "hang")
NOT_CONVERTIBLE = "not_convertible"


def job_payload(case: Case, target: str, relabel: bool = True) -> dict:
    """What the worker needs to run ``case`` (picklable: the model travels serialised)."""
    assert case.model is not None
    return {
        "name": case.name,
        "op": case.op,
        "domain": case.domain,
        "model": case.model.SerializeToString(),
        "inputs": list(case.inputs),
        "outputs": list(case.outputs),
        "rtol": case.rtol,
        "atol": case.atol,
        "convert_to": case.convert_to,
        "const_inputs": case.const_inputs,
        "target": target,
        "relabel": relabel,
    }


@functools.cache
def _machine_paths() -> list[tuple[str, str]]:
    """Directory prefixes of this machine and what they are shown as in messages, longest first."""
    import tempfile

    import tbn_tvm

    repo = os.path.dirname(os.path.dirname(os.path.abspath(tbn_tvm.__file__)))
    pairs = {
        repo + os.sep: "",
        sys.prefix + os.sep: "<venv>/",
        sys.base_prefix + os.sep: "<python>/",
        tempfile.gettempdir() + os.sep: "<tmp>/",
        os.path.expanduser("~") + os.sep: "~/",
    }
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda kv: -len(kv[0]))


def scrub(text: str) -> str:
    """``text`` without this machine's directories (the repository, the venv, the temp dir)."""
    for prefix, shown in _machine_paths():
        text = text.replace(prefix, shown)
    return text


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, whitespace collapsed, machine paths removed, at most
    ``limit`` characters."""
    for line in str(text).splitlines():
        line = " ".join(line.split())
        if line:
            return scrub(line)[:limit]
    return ""


def _exception_message(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(str(e))}".rstrip(": ")


def _where(e: BaseException) -> str:
    """The innermost frame of the traceback that is in tbn_tvm or tvm (file:line function)."""
    frames = traceback.extract_tb(e.__traceback__)
    for f in reversed(frames):
        path = f.filename.replace(os.sep, "/")
        for marker in ("/tbn_tvm/", "/tvm/"):
            if marker in path:
                rel = path[path.rindex(marker) + 1 :]
                return f"{rel}:{f.lineno} {f.name}"
    return ""


def _axes_to_attribute(graph) -> None:
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1] in inits:
            axes = numpy_helper.to_array(inits[node.input[1]]).reshape(-1).tolist()
            del node.input[1:]
            if axes:
                node.attribute.append(helper.make_attribute("axes", [int(a) for a in axes]))


def relabel(model, opset: int):
    """``model`` with its default-domain opset import set to ``opset`` and nothing else changed
    (for a node whose inputs and attributes mean the same at both versions; the validation in
    :func:`convert` decides whether they do)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    if opset < 18:  # Reduce* took their axes as an attribute before 18: move a constant one there
        _axes_to_attribute(out.graph)
    out.ir_version = min(out.ir_version, onnx.helper.find_min_ir_version_for([*out.opset_import], True))
    listed = {vi.name for vi in out.graph.input}
    if any(t.name not in listed for t in out.graph.initializer):
        out.ir_version = max(out.ir_version, 4)  # initializers that are not inputs need IR 4
    return out


def validate(model, inputs: list[Any], outputs: list[Any], names: list[str], rtol: float, atol: float) -> str:
    """Check that an independent runtime reproduces the case's expected outputs with ``model``;
    returns the runtime's name, raises ``ValueError`` otherwise.

    onnxruntime implements every version of every operator as specified (ONNX's reference
    evaluator does not always: its Softmax-1 computes Softmax-13), so it is the judge when it is
    installed; without it the reference evaluator is used."""
    from conformance.compare import compare_outputs

    feeds = {vi.name: x for vi, x in zip(_graph_inputs(model), inputs)}
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    try:
        if ort is not None:
            judge = "onnxruntime"
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.log_severity_level = 4
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            got = sess.run(None, feeds)
        else:
            from onnx.reference import ReferenceEvaluator

            judge = "reference evaluator"
            got = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:
        raise ValueError(f"{judge} cannot run it: {_exception_message(e)}") from None
    bad = compare_outputs(list(got), outputs, names, rtol, atol)
    if bad:
        raise ValueError(f"{judge} disagrees with the expected outputs: {bad[0].message}")
    return judge


def convert(
    model,
    opset: int,
    inputs: list[Any],
    outputs: list[Any],
    names: list[str],
    rtol: float,
    atol: float,
    relabel_fallback: bool = True,
):
    """Down-convert ``model`` to ``opset`` with ONNX's version converter; where the converter has
    no adapter and ``relabel_fallback`` is set, with :func:`relabel`.  The result must pass the
    checker and :func:`validate` (the case's data must hold at that opset).  Returns
    ``(model, how)``; raises ``ValueError`` saying why there is no case at that opset."""
    import onnx
    from onnx import version_converter

    how = "converter"
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as e:
        reason = f"version converter: {_converter_message(e)}"
        if not relabel_fallback:
            raise ValueError(reason) from None
        converted, how = relabel(model, opset), "relabel"
    try:
        onnx.checker.check_model(converted)
    except Exception as e:
        prefix = f"{reason}; relabelled model" if how == "relabel" else "converted model"
        raise ValueError(f"{prefix} is invalid: {_exception_message(e)}") from None
    try:
        judge = validate(converted, inputs, outputs, names, rtol, atol)
    except ValueError as e:
        prefix = f"{reason}; relabelled model: " if how == "relabel" else "converted model: "
        raise ValueError(prefix + str(e)) from None
    return converted, f"{how}, checked by {judge}"


_CONVERTER_NOISE = re.compile(r"RuntimeError: /\S+:\d+: \w+: Assertion `.*?` failed: ")


def _converter_message(e: BaseException) -> str:
    """The version converter's error without its source path and assertion text."""
    return _CONVERTER_NOISE.sub("", _exception_message(e))


def _graph_inputs(model) -> list:
    init = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in init]


def freeze_inputs(model, values: list[Any]):
    """``model`` with its graph inputs after the first turned into initializers of ``values``
    (listed as graph inputs too where the IR version requires it: before IR 4)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph_inputs = _graph_inputs(m)
    frozen = {vi.name for vi in graph_inputs[1:]}
    for vi, value in zip(graph_inputs[1:], values):
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
    if m.ir_version >= 4:
        keep = [vi for vi in m.graph.input if vi.name not in frozen]
        del m.graph.input[:]
        m.graph.input.extend(keep)
    return m


def run_case(job: dict, phase=lambda _p: None) -> dict:
    """Convert (for a version case), compile, run and compare one case; returns the verdict
    ``{"status", "phase", "message", ...}``.  ``phase(p)`` is called before each step."""
    import onnx

    import tbn_tvm
    from conformance.compare import compare_outputs, outputs_as_list
    from tbn_tvm.errors import TBNError

    model = onnx.load_from_string(job["model"])
    out_names = [vi.name for vi in model.graph.output]
    inputs, expected = job["inputs"], job["outputs"]
    rtol, atol = job["rtol"], job["atol"]
    result: dict[str, Any] = {}
    if job.get("const_inputs"):  # before converting: the converter turns constant axes into attributes
        model = freeze_inputs(model, inputs[1:])
        inputs = inputs[:1]
    if job.get("convert_to"):
        phase("convert")
        try:
            model, how = convert(
                model, job["convert_to"], inputs, expected, out_names, rtol, atol, job.get("relabel", True)
            )
        except ValueError as e:
            return {"status": NOT_CONVERTIBLE, "phase": "convert", "message": first_line(str(e), 500)}
        result["conversion"] = how
    names = [vi.name for vi in _graph_inputs(model)]
    feeds = dict(zip(names, inputs))  # one sample each: the arrays have the declared shapes

    def failed(e: BaseException, step: str) -> dict:
        if isinstance(e, TBNError):
            return {"status": "refused", "phase": step, "message": first_line(str(e), 500)}
        out = {"status": "internal", "phase": step, "message": _exception_message(e)}
        where = _where(e)
        if where:
            out["where"] = where
        # the error this one was raised from or while handling (the real one, often)
        cause = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if cause is not None:
            out["context"] = _exception_message(cause)
            if _where(cause):
                out["context_where"] = _where(cause)
        return out

    phase("compile")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = tbn_tvm.compile(model, job["target"])
    except Exception as e:
        return {**failed(e, "compile"), **result, "compile_s": round(time.perf_counter() - t0, 3)}
    result["compile_s"] = round(time.perf_counter() - t0, 3)
    phase("run")
    t0 = time.perf_counter()
    try:
        got = m.run(feeds)
    except Exception as e:
        return {**failed(e, "run"), **result, "run_s": round(time.perf_counter() - t0, 3)}
    result["run_s"] = round(time.perf_counter() - t0, 3)
    phase("compare")
    actual, problems = outputs_as_list(got, out_names)
    missing = {p.output for p in problems}
    keep = [i for i, n in enumerate(out_names) if n not in missing]
    problems += compare_outputs(
        [actual[i] for i in keep], [expected[i] for i in keep], [out_names[i] for i in keep], rtol, atol
    )
    if not problems:
        return {"status": "pass", "phase": "compare", "message": "", **result}
    kinds = sorted({p.kind for p in problems})
    return {
        "status": "wrong",
        "phase": "compare",
        "message": "; ".join(f"{p.output}: {p.message}" for p in problems)[:1000],
        "wrong_kinds": kinds,
        "mismatches": [p.to_dict() for p in problems],
        **result,
    }


def _redirect_output(log_path: str) -> None:
    """Send this process's stdout/stderr (TVM's and LLVM's included) to ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker_main(conn: Connection, mem_limit: int | None, log_path: str) -> None:
    """Entry point of a worker process (spawned by :class:`conformance.pool.WorkerPool`)."""
    _redirect_output(log_path)
    if mem_limit:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    os.environ["TVM_NUM_THREADS"] = os.environ.get("CONFORMANCE_TVM_THREADS", "1")
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    import tbn_tvm  # noqa: F401 - import TVM once, before the first case is timed
    import tbn_tvm.api  # noqa: F401
    from tbn_tvm.frontend import onnx as _frontend  # noqa: F401

    conn.send(("ready",))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.ftruncate(1, 0)  # the log holds the current case's output only

        def phase(p: str, name: str = job["name"]) -> None:
            print(f"--- {name}: {p}", flush=True)
            conn.send(("phase", name, p))

        t0 = time.perf_counter()
        try:
            result = run_case(job, phase)
        except Exception as e:  # a failure of the harness itself, not of the compiler
            result = {
                "status": "internal",
                "phase": "harness",
                "message": f"harness: {_exception_message(e)}",
            }
        result["seconds"] = round(time.perf_counter() - t0, 3)
        sys.stdout.flush()
        conn.send(("result", job["name"], result))
