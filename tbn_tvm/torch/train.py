"""Train full-precision, binary, tiled, sub-bit and bit-wise variants of a model, tabulate, plot
and export.

Variants (:func:`parse_variant`):

* ``fp32``: the dense model (``model``: a user's model exactly as its factory returns it);
* ``binary``: every Linear/Conv at p = 1, i.e. a binary-weight network;
* ``tbnP`` (``tbn2``, ``tbn4``, ``tbn8``...): :func:`~tbn_tvm.torch.tbnify` with that ``p``; the
  first and last layers stay binary and, with the default ``min_size=0``, every hidden layer is
  tiled;
* ``snnT`` (``snn5``...): :func:`~tbn_tvm.torch.subbitify` with ``τ = T`` on the 3×3 convs but
  the first, every other Linear/Conv binary (p = 1) like the tbn variants' ends;
* ``bitwiseKxT`` (``bitwise6x3``...): :func:`~tbn_tvm.torch.bitwiseify` of every Linear/Conv2d
  with ``k = K`` bits of which the ``T`` most significant train.

Each (data set, variant, seed) is one run of :func:`~tbn_tvm.torch.fit`: Adam with a one-cycle
learning-rate schedule, cross-entropy, no augmentation, the held-out accuracy after the last
epoch (no model selection on the held-out set).  Runs are spread over worker processes with one
torch thread each (more threads make these tiny models slower on a shared CPU).  The model is
one of :data:`~tbn_tvm.torch.models.MODELS` or a user's factory (``TrainOptions(model=
"package.module:factory")``), the data a bundled set or a user's ``.npz`` (``"npz"`` with
``data_path``).

>>> from tbn_tvm.torch.train import train_one
>>> model, result = train_one("digits", "tbn4", seed=0, epochs=2)      # doctest: +SKIP
>>> result.accuracy, result.bits_per_weight                            # doctest: +SKIP
(0.93, 0.3594)

:func:`train_table` runs the whole grid and writes ``results.json``, ``results.md``,
``accuracy_vs_bits.png`` and one ONNX file per (data set, variant) for ``tbn-tvm compile``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import itertools
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tbn_tvm.datasets import (
    DataSplit,
    load_cifar10_folder,
    load_digits_split,
    load_mnist_split,
    load_npz_split,
)
from tbn_tvm.errors import TBNError
from tbn_tvm.torch.bitwise import BitwiseLayer, bitwiseify
from tbn_tvm.torch.export import export_onnx
from tbn_tvm.torch.fitting import distributed_env, fit
from tbn_tvm.torch.layers import TiledLayer
from tbn_tvm.torch.models import MODELS
from tbn_tvm.torch.subbit import SubBitConv2d, subbitify
from tbn_tvm.torch.summary import summary
from tbn_tvm.torch.tbnify import tbnify, tiling_plan

__all__ = [
    "DEFAULT_VARIANTS",
    "RECIPES",
    "Recipe",
    "TrainOptions",
    "RunResult",
    "TableResult",
    "Variant",
    "parse_variant",
    "variant_p",
    "load_factory",
    "load_dataset",
    "build_variant",
    "train_one",
    "train_table",
]

DEFAULT_VARIANTS = ("fp32", "binary", "tbn2", "tbn4", "tbn8")
DATASETS = ("mnist", "digits", "cifar10", "npz")


@dataclass(frozen=True)
class Recipe:
    """Per-data-set training defaults."""

    epochs: int
    batch_size: int
    lr: float
    model: str


RECIPES = {
    "mnist": Recipe(epochs=20, batch_size=128, lr=3e-3, model="MLP 784-256-256-10 (BatchNorm)"),
    "digits": Recipe(epochs=40, batch_size=64, lr=3e-3, model="CNN conv32-conv64-fc (BatchNorm)"),
    "cifar10": Recipe(epochs=30, batch_size=128, lr=3e-3, model="CNN conv32-64-128-256-fc (BatchNorm)"),
    "npz": Recipe(epochs=20, batch_size=64, lr=3e-3, model="the user's model"),
}


@dataclass(frozen=True)
class TrainOptions:
    """Options shared by every run of a table (``None`` = the data set's :data:`RECIPES` value)."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    min_size: int = 0
    keep_first_last_binary: bool = True
    alpha: str = "per_copy"
    alpha_source: str = "A"
    threads: int = 1
    train_limit: int | None = None  # use only the first N training images (quick runs)
    data_path: str | None = None  # CIFAR-10 folder
    overrides: tuple[tuple[str, int | None], ...] = ()  # tbnify overrides for the tbnP variants
    tile_first: bool = False  # tbnP variants: tile the first layer too (the last stays binary)
    model: str | None = None  # "package.module:factory" or "file.py:factory" (None: MODELS[dataset])
    model_kwargs: str | None = None  # JSON object of keyword arguments for the factory
    input_shape: tuple[int, ...] | None = None  # reshape every sample to this (e.g. (1, 28, 28))

    def recipe(self, dataset: str) -> Recipe:
        """The data set's recipe with this object's overrides applied."""
        base = RECIPES[dataset]
        if self.model:
            base = replace(base, model=f"{self.model}")
        return replace(
            base,
            epochs=self.epochs or base.epochs,
            batch_size=self.batch_size or base.batch_size,
            lr=self.lr or base.lr,
        )


@dataclass
class RunResult:
    """One trained model: held-out accuracy (fraction), size, time, per-layer p."""

    dataset: str
    variant: str
    p: int | None
    seed: int
    epochs: int
    batch_size: int
    lr: float
    accuracy: float
    train_accuracy: float
    final_loss: float
    bits_per_weight: float
    weight_bits: int
    model_bytes: int
    seconds: float
    layers: list[dict] = field(default_factory=list)
    export: dict | None = None


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: ``kind`` is ``"fp32"``, ``"model"``, ``"tbn"`` (``p``; ``binary``
    is ``p = 1``), ``"snn"`` (``tau``) or ``"bitwise"`` (``k`` bits, ``trainable`` of them)."""

    name: str
    kind: str
    p: int | None = None
    tau: int | None = None
    k: int | None = None
    trainable: int | None = None

    @property
    def label(self) -> str:
        """The variant's parameter for tables: ``4``, ``τ=5``, ``k=6, t=3`` or ``—``."""
        if self.kind == "tbn":
            return str(self.p)
        if self.kind == "snn":
            return f"τ={self.tau}"
        if self.kind == "bitwise":
            return f"k={self.k}, t={self.trainable}"
        return "—"


_VARIANT_HINT = "use fp32, binary, tbnP (e.g. tbn4), snnT (e.g. snn5), bitwiseKxT (e.g. bitwise6x3) or model"


def parse_variant(variant: str) -> Variant:
    """The variant a name stands for.

    >>> parse_variant("tbn8").p, parse_variant("snn5").tau, parse_variant("bitwise6x3").trainable
    (8, 5, 3)
    """
    if variant in ("fp32", "model"):
        return Variant(variant, variant)
    if variant == "binary":
        return Variant(variant, "tbn", p=1)
    m = re.fullmatch(r"tbn([1-9][0-9]*)", variant)
    if m:
        return Variant(variant, "tbn", p=int(m.group(1)))
    m = re.fullmatch(r"snn([1-9][0-9]*)", variant)
    if m:
        tau = int(m.group(1))
        if tau > 8:
            raise TBNError(f"variant {variant!r}: τ must be 1..8 for 3×3 kernels (9 would be binary)")
        return Variant(variant, "snn", tau=tau)
    m = re.fullmatch(r"bitwise([1-9][0-9]*)x([0-9]+)", variant)
    if m:
        k, t = int(m.group(1)), int(m.group(2))
        if not 2 <= k <= 16 or t > k:
            raise TBNError(f"variant {variant!r}: need 2 <= K <= 16 bits and T <= K trainable bits")
        return Variant(variant, "bitwise", k=k, trainable=t)
    raise TBNError(f"unknown variant {variant!r}", hint=_VARIANT_HINT)


def variant_p(variant: str) -> int | None:
    """``"fp32"`` -> None, ``"binary"`` -> 1, ``"tbn4"`` -> 4 (``None`` for the other families).

    >>> variant_p("tbn8")
    8
    """
    return parse_variant(variant).p


# ---------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=4)
def load_dataset(
    name: str,
    data_path: str | None = None,
    train_limit: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> DataSplit:
    """The split a data set name stands for (cached per process): ``mnist``, ``digits``,
    ``cifar10`` (``data_path`` = its folder) or ``npz`` (``data_path`` = a ``.npz`` file, see
    :func:`~tbn_tvm.datasets.load_npz_split`); ``input_shape`` reshapes every sample."""
    if name == "mnist":
        data = load_mnist_split()
    elif name == "digits":
        data = load_digits_split()
    elif name == "cifar10":
        if not data_path:
            raise TBNError(
                "cifar10 needs the folder with torchvision's cifar-10-batches-py",
                hint="pass --data PATH (nothing is downloaded)",
            )
        data = load_cifar10_folder(data_path, as_uint8=True)
    elif name == "npz":
        if not data_path:
            raise TBNError("the npz data set needs a file", hint="pass --data-npz FILE")
        data = load_npz_split(data_path)
    else:
        raise TBNError(f"unknown data set {name!r}", hint=f"use one of {', '.join(DATASETS)}")
    if train_limit:
        data = replace(data, x_train=data.x_train[:train_limit], y_train=data.y_train[:train_limit])
    if input_shape:
        size = math.prod(data.input_shape)
        if math.prod(input_shape) != size:
            raise TBNError(
                f"input shape {list(input_shape)} does not hold the {size} values of a {name} sample "
                f"(shape {list(data.input_shape)})"
            )
        data = replace(
            data,
            x_train=data.x_train.reshape(len(data.x_train), *input_shape),
            x_test=data.x_test.reshape(len(data.x_test), *input_shape),
        )
    return data


def _data(dataset: str, options: TrainOptions) -> DataSplit:
    return load_dataset(dataset, options.data_path, options.train_limit, options.input_shape)


def _as_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t


# -------------------------------------------------------------------------------------- models
def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The model factory ``spec`` names: ``"package.module:function"`` (imported; the current
    folder is put on ``sys.path`` so a local module is found) or ``"path/to/file.py:function"``.

    >>> load_factory("tbn_tvm.torch.models:digits_cnn").__name__
    'digits_cnn'
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise TBNError(f"bad model {spec!r}", hint="write package.module:factory or path/to/file.py:factory")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.is_file():
                raise TBNError(f"{module_name}: no such file")
            key = "_tbn_user_model_" + re.sub(r"\W", "_", str(path))
            module = sys.modules.get(key)
            if module is None:
                import importlib.util

                mspec = importlib.util.spec_from_file_location(key, path)
                if mspec is None or mspec.loader is None:
                    raise TBNError(f"{module_name}: cannot be imported")
                module = importlib.util.module_from_spec(mspec)
                sys.modules[key] = module
                try:
                    mspec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[key]
                    raise
        else:
            import importlib

            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except TBNError:
        raise
    except Exception as e:
        raise TBNError(f"cannot import {module_name!r} for --model: {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TBNError(f"{module_name!r} has no callable {attr!r}")
    return factory


def _base_model(dataset: str, options: TrainOptions) -> nn.Module:
    if not options.model:
        if dataset not in MODELS:
            raise TBNError(
                f"the {dataset} data set has no built-in model", hint="pass --model package.module:factory"
            )
        return MODELS[dataset]()
    factory = load_factory(options.model)
    kwargs = {}
    if options.model_kwargs:
        try:
            kwargs = json.loads(options.model_kwargs)
        except ValueError as e:
            raise TBNError(f"--model-kwargs is not JSON: {e}") from None
        if not isinstance(kwargs, dict):
            raise TBNError("--model-kwargs must be a JSON object, e.g. '{\"hidden\": 64}'")
    try:
        model = factory(**kwargs)
    except TBNError:
        raise
    except Exception as e:
        raise TBNError(f"{options.model}() failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise TBNError(f"{options.model}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_variant(dataset: str, variant: str, seed: int, options: TrainOptions | None = None) -> nn.Module:
    """The data set's model (or ``options.model``'s), initialised from ``seed``, converted as
    ``variant`` asks (see :func:`parse_variant`)."""
    options = options or TrainOptions()
    spec = parse_variant(variant)
    torch.manual_seed(seed)
    model = _base_model(dataset, options)
    if spec.kind == "tbn":
        p = spec.p
        assert p is not None
        overrides = dict(options.overrides) if p > 1 else {}
        if options.tile_first and p > 1:
            first = tiling_plan(model, p, min_size=0)[0]
            overrides.setdefault(first.name, p if first.numel % p == 0 else 1)
        tbnify(
            model,
            p=p,
            min_size=options.min_size if p > 1 else 0,
            keep_first_last_binary=options.keep_first_last_binary,
            overrides=overrides,
            alpha=options.alpha,
            alpha_source=options.alpha_source,
            verbose=False,  # the run's own report lists the layers
        )  # type: ignore[arg-type]
    elif spec.kind == "snn":
        subbitify(model, tau=spec.tau or 5, skip_first=True)
        if not any(isinstance(m, SubBitConv2d) for m in model.modules()):
            raise TBNError(
                f"variant {variant}: the {dataset} model has no 3×3 convolution after the first layer",
                hint="SNN variants need a CNN (digits, cifar10 or --model)",
            )
        if any(type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d) for m in model.modules()):
            tbnify(
                model, p=1, min_size=0, alpha=options.alpha, alpha_source=options.alpha_source, verbose=False
            )  # type: ignore[arg-type]
    elif spec.kind == "bitwise":
        bitwiseify(model, k=spec.k or 6, trainable=spec.trainable if spec.trainable is not None else 3)
        if not any(isinstance(m, BitwiseLayer) for m in model.modules()):
            raise TBNError(f"variant {variant}: the model has no Linear or Conv2d layer")
    return model


def layer_format(m: nn.Module) -> str:
    """``"tiled"``, ``"binary"``, ``"snn"``, ``"bitwise"`` or ``"dense"`` for a Linear/Conv layer."""
    if isinstance(m, TiledLayer):
        return "tiled" if m.p > 1 else "binary"
    if isinstance(m, SubBitConv2d):
        return "snn"
    if isinstance(m, BitwiseLayer):
        return "bitwise"
    return "dense"


def _check_forward(model: nn.Module, data: DataSplit, dataset: str, variant: str) -> None:
    """Run the model on two samples (eval mode): a model that does not fit the data fails here,
    with one line, before any training starts."""
    x = _as_float(data.x_train[:2])
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:
        raise TBNError(
            f"the {variant} model fails on {dataset} samples of shape {list(x.shape[1:])}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint="fix the model or reshape the samples with --input-shape",
        ) from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < data.num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TBNError(
            f"the {variant} model gives {shape} on {dataset}: expected logits [N, {data.num_classes}] "
            f"(one per class)"
        )


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(_as_float(x[i : i + batch]))
            correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / max(len(x), 1)


@contextlib.contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_one(
    dataset: str,
    variant: str,
    seed: int = 0,
    options: TrainOptions | None = None,
    *,
    epochs: int | None = None,
    data: DataSplit | None = None,
    progress: bool = False,
) -> tuple[nn.Module, RunResult]:
    """Train one variant on one data set from ``seed``; returns the model (eval mode) and its result.

    ``epochs`` overrides ``options.epochs``.  The result's ``accuracy`` is measured on the held-out
    part of the split after the last epoch.
    """
    options = options or TrainOptions()
    if epochs is not None:
        options = replace(options, epochs=epochs)
    if dataset not in RECIPES:
        raise TBNError(f"unknown data set {dataset!r}", hint=f"use one of {', '.join(DATASETS)}")
    recipe = options.recipe(dataset)
    data = data or _data(dataset, options)
    p = variant_p(variant)
    t0 = time.perf_counter()
    with _torch_threads(options.threads):
        model = build_variant(dataset, variant, seed, options)
        stats = _fit(model, data, recipe, seed, progress=progress, desc=f"{dataset} {variant} s{seed}")
        acc = _accuracy(model, data.x_test, data.y_test)
    seconds = time.perf_counter() - t0
    size = summary(model, compiled=False).total  # the layers' own (authors') accounting
    layers = [
        {
            "name": name,
            "type": type(m).__name__,
            "weight_shape": list(m.weight.shape),
            "p": m.p if isinstance(m, TiledLayer) else None,
            "format": layer_format(m),
            **({"tau": m.tau} if isinstance(m, SubBitConv2d) else {}),
            **({"k": m.k, "trainable": sum(m.trainable_mask)} if isinstance(m, BitwiseLayer) else {}),
        }
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
    ]
    result = RunResult(
        dataset=dataset,
        variant=variant,
        p=p,
        seed=seed,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        accuracy=acc,
        train_accuracy=stats["train_accuracy"],
        final_loss=stats["loss"],
        bits_per_weight=size["bits_per_weight"],
        weight_bits=size["weight_bits"],
        model_bytes=size["bytes"],
        seconds=seconds,
        layers=layers,
    )
    return model.eval(), result


def _fit(model: nn.Module, data: DataSplit, recipe: Recipe, seed: int, progress: bool, desc: str) -> dict:
    """One run's training: :func:`~tbn_tvm.torch.fit` with the recipe (Adam, one-cycle, the
    seeded shuffling); returns the last epoch's training loss and accuracy."""
    history = fit(
        model,
        (data.x_train, data.y_train),
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        optimizer="adam",
        schedule="onecycle",
        seed=seed,
        progress={"leave": False} if progress else False,
        desc=desc,
    )
    last = history.epochs[-1]
    return {"loss": last["loss"], "train_accuracy": last["accuracy"]}


def _bar(iterable, desc: str, enabled: bool, leave: bool = True, total: int | None = None):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    # disable=None: bars only on a terminal, so logs and CI output stay clean.
    return tqdm(
        iterable, desc=desc, leave=leave, total=total, file=sys.stderr, dynamic_ncols=True, disable=None
    )


# ------------------------------------------------------------------------------- one job (worker)
def _job(
    dataset: str,
    variant: str,
    seed: int,
    options: TrainOptions,
    export_dir: str | None,
    export_form: str,
    progress: bool,
) -> RunResult:
    model, result = train_one(dataset, variant, seed, options, progress=progress)
    if export_dir is not None:
        result.export = _export(model, dataset, variant, Path(export_dir), export_form, options)
    return result


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _export(
    model: nn.Module, dataset: str, variant: str, folder: Path, form: str, options: TrainOptions
) -> dict:
    data = _data(dataset, options)
    stem = f"{dataset}-{variant}"
    example = _as_float(data.x_test[:1])
    res = export_onnx(model, example, folder / f"{stem}.onnx", form=form)  # type: ignore[arg-type]
    # A small reference for checking a compiled build: 64 held-out inputs stacked as
    # [N, *model input shape] (what CompiledModel.run takes), torch's logits [N, 1, classes], labels.
    x_ref = _as_float(data.x_test[:64])
    with torch.no_grad():
        logits = model.eval()(x_ref).numpy()
    np.savez_compressed(
        folder / f"{stem}.reference.npz",
        x=x_ref.numpy()[:, None],
        logits=logits[:, None],
        labels=data.y_test[:64],
    )
    # The trained weights (latent W and A included): build_variant(dataset, variant, seed, options)
    # then load_state_dict() restores the model for fine-tuning or further export.
    (folder.parent / "checkpoints").mkdir(exist_ok=True)
    torch.save(model.state_dict(), folder.parent / "checkpoints" / f"{stem}.pt")
    out = res.to_dict()
    out["path"] = f"onnx/{stem}.onnx"
    out["reference"] = f"onnx/{stem}.reference.npz"
    out["state_dict"] = f"checkpoints/{stem}.pt"
    return out


# ------------------------------------------------------------------------------------ the table
@dataclass
class TableResult:
    """Every run of :func:`train_table`, aggregated rows and where the files went."""

    runs: list[RunResult]
    options: TrainOptions
    seeds: list[int]
    wall_seconds: float
    workers: int
    command: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    compiler_check: dict[str, dict] = field(default_factory=dict)
    processes: int = 1  # data-parallel processes per run (torchrun)

    def rows(self) -> list[dict]:
        """One row per (data set, variant): mean/sd/min/max accuracy (percent) over the seeds."""
        out = []
        keys = list(dict.fromkeys((r.dataset, r.variant) for r in self.runs))
        for dataset, variant in keys:
            runs = [r for r in self.runs if r.dataset == dataset and r.variant == variant]
            accs = [100 * r.accuracy for r in runs]
            ref = "fp32" if any(r.variant == "fp32" for r in self.runs) else "model"
            fp = [100 * r.accuracy for r in self.runs if r.dataset == dataset and r.variant == ref]
            mean = statistics.fmean(accs)
            out.append(
                {
                    "dataset": dataset,
                    "variant": variant,
                    "p": runs[0].p,
                    "param": parse_variant(variant).label,
                    "bits_per_weight": runs[0].bits_per_weight,
                    "model_bytes": runs[0].model_bytes,
                    "accuracy_mean": mean,
                    "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "accuracy_min": min(accs),
                    "accuracy_max": max(accs),
                    "accuracies": {str(r.seed): 100 * r.accuracy for r in runs},
                    "delta_vs_fp32": mean - statistics.fmean(fp) if fp else None,
                    "seconds_per_run": statistics.fmean(r.seconds for r in runs),
                }
            )
        return out

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {
            "command": self.command,
            "options": asdict(self.options),
            "recipes": {
                d: asdict(self.options.recipe(d)) for d in dict.fromkeys(r.dataset for r in self.runs)
            },
            "seeds": self.seeds,
            "workers": self.workers,
            "processes": self.processes,
            "wall_seconds": self.wall_seconds,
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
            },
            "rows": self.rows(),
            "runs": [asdict(r) for r in self.runs],
            "compiler_check": self.compiler_check,
            "files": self.files,
        }

    def _tiling_text(self) -> str:
        o = self.options
        if not o.keep_first_last_binary:
            ends = "first/last layers tiled too"
        elif o.tile_first:
            ends = "first layer tiled too, last layer binary"
        else:
            ends = "first/last layers binary"
        text = f"min_size {o.min_size}, {ends}"
        text += f", alpha {o.alpha} from {o.alpha_source}"
        if o.overrides:
            text += ", overrides " + ", ".join(f"{k}={'fp32' if v is None else v}" for k, v in o.overrides)
        return text

    def markdown(self) -> str:
        """The result table(s) as markdown, one per data set."""
        lines: list[str] = []
        rows = self.rows()
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            recipe = self.options.recipe(dataset)
            data = _data(dataset, self.options)
            lines += [
                f"### {dataset}: {recipe.model}",
                "",
                f"{len(data.x_train):,} training / {len(data.x_test):,} held-out images; "
                f"{recipe.epochs} epochs, batch {recipe.batch_size}, "
                f"Adam + one-cycle max lr {recipe.lr:g}; "
                f"seeds {', '.join(map(str, self.seeds))}; tiled variants: {self._tiling_text()}.",
                "",
                "| variant | p / τ / k (hidden) | bits/weight | model bytes | held-out acc % (mean ± sd) | "
                "per seed | Δ vs fp32 | s/run |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in (r for r in rows if r["dataset"] == dataset):
                per_seed = " / ".join(f"{a:.2f}" for a in r["accuracies"].values())
                fp = r["delta_vs_fp32"] is None or r["variant"] in ("fp32", "model")
                delta = "—" if fp else f"{r['delta_vs_fp32']:+.2f}"
                lines.append(
                    f"| {r['variant']} | {r['param']} | {r['bits_per_weight']:.4f} | {r['model_bytes']:,} | "
                    f"{r['accuracy_mean']:.2f} ± {r['accuracy_sd']:.2f} | {per_seed} | "
                    f"{delta} | {r['seconds_per_run']:.1f} |"
                )
            lines.append("")
        parallel = (
            f"{self.processes} data-parallel processes (torchrun) per run"
            if self.processes > 1
            else f"{self.workers} worker process(es)"
        )
        lines.append(
            f"Wall time {self.wall_seconds:.0f} s with {parallel}, "
            f"{self.options.threads} torch thread(s) each (torch {torch.__version__})."
        )
        if self.compiler_check:
            lines += ["", "Compiler view of the exported files (`tbn_tvm.inspect`):", ""]
            for name, check in self.compiler_check.items():
                lines.append(f"- `{name}`: {check.get('summary', '')}")
        if self.command:
            lines += ["", f"Command: `{self.command}`"]
        return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        rs = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["bits_per_weight"])
        xs = [r["bits_per_weight"] for r in rs]
        ax.errorbar(
            xs,
            [r["accuracy_mean"] for r in rs],
            yerr=[r["accuracy_sd"] for r in rs],
            marker="o",
            capsize=3,
            label=dataset,
        )
        for r in rs:
            ax.annotate(
                r["variant"],
                (r["bits_per_weight"], r["accuracy_mean"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per weight (Linear/Conv weights, incl. 32-bit scales)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Sub-bit networks: accuracy vs bits per weight")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: The ``inspect`` format each trained layer format should be found as.
_EXPECTED_FORMAT = {"tiled": "tiled", "binary": "binary", "snn": "codebook", "bitwise": "bitplane"}


def _compiler_check(onnx_path: Path, trained: list[dict]) -> dict:
    """What ``tbn_tvm.inspect`` detects in an exported file, against the format (and ``p``) each
    layer was trained with: tiled ``p`` as ``tiled`` with that ``p``, binary as ``binary``, a
    sub-bit conv as ``codebook``, a bit-wise layer as ``bitplane``; dense layers are not checked."""
    try:
        import tbn_tvm

        report = tbn_tvm.inspect(str(onnx_path)).to_dict()
    except (ImportError, AttributeError) as e:
        return {"available": False, "summary": f"compiler inspect not available ({e})"}
    except Exception as e:  # never lose a finished training table to a compiler-side problem
        return {"available": True, "ok": False, "summary": f"inspect failed: {type(e).__name__}: {e}"}
    detected = [
        {
            "name": layer.get("name"),
            "format": layer.get("format"),
            "p": layer.get("p"),
            "weight_shape": layer.get("weight_shape"),
        }
        for layer in report.get("layers", [])
    ]
    expected = [
        layer for layer in trained if layer.get("format", "tiled" if layer["p"] else "dense") != "dense"
    ]
    by_name = {d["name"]: d for d in detected}
    if expected and all(e["name"] in by_name for e in expected):
        pairs = [(by_name[e["name"]], e) for e in expected]  # names from the export's metadata
        counted = True
    else:
        pairs = list(zip(detected, expected, strict=False))
        counted = len(detected) == len(expected)

    def agrees(d: dict, e: dict) -> bool:
        fmt = e.get("format") or ("tiled" if e["p"] > 1 else "binary")
        if d["weight_shape"] != e["weight_shape"] or d["format"] != _EXPECTED_FORMAT[fmt]:
            return False
        return d["p"] == e["p"] if fmt == "tiled" else True

    ok = counted and all(agrees(d, e) for d, e in pairs)
    found = ", ".join(
        f"{d['format']} p={d['p']}" if d["format"] == "tiled" else str(d["format"]) for d, _ in pairs
    )
    return {
        "available": True,
        "ok": ok,
        "layers": detected,
        "summary": ("agrees: " if ok else "DISAGREES: ") + found,
    }


def train_table(
    datasets: Sequence[str] = ("mnist", "digits"),
    variants: Sequence[str] = DEFAULT_VARIANTS,
    seeds: Sequence[int] = (0, 1, 2),
    options: TrainOptions | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    export_form: str = "tile",
    export: bool = True,
    plot: bool = True,
    progress: bool = False,
    command: str | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> TableResult:
    """Train every (data set, variant, seed), in ``workers`` processes (default: up to 2).

    With ``out_dir`` the results are written there: ``results.json``, ``results.md``,
    ``accuracy_vs_bits.png`` and, with ``export``, ``onnx/<dataset>-<variant>.onnx`` (from the
    first seed) plus a ``.reference.npz`` with 64 held-out inputs and torch's logits, and the
    trained weights ``checkpoints/<dataset>-<variant>.pt`` (a ``state_dict`` for
    :func:`build_variant`).  Files are
    written in a temporary folder first and moved into place at the end, so an interrupted run
    leaves nothing half-written.  With ``workers > 1`` the runs go to spawned processes, so a
    script calling this must guard its entry point with ``if __name__ == "__main__":``.

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every process runs the same table: the runs
    go one after the other (``workers`` is ignored), each trained data-parallel over all the
    processes (:func:`~tbn_tvm.torch.fit`), and only process 0 writes files.

    >>> table = train_table(["digits"], ["fp32", "tbn4"], seeds=[0],     # doctest: +SKIP
    ...                     out_dir="tbn-out/train")
    >>> print(table.markdown())                                          # doctest: +SKIP
    """
    options = options or TrainOptions()
    for v in variants:
        parse_variant(v)
    for d in datasets:
        if d not in RECIPES:
            raise TBNError(f"unknown data set {d!r}", hint=f"use one of {', '.join(DATASETS)}")
        data = _data(d, options)  # fail early on a missing folder
        for v in variants:
            _check_forward(build_variant(d, v, 0, options), data, d, v)  # ... and on bad overrides
    if not seeds:
        raise TBNError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise TBNError(f"duplicate seeds: {list(seeds)}")
    workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
    env = distributed_env()
    processes = 1
    if env is not None:  # torchrun: the runs in sequence, each data-parallel; only rank 0 writes
        workers, processes = 1, env[1]
        if env[0] != 0:
            out_dir, progress = None, False
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise TBNError(f"{out}: exists and is not a folder")
    stage = Path(tempfile.mkdtemp(prefix=".tbn-train-", dir=_existing_parent(out))) if out else None
    try:
        onnx_dir = None
        if stage is not None and export:
            onnx_dir = stage / "onnx"
            onnx_dir.mkdir()
        # Longest jobs first so that the workers finish together.
        order = {"cifar10": 0, "mnist": 1, "digits": 2}
        jobs = [
            (d, v, s)
            for d in sorted(datasets, key=lambda d: order.get(d, 3))
            for v in variants
            for s in seeds
        ]
        t0 = time.perf_counter()
        runs = _run_jobs(jobs, options, onnx_dir, export_form, seeds[0], workers, progress, on_result)
        wall = time.perf_counter() - t0
        key = {job: i for i, job in enumerate(itertools.product(datasets, variants, seeds))}
        runs.sort(key=lambda r: key[(r.dataset, r.variant, r.seed)])
        table = TableResult(
            runs=runs,
            options=options,
            seeds=list(seeds),
            wall_seconds=wall,
            workers=workers,
            command=command,
            processes=processes,
        )
        if stage is not None and out is not None:
            if onnx_dir is not None:
                for r in runs:
                    if r.export and any(layer.get("format", "dense") != "dense" for layer in r.layers):
                        rel = r.export["path"]
                        table.compiler_check[rel] = _compiler_check(stage / rel, r.layers)
            if plot:
                try:
                    _plot(table.rows(), stage / "accuracy_vs_bits.png")
                except ImportError:
                    print("warning: matplotlib is not installed: no accuracy_vs_bits.png", file=sys.stderr)
            (stage / "results.md").write_text(table.markdown())
            table.files = {
                p.relative_to(stage).as_posix(): str(out / p.relative_to(stage))
                for p in sorted(stage.rglob("*"))
                if p.is_file()
            }
            table.files["results.json"] = str(out / "results.json")
            (stage / "results.json").write_text(json.dumps(table.to_dict(), indent=2) + "\n")
            _move_into(stage, out)
        return table
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _existing_parent(out: Path) -> Path:
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def _move_into(stage: Path, out: Path) -> None:
    """Move every file of ``stage`` to the same place under ``out`` (each move is atomic)."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(stage.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, dst)
            except OSError:  # another file system: copy next to the target, then rename
                tmp = dst.with_name(f".{dst.name}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)


def _run_jobs(
    jobs,
    options: TrainOptions,
    onnx_dir: Path | None,
    export_form: str,
    export_seed: int,
    workers: int,
    progress: bool,
    on_result,
) -> list[RunResult]:
    results: list[RunResult] = []

    def done(r: RunResult, bar) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{r.dataset} {r.variant} seed {r.seed}: {100 * r.accuracy:.2f}%")

    def export_to(seed: int) -> str | None:
        return str(onnx_dir) if onnx_dir is not None and seed == export_seed else None

    bar = _bar(None, desc="train", enabled=progress, total=len(jobs))
    try:
        if workers == 1 or len(jobs) == 1:
            for d, v, s in jobs:
                done(_job(d, v, s, options, export_to(s), export_form, progress), bar)
                if hasattr(bar, "update"):
                    bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)),
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(options.threads,),
            ) as pool:
                futures = [
                    pool.submit(_job, d, v, s, options, export_to(s), export_form, False) for d, v, s in jobs
                ]
                try:
                    for fut in cf.as_completed(futures):
                        done(fut.result(), bar)
                        if hasattr(bar, "update"):
                            bar.update(1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        if hasattr(bar, "close"):
            bar.close()
    return results
