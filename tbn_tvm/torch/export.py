"""Export a (tiled) PyTorch model to an ONNX inference graph that ``tbn-tvm compile`` takes.

The graph holds no training machinery: no latent ``W``/``A`` tensors or bit planes, no
straight-through estimator, only the plain sign's result.  Two forms:

* ``form="tile"`` (default, compact): every tiled layer becomes a ``q = n/p`` element ±1
  initializer and its scales, rebuilt by ``Expand → Mul → Reshape`` in front of the Gemm / Conv;
  a sub-bit conv (:class:`~tbn_tvm.torch.SubBitConv2d`) its codebook, kernel indices and
  per-channel scales, rebuilt by ``Gather → Mul → Reshape``; a bit-wise layer
  (:class:`~tbn_tvm.torch.BitwiseLinear` / ``BitwiseConv2d``) its integers (int8) and ``α``,
  rebuilt by ``Cast → Mul``.  BatchNorm stays a separate node.  The file is about ``p`` times
  smaller than a dense export; the compiler constant-folds the chains and recognises the formats.
* ``form="dense"``: every tiled, sub-bit or bit-wise layer becomes a plain Linear/Conv with its
  fp32 inference weight (``B̂``, ``α_o · codeword``, ``α · integer``), exported with the
  exporter's default optimisations (which fold a following BatchNorm into Conv/Gemm weights,
  giving per-output-row scales; a bit-wise weight is then no longer exactly on its grid).

Shapes are static (the example's batch size, 1 by default) unless ``dynamic_batch=True``: the
compiler needs static shapes.  The opset is the exporter's default (20 for torch 2.13).  The
file is checked with ``onnx.checker`` (full check) and, where onnxruntime is installed, run
against the torch model on the example and on a random input of the same shape.

>>> import torch
>>> from torch import nn
>>> from tbn_tvm.torch import tbnify, export_onnx
>>> model = tbnify(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
...                              nn.Linear(128, 10)), p=4, min_size=0).eval()
>>> result = export_onnx(model, torch.rand(1, 64), "model.onnx")       # doctest: +SKIP
>>> result.max_abs_diff < 1e-5                                           # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from tbn_tvm.errors import TBNError
from tbn_tvm.torch.bitwise import BitwiseLayer, FrozenBitwise
from tbn_tvm.torch.layers import FrozenTiled, TiledLayer
from tbn_tvm.torch.shapes import expected_input
from tbn_tvm.torch.subbit import FrozenSubBit, SubBitConv2d

__all__ = ["export_onnx", "ExportResult", "inference_copy", "check_tolerance", "graph_depth", "METADATA_KEY"]

ExportForm = Literal["tile", "dense"]
METADATA_KEY = "tbn_tvm.layers"
"""Key of the ONNX ``metadata_props`` entry listing the exported tiled layers (JSON)."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and checked."""

    path: Path
    form: str
    opset: int
    input_shape: tuple[int | str, ...]
    ops: dict[str, int]
    layers: list[dict] = field(default_factory=list)  # name, kind, weight_shape, p, alpha
    file_bytes: int = 0
    max_abs_diff: float | None = None  # onnxruntime vs torch (None: not run)
    max_rel_diff: float | None = None  # max_abs_diff / max |torch output| (None: not run)
    tolerance: float | None = None  # the check's rtol (relative to max |torch output|)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "form": self.form,
            "opset": self.opset,
            "input_shape": list(self.input_shape),
            "ops": self.ops,
            "layers": self.layers,
            "file_bytes": self.file_bytes,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "tolerance": self.tolerance,
        }


def inference_copy(model: nn.Module, form: ExportForm = "tile") -> nn.Module:
    """A deep copy of ``model`` in eval mode whose tiled layers are replaced by their inference
    form: :class:`~tbn_tvm.torch.FrozenTiled`, :class:`~tbn_tvm.torch.subbit.FrozenSubBit` and
    :class:`~tbn_tvm.torch.bitwise.FrozenBitwise` (``form="tile"``) or a plain dense layer with
    the exact inference weight (``form="dense"``).  The original model is not touched."""
    if form not in ("tile", "dense"):
        raise TBNError(f"unknown export form {form!r}", hint="use 'tile' or 'dense'")
    clone = copy.deepcopy(model).eval()

    def inference(module: nn.Module) -> nn.Module | None:
        if isinstance(module, TiledLayer | SubBitConv2d | BitwiseLayer):
            return module.freeze() if form == "tile" else module.to_dense().eval()
        return None

    top = inference(clone)
    if top is not None:
        return top
    for name, module in list(clone.named_modules()):
        new = inference(module)
        if new is not None:
            parent, _, attr = name.rpartition(".")
            setattr(clone.get_submodule(parent) if parent else clone, attr, new)
    return clone


#: The export metadata's ``format`` of a layer whose inference weight is all zero (every scale
#: 0): the word ``tbn_tvm.inspect`` uses for such a weight (a tile needs a sign, so it is not
#: ``tiled`` or ``binary``; the compiler stores it as a 1-bit plane of zeros).
ZERO_FORMAT = "zero"


@torch.no_grad()
def _all_zero(m: nn.Module) -> bool:
    """Whether the layer's inference weight is all zero."""
    if isinstance(m, TiledLayer):
        return not bool(torch.any(m.alphas()))  # the tile is ±1: only the scales can be 0
    return not bool(torch.any(m.to_dense().weight))


def _layer_info(model: nn.Module) -> list[dict]:
    """The metadata's ``layers``: one entry per tiled, sub-bit and bit-wise layer; ``format`` is
    the layer's form (``tiled``, ``binary``, ``snn``, ``bitwise``), or, for a layer whose weight
    is all zero, ``zero`` (the word ``tbn_tvm.inspect`` uses) with ``trained_format`` the
    layer's own."""
    modules = dict(model.named_modules())
    info = []
    for entry in _layer_entries(model):
        if _all_zero(modules[entry["name"]]):
            entry = {**entry, "format": ZERO_FORMAT, "trained_format": entry["format"]}
        info.append(entry)
    return info


def _layer_entries(model: nn.Module) -> list[dict]:
    info = []
    for name, m in model.named_modules():
        if isinstance(m, TiledLayer):
            kind = type(m).__name__.replace("Tiled", "").lower()
            info.append(
                {
                    "name": name,
                    "kind": kind,
                    "weight_shape": list(m.weight.shape),
                    "format": "tiled" if m.p > 1 else "binary",
                    "p": m.p,
                    "alpha": m.alpha,
                    "tile_length": m.tile_length,
                }
            )
        elif isinstance(m, SubBitConv2d):
            info.append(
                {
                    "name": name,
                    "kind": "conv2d",
                    "weight_shape": list(m.weight.shape),
                    "format": "snn",
                    "p": None,
                    "tau": m.tau,
                    "codewords": int(m.codebook.shape[0]),
                }
            )
        elif isinstance(m, BitwiseLayer):
            info.append(
                {
                    "name": name,
                    "kind": "linear" if isinstance(m, nn.Linear) else "conv2d",
                    "weight_shape": list(m._weight_shape),
                    "format": "bitwise",
                    "p": None,
                    "k": m.k,
                    "trainable": sum(m.trainable_mask),
                    "alpha": m.alpha_kind,
                }
            )
    return info


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress lines and logs torchvision warnings: hide them."""
    names = [
        "torch.onnx",
        "torch.onnx._internal.exporter._registration",
        "torch.export",
        "torch._export",
        "onnxscript.optimizer._constant_folding",  # "Skipping constant folding for op Split ..."
    ]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            yield out
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


#: (op, buffer name) pairs the optimizer must not fold: the first node of each compact chain.
_COMPACT_CHAINS = (("Expand", "tile"), ("Gather", "codebook"), ("Cast", "intweight"))


def _keep_tiles(node) -> bool | None:
    """``should_fold`` for the onnxscript optimizer: never fold the first node of a compact
    chain (the Expand of a tile, the Gather of a codebook, the Cast of bit-wise integers)."""
    if node.inputs and node.inputs[0] is not None:
        name = node.inputs[0].name or ""
        for op, buffer in _COMPACT_CHAINS:
            if node.op_type == op and (name == buffer or name.endswith("." + buffer)):
                return False
    return None


def _to_onnx(
    model: nn.Module,
    example: torch.Tensor,
    form: str,
    dynamic_batch: bool,
    input_name: str,
    output_name: str,
    opset: int | None,
):
    try:
        import onnxscript.optimizer as oso
    except ImportError:
        raise TBNError("ONNX export needs onnxscript", hint="pip install onnxscript") from None
    kwargs: dict = dict(
        dynamo=True,
        input_names=[input_name],
        output_names=[output_name],
        external_data=False,
        optimize=(form == "dense"),
    )
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    with _quiet_exporter() as log:
        try:
            program = torch.onnx.export(model, (example,), **kwargs)
        except Exception as e:  # the exporter raises many types; report one line
            tail = log.getvalue().strip().splitlines()[-1:] or [""]
            raise TBNError(
                f"torch.onnx.export failed: {type(e).__name__}: {_plain(str(e).splitlines()[0])}",
                hint=_plain(tail[0]) or None,
            ) from e
        if form == "tile":
            oso.optimize_ir(program.model, should_fold=_keep_tiles)
    return program.model_proto


def _plain(text: str) -> str:
    """``text`` without terminal colour codes (the exporter's messages carry them)."""
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _check_example(model: nn.Module, infer: nn.Module, example: torch.Tensor) -> None:
    """Run the inference copy ``infer`` once on ``example``: a shape it does not take is one
    clean TBNError naming the given shape and what ``model`` expects (not the exporter's
    multi-page trace)."""
    try:
        with torch.no_grad():
            infer(example)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        given = "x".join(map(str, example.shape))
        reason = " ".join(_plain(str(e)).split())[:200]
        expected = expected_input(model)
        raise TBNError(
            f"the example of shape [{given}] does not fit the model ({reason})",
            hint=f"{expected}; pass an example of that shape, batch 1"
            if expected
            else "pass an example of the input shape",
        ) from None


def graph_depth(proto) -> int:
    """The number of Conv/ConvTranspose/Gemm/MatMul nodes of ``proto`` (at least 1): the depth
    the export check's tolerance grows with (an upper bound for a graph with branches)."""
    return max(1, sum(1 for n in proto.graph.node if n.op_type in _WEIGHTED_NODES))


def _eps(dtype) -> float:
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).eps) if dtype.kind in "fc" else 0.0


def check_tolerance(dtype, depth: int) -> float:
    """The export check's default relative tolerance: ``8 · eps(dtype) · depth``.

    Each layer rounds its outputs (and its sums) to ``dtype``; on the output's scale the error
    of two correct implementations that add in different orders grows about linearly with the
    depth at worst (measured: 0.01–0.35 eps per layer on ResNet-style nets with outputs of
    10²–10³; 8 leaves a wide margin).  Integer outputs are compared exactly (0).

    >>> round(check_tolerance(np.float32, 20), 7)
    1.91e-05
    """
    return 8.0 * _eps(dtype) * max(1, int(depth))


def _compare(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> tuple[float, float, float]:
    """``(max |got − ref|, max |ref|, atol + rtol · max |ref|)``, in float64; NaN where any is."""
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if g.size == 0:
        return 0.0, 0.0, atol
    diff = np.abs(g - r)
    nan = np.isnan(g) != np.isnan(r)
    d = math.nan if nan.any() else float(np.nanmax(diff)) if not np.isnan(diff).all() else 0.0
    scale = float(np.nanmax(np.abs(r))) if not np.isnan(r).all() else 0.0
    return d, scale, atol + rtol * scale


def _run_ort(model_bytes: bytes, input_name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: x})[0]


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    form: ExportForm = "tile",
    dynamic_batch: bool = False,
    check: bool | None = None,
    atol: float = 0.0,
    rtol: float | None = None,
    opset: int | None = None,
    input_name: str = "input",
    output_name: str = "output",
) -> ExportResult:
    """Write ``model`` as an ONNX inference graph at ``path`` (atomically) and check it.

    ``example`` (a tensor ``[N, *input_shape]``) fixes the input shape (use batch 1 for the
    compiler).  ``onnx.checker`` (full check) always runs.  The model itself is not modified.

    ``check``: run the file with onnxruntime against torch on the example and on a random input
    of its shape (``None`` = when onnxruntime is installed; ``True`` = require it; ``False`` =
    skip).  The check compares on the output's scale, as float rounding works: it passes when
    ``max |onnxruntime − torch| ≤ atol + rtol · max |torch|`` over the whole output.  ``rtol``
    defaults to :func:`check_tolerance`: ``8 · eps(output dtype) · depth``, ``depth`` the number
    of Conv/ConvTranspose/Gemm/MatMul nodes of the exported graph (float32, 20 layers: 1.9e-5,
    where correct exports of such nets differ by about 2e-7 and a 1 % change of one scale of
    one layer by 3e-4).  ``atol`` (default 0) is an absolute floor, for outputs that are all
    zero.

    Returns an :class:`ExportResult` (``max_abs_diff``, ``max_rel_diff`` and ``tolerance`` say
    what the check measured).  Raises :class:`~tbn_tvm.errors.TBNError` when ``example`` is not a
    tensor or not a shape the model takes, the folder of ``path`` does not exist, the exporter
    fails, the graph fails ``onnx.checker``, ``check=True`` without onnxruntime, or onnxruntime
    disagrees with torch (the message gives the measured difference, the output's scale, the
    tolerance and how it was derived); nothing is written then.
    """
    import onnx

    if not isinstance(example, torch.Tensor):
        raise TBNError(f"example must be a torch.Tensor, got {type(example).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise TBNError(f"{path.parent}: no such folder")
    infer = inference_copy(model, form)
    example = example.detach().to("cpu")
    _check_example(model, infer, example)
    proto = _to_onnx(infer, example, form, dynamic_batch, input_name, output_name, opset)
    nodes = _node_module_names(proto, infer)
    _strip_node_metadata(proto)
    _name_codebook_indices(proto)
    layers = _layer_info(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({"form": form, "layers": layers, "nodes": nodes})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise TBNError(f"exported graph fails onnx.checker: {str(e).splitlines()[0]}") from e
    data = proto.SerializeToString()

    max_diff = max_rel = tolerance = None
    if check is None:
        try:
            import onnxruntime  # noqa: F401

            check = True
        except ImportError:
            check = False
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise TBNError("checking the export needs onnxruntime", hint="pip install onnxruntime") from None
        gen = torch.Generator().manual_seed(0)
        inputs = [example]
        if example.is_floating_point():
            inputs.append(torch.randn(example.shape, generator=gen, dtype=example.dtype))
        max_diff = max_rel = 0.0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                refs = [model(x).detach().cpu().numpy() for x in inputs]
        finally:
            model.train(was_training)
        depth = graph_depth(proto)
        for which, x, ref in zip(("the example", "a random input"), inputs, refs, strict=True):
            got = _run_ort(data, input_name, x.numpy())
            if got.shape != ref.shape:
                raise TBNError(
                    f"onnxruntime gives an output of shape {list(got.shape)} on the exported graph "
                    f"where torch gives {list(ref.shape)} (on {which})",
                    hint="the export is wrong; please report it with the model",
                )
            tol = rtol if rtol is not None else check_tolerance(ref.dtype, depth)
            diff, scale, bound = _compare(got, ref, atol, tol)
            max_diff = max(max_diff, diff)
            if scale > 0:
                max_rel = max(max_rel, diff / scale)
            tolerance = tol
            if not diff <= bound:  # also refuses NaN
                how = (
                    f"rtol {tol:.2g} as given"
                    if rtol is not None
                    else f"rtol {tol:.2g} = 8 x {ref.dtype} eps {_eps(ref.dtype):.3g} x depth {depth}, "
                    "the Conv/Gemm/MatMul nodes"
                )
                floor = f"atol {atol:g} + " if atol else ""
                rel = f"{diff / scale:.2g} of" if scale > 0 else "with"
                raise TBNError(
                    f"onnxruntime disagrees with torch on the exported graph (on {which}): "
                    f"max |diff| {diff:.3g} is {rel} the output's scale max |y| {scale:.4g}, above the "
                    f"tolerance {bound:.3g} = {floor}rtol x max |y| ({how}); nothing was written",
                    hint="if the difference is float rounding, pass a larger rtol= or check=False to "
                    "skip the check; otherwise the export is wrong",
                )

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    shape = tuple(
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in proto.graph.input[0].type.tensor_type.shape.dim
    )
    return ExportResult(
        path=path,
        form=form,
        opset=opset_used,
        input_shape=shape,
        ops=dict(Counter(n.op_type for n in proto.graph.node)),
        layers=layers,
        file_bytes=len(data),
        max_abs_diff=max_diff,
        max_rel_diff=max_rel if check else None,
        tolerance=tolerance,
    )


_WEIGHTED_NODES = ("Gemm", "MatMul", "Conv", "ConvTranspose")
#: Ops through which a weight initializer reaches its layer (tile form chains, transposes).
_WEIGHT_CHAIN_OPS = (
    "Reshape",
    "Transpose",
    "Expand",
    "Tile",
    "Mul",
    "Cast",
    "Identity",
    "Unsqueeze",
    "Squeeze",
    "Gather",
    "Split",  # a cross-attention's packed in-projection, cut into its Q and KV blocks
    "Slice",
)
_WEIGHTED_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    TiledLayer,
    FrozenTiled,
    FrozenSubBit,
    FrozenBitwise,
)


def _node_module_names(proto, model: nn.Module) -> dict[str, str]:
    """ONNX node name -> the PyTorch module that owns its weight, for every Gemm/MatMul/Conv/
    ConvTranspose node: from the exporter's name scopes (the deepest weighted module on the
    node's scope path), else from the weight initializer's name (``conv1.weight`` -> ``conv1``,
    e.g. after BatchNorm was fused into the conv)."""
    import ast

    weighted = {name for name, m in model.named_modules() if isinstance(m, _WEIGHTED_MODULES)}
    producers = {o: n for n in proto.graph.node for o in n.output}
    names: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type not in _WEIGHTED_NODES or not node.name:
            continue
        found = None
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = [str(x) for x in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))]
        except (ValueError, SyntaxError):
            scopes = []
        path = [x for x in scopes if x]
        # torch writes each level's full module name (['', 'inner', 'inner.0', 'linear']);
        # older exporters wrote the components: try both, deepest first
        for k in range(len(path), 0, -1):
            for candidate in (path[k - 1], ".".join(path[:k])):
                if candidate in weighted:
                    found = candidate
                    break
            if found is not None:
                break
        if found is None and len(node.input) > 1:  # the weight's own name, through a chain
            stack, seen = [node.input[1]], set()
            while stack and found is None:
                cur = stack.pop()
                if cur in seen:
                    continue
                seen.add(cur)
                for suffix in (".weight", ".tile", ".W", ".A", ".alpha", ".codebook", ".intweight"):
                    if cur.endswith(suffix) and cur[: -len(suffix)] in weighted:
                        found = cur[: -len(suffix)]
                if cur in producers and producers[cur].op_type in _WEIGHT_CHAIN_OPS:
                    stack.extend(producers[cur].input)
        if found is not None:
            names[node.name] = found
    return names


def _name_codebook_indices(proto) -> None:
    """The exporter names a Gather's integer index initializer ``val_N``: call it
    ``<layer>.indices`` after its ``<layer>.codebook``, as the compact chains' other buffers."""
    inits = {t.name: t for t in proto.graph.initializer}
    taken = set(inits) | {o for n in proto.graph.node for o in n.output}
    renames: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0].endswith(".codebook"):
            old, new = node.input[1], node.input[0][: -len("codebook")] + "indices"
            if old in inits and old not in renames and new not in taken:
                renames[old] = new
                taken.add(new)
    if not renames:
        return
    for t in proto.graph.initializer:
        t.name = renames.get(t.name, t.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for vi in proto.graph.value_info:
        vi.name = renames.get(vi.name, vi.name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _strip_node_metadata(proto) -> None:
    """Drop the exporter's per-node stack traces and names of torch internals (tens of kB)."""
    graphs = [proto.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            del vi.metadata_props[:]
        for init in g.initializer:
            del init.metadata_props[:]


def frozen_layers(model: nn.Module) -> list[FrozenTiled]:
    """The :class:`FrozenTiled` modules of an inference copy (handy in tests)."""
    return [m for m in model.modules() if isinstance(m, FrozenTiled)]
