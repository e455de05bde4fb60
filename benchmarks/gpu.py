"""GPU benchmark of the CUDA back end: ``python -m benchmarks.gpu`` (or ``python benchmarks/gpu.py``)
from the repository root.

On a machine with an NVIDIA GPU (TVM sees ``tvm.cuda(0)``), for each model at batch 1 and 32:
latency (median over rounds) and GPU memory of tbn-tvm's CUDA build against PyTorch on the
dense weights in fp32 and fp16 (cuBLAS GEMMs, cuDNN convolutions), and every output compared
with onnxruntime.  PyTorch has to be a CUDA build there (this project pins the CPU wheel; e.g.
``pip install torch --index-url https://download.pytorch.org/whl/cu124``): the script says which
build it found and leaves the PyTorch columns empty without a CUDA one.

Without a GPU it runs the numerics-only path and says so: the same builds (TVM, then nvcc to
PTX and cubin), with their scheduled kernels run on OpenCL (:mod:`tbn_tvm.targets.gpu_check`,
PoCL on the CPU) and compared with onnxruntime.  CI runs it that way (``--quick``: small
models).  Exit status 1 when an output differs from onnxruntime by more than ``--rtol``
(relative to the largest reference value), 2 for a usage error.

Columns: ``tbn ms`` / ``fp32 ms`` / ``fp16 ms`` median latency of one call on the batch;
``tbn MiB`` device memory the tbn-tvm model took (free memory before loading minus after the
timed runs), ``fp32 MiB`` / ``fp16 MiB`` PyTorch's peak allocation; ``weights`` the bytes of
the compact weights vs the fp32 dense ones; ``err`` the largest difference from onnxruntime
over the largest reference value (tbn-tvm on the GPU, or on OpenCL without one; ``err16`` for
PyTorch fp16).  ``--json FILE`` also writes the rows; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnx

from tbn_tvm.errors import TBNError

MODELS = ("mnist", "mlp4096", "resnet")
QUICK_MODELS = ("mnist", "mlp256", "resnet8")
KNOWN = ("mnist", "mlp256", "mlp4096", "resnet8", "resnet")
BATCHES = (1, 32)


def build_model(name: str, batch: int) -> tuple[onnx.ModelProto, str]:
    """The ONNX model ``name`` with batch ``batch`` and its input kind (benchmarks.models)."""
    from benchmarks import models

    if name == "mnist":
        return models.authors_mlp(batch), "authors_mlp"
    if name.startswith("mlp"):
        return models.wide_mlp(p=8, batch=batch, width=int(name[3:])), "wide_mlp"
    if name == "resnet":
        return models.tiled_resnet(batch), "tiled_resnet"
    if name == "resnet8":
        return models.tiled_resnet(batch, image=8, stem=8, stages=((16, 1, 4), (16, 2, 4))), "tiled_resnet"
    raise TBNError(f"unknown model '{name}'", hint=f"use {', '.join(KNOWN)}")


def onnxruntime_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})[0]


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference over the largest reference magnitude."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(y - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


# ------------------------------------------------------------------------------ PyTorch side
def torch_status() -> tuple[object | None, str]:
    """(torch, a sentence) — torch is None unless it is a CUDA build that sees a GPU."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed: no cuBLAS baseline"
    if torch.version.cuda is None:
        return (
            None,
            f"PyTorch {torch.__version__} is the CPU build: no cuBLAS baseline (install a CUDA build)",
        )
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    return (
        torch,
        f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}",
    )


def torch_forward(model: onnx.ModelProto, torch, dtype) -> Callable:
    """The ONNX graph as PyTorch calls on the GPU with the dense weights in ``dtype`` (the ops
    of the benchmark models: Gemm, MatMul, Conv, Relu, Add, Flatten, GlobalAveragePool)."""
    import torch.nn.functional as F  # noqa: N812

    weights = {
        t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()).cuda().to(dtype)
        for t in model.graph.initializer
    }
    nodes = list(model.graph.node)

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def run(x):
        env = dict(weights)
        env[model.graph.input[0].name] = x
        for node in nodes:
            a = [env[i] if i else None for i in node.input]
            op = node.op_type
            if op == "Gemm":
                w = a[1].t() if attr(node, "transB", 0) else a[1]
                y = a[0] @ w
                y = y + a[2] if len(a) > 2 and a[2] is not None else y
            elif op == "MatMul":
                y = a[0] @ a[1]
            elif op == "Conv":
                pads = list(attr(node, "pads", [0, 0, 0, 0]))
                y = F.conv2d(
                    a[0],
                    a[1],
                    a[2] if len(a) > 2 else None,
                    stride=list(attr(node, "strides", [1, 1])),
                    padding=pads[:2],
                    dilation=list(attr(node, "dilations", [1, 1])),
                    groups=attr(node, "group", 1),
                )
            elif op == "Relu":
                y = torch.relu(a[0])
            elif op == "Add":
                y = a[0] + a[1]
            elif op == "Flatten":
                y = a[0].flatten(attr(node, "axis", 1))
            elif op == "GlobalAveragePool":
                y = a[0].mean(dim=(2, 3), keepdim=True)
            else:
                raise TBNError(f"the PyTorch baseline has no {op}")
            env[node.output[0]] = y
        return env[model.graph.output[0].name]

    return run


def time_torch(torch, fn, x, rounds: int, number: int) -> list[float]:
    """Seconds per call, one value per round (CUDA events)."""
    times = []
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / number)
    return times


# ------------------------------------------------------------------------------ one row
def bench_one(name: str, batch: int, args, gpu: bool, torch) -> dict:
    import tbn_tvm
    from benchmarks.models import sample_input

    model, kind = build_model(name, batch)
    x = sample_input(kind, model)
    ref = onnxruntime_outputs(model, x)
    row: dict = {"model": name, "batch": batch}
    t0 = time.perf_counter()
    cm = tbn_tvm.compile(model, target="cuda", arch=args.arch)
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    report = cm.report()
    row["weight_bytes"] = report["total"]["weight_bytes"]
    row["fp32_bytes"] = report["total"]["fp32_bytes"]
    row["ptx_bytes"] = report["cuda"]["ptx_bytes"]
    row["cubin_bytes"] = report["cuda"]["cubin_bytes"]
    row["schedules"] = sorted(set(report["cuda"]["kernels"].values()))
    if gpu:
        free0 = torch.cuda.mem_get_info()[0] if torch is not None else None
        y = cm.run(x)
        samples = cm.time(x, number=args.number, repeat=args.rounds)
        row["tbn_ms"] = 1e3 * float(np.median(samples))
        if torch is not None:
            row["tbn_mib"] = (free0 - torch.cuda.mem_get_info()[0]) / 2**20
        row["err"] = rel_err(y, ref)
        row["checked_on"] = "gpu"
        if torch is not None:
            xt = torch.from_numpy(x).cuda()
            for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                try:
                    fn = torch_forward(model, torch, dtype)  # the dense weights, on the GPU
                except TBNError as e:
                    row[f"{label}_note"] = e.message
                    continue
                xd = xt.to(dtype)
                with torch.no_grad():
                    out = fn(xd).float().cpu().numpy()
                ts = time_torch(torch, fn, xd, args.rounds, args.number)
                row[f"{label}_ms"] = 1e3 * float(np.median(ts))
                row[f"{label}_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                row[f"err_{label}"] = rel_err(out, ref)
                del fn, xd
    else:
        y = cm.backend.check_numerics([x])[0]
        row["err"] = rel_err(y, ref)
        row["checked_on"] = "opencl"
    cm.close()
    row["ok"] = row["err"] <= args.rtol
    return row


# ------------------------------------------------------------------------------ table
def _fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def table(rows: list[dict]) -> str:
    """The rows as one markdown table (``—``: not measured)."""
    head = [
        "model",
        "batch",
        "tbn ms",
        "fp32 ms",
        "fp16 ms",
        "tbn MiB",
        "fp32 MiB",
        "fp16 MiB",
        "weights B (tbn / fp32)",
        "ptx / cubin B",
        "err",
        "err16",
        "checked on",
        "ok",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["model"],
            str(r["batch"]),
            _fmt(r.get("tbn_ms")),
            _fmt(r.get("fp32_ms")),
            _fmt(r.get("fp16_ms")),
            _fmt(r.get("tbn_mib"), ".1f"),
            _fmt(r.get("fp32_mib"), ".1f"),
            _fmt(r.get("fp16_mib"), ".1f"),
            f"{r['weight_bytes']:,} / {r['fp32_bytes']:,}",
            f"{r['ptx_bytes']:,} / {r['cubin_bytes']:,}",
            _fmt(r.get("err"), ".1e"),
            _fmt(r.get("err_fp16"), ".1e"),
            r["checked_on"],
            "yes" if r["ok"] else "NO",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[1])
    p.add_argument(
        "--quick", action="store_true", help=f"small models ({', '.join(QUICK_MODELS)}), few rounds"
    )
    p.add_argument("--models", default=None, help=f"comma-separated: {', '.join(KNOWN)}")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--arch", default=None, help="sm_80 or sm_90 (default: the GPU's, else sm_90)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 20; 5 with --quick)")
    p.add_argument("--number", type=int, default=None, help="calls per round (default 20; 5 with --quick)")
    p.add_argument("--rtol", type=float, default=1e-5, help="largest accepted error vs onnxruntime")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    args.models = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else MODELS)
    unknown = [m for m in args.models if m not in KNOWN]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; use {', '.join(KNOWN)}")
    try:
        args.batches = [int(b) for b in args.batches.split(",")] if args.batches else list(BATCHES)
    except ValueError:
        p.error("--batches takes integers, e.g. 1,32")
    args.rounds = args.rounds or (5 if args.quick else 20)
    args.number = args.number or (5 if args.quick else 20)
    return args


def gpu_arch() -> str:
    """The architecture to build for on this machine's GPU."""
    import tvm

    major, minor = (int(v) for v in str(tvm.cuda(0).compute_version).split("."))
    if major >= 9:
        return "sm_90"
    if major == 8:
        return "sm_80"
    raise TBNError(f"the GPU is sm_{major}{minor}; the CUDA back end builds for sm_80 and sm_90")


def main(argv: Sequence[str] | None = None) -> int:
    from tbn_tvm.targets import gpu_check
    from tbn_tvm.targets.cuda import gpu_present, nvcc_version

    args = parse_args(argv)
    gpu = gpu_present()
    torch, torch_line = torch_status() if gpu else (None, "")
    if gpu:
        args.arch = args.arch or gpu_arch()
        print(f"GPU mode: {torch_line}; building for {args.arch}")
    else:
        reason = gpu_check.unavailable()
        if reason:
            raise TBNError(f"no GPU here, and the OpenCL check cannot run: {reason}")
        args.arch = args.arch or "sm_90"
        print(
            "no GPU here (tvm.cuda(0) does not exist): numerics only - the CUDA builds (nvcc "
            f"{nvcc_version() or '?'}, {args.arch}) with their scheduled kernels run on OpenCL "
            "(PoCL) and compared with onnxruntime; latency and memory need a GPU"
        )
    rows = []
    for name in args.models:
        for batch in args.batches:
            rows.append(bench_one(name, batch, args, gpu, torch))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "arch": args.arch, "rows": rows}, indent=1))
    bad = [f"{r['model']} batch {r['batch']}" for r in rows if not r["ok"]]
    if bad:
        print(f"outputs differ from onnxruntime by more than {args.rtol:g}: {', '.join(bad)}")
        return 1
    return 0


def _entry() -> int:
    try:
        return main()
    except TBNError as e:
        print(e.render(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_entry())
