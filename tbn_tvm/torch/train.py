"""Train full-precision, binary and tiled variants of a small model, tabulate, plot and export.

Variants: ``fp32`` (the dense model), ``binary`` (every Linear/Conv at p = 1, i.e. a binary-weight
network) and ``tbnP`` (``tbn2``, ``tbn4``, ``tbn8``...: :func:`~tbn_tvm.torch.tbnify` with that
``p``; the first and last layers stay binary and, with the default ``min_size=0``, every hidden
layer is tiled).  Each (data set, variant, seed) is one run: Adam with a one-cycle learning-rate
schedule, cross-entropy, no augmentation, the held-out accuracy after the last epoch (no model
selection on the held-out set).  Runs are spread over worker processes with one torch thread
each (more threads make these tiny models slower on a shared CPU).

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
import torch.nn.functional as F
from torch import nn

from tbn_tvm.datasets import DataSplit, load_cifar10_folder, load_digits_split, load_mnist_split
from tbn_tvm.errors import TBNError
from tbn_tvm.torch.export import export_onnx
from tbn_tvm.torch.layers import TiledLayer
from tbn_tvm.torch.models import MODELS
from tbn_tvm.torch.summary import summary
from tbn_tvm.torch.tbnify import tbnify, tiling_plan

__all__ = [
    "DEFAULT_VARIANTS",
    "RECIPES",
    "Recipe",
    "TrainOptions",
    "RunResult",
    "TableResult",
    "variant_p",
    "load_dataset",
    "build_variant",
    "train_one",
    "train_table",
]

DEFAULT_VARIANTS = ("fp32", "binary", "tbn2", "tbn4", "tbn8")
DATASETS = ("mnist", "digits", "cifar10")


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

    def recipe(self, dataset: str) -> Recipe:
        """The data set's recipe with this object's overrides applied."""
        base = RECIPES[dataset]
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


def variant_p(variant: str) -> int | None:
    """``"fp32"`` -> None, ``"binary"`` -> 1, ``"tbn4"`` -> 4.

    >>> variant_p("tbn8")
    8
    """
    if variant == "fp32":
        return None
    if variant == "binary":
        return 1
    m = re.fullmatch(r"tbn([1-9][0-9]*)", variant)
    if not m:
        raise TBNError(
            f"unknown variant {variant!r}", hint="use fp32, binary or tbnP with an integer P, e.g. tbn4"
        )
    return int(m.group(1))


# ---------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=4)
def load_dataset(name: str, data_path: str | None = None, train_limit: int | None = None) -> DataSplit:
    """The split a data set name stands for (cached per process)."""
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
    else:
        raise TBNError(f"unknown data set {name!r}", hint=f"use one of {', '.join(DATASETS)}")
    if train_limit:
        data = replace(data, x_train=data.x_train[:train_limit], y_train=data.y_train[:train_limit])
    return data


def _as_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t


# -------------------------------------------------------------------------------------- models
def build_variant(dataset: str, variant: str, seed: int, options: TrainOptions | None = None) -> nn.Module:
    """The data set's model, initialised from ``seed``, tiled as ``variant`` asks."""
    options = options or TrainOptions()
    p = variant_p(variant)
    torch.manual_seed(seed)
    model = MODELS[dataset]()
    if p is not None:
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
        )  # type: ignore[arg-type]
    return model


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
    data = data or load_dataset(dataset, options.data_path, options.train_limit)
    p = variant_p(variant)
    t0 = time.perf_counter()
    with _torch_threads(options.threads):
        model = build_variant(dataset, variant, seed, options)
        stats = _fit(model, data, recipe, seed, progress=progress, desc=f"{dataset} {variant} s{seed}")
        acc = _accuracy(model, data.x_test, data.y_test)
    seconds = time.perf_counter() - t0
    size = summary(model).total
    layers = [
        {
            "name": name,
            "type": type(m).__name__,
            "weight_shape": list(m.weight.shape),
            "p": m.p if isinstance(m, TiledLayer) else None,
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
    x, y = data.x_train, torch.from_numpy(data.y_train.astype(np.int64))
    n = len(x)
    steps = math.ceil(n / recipe.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    bar = _bar(range(recipe.epochs), desc=desc, enabled=progress, leave=False)
    loss_sum = correct = seen = 0.0
    for _ in bar:
        model.train()
        order = torch.randperm(n, generator=gen).numpy()
        loss_sum = correct = seen = 0.0
        for i in range(steps):
            idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb, yb = _as_float(x[idx]), y[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += float((logits.argmax(1) == yb).sum())
            seen += len(idx)
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{correct / max(seen, 1):.3f}")
    return {"loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


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
    data = load_dataset(dataset, options.data_path, options.train_limit)
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

    def rows(self) -> list[dict]:
        """One row per (data set, variant): mean/sd/min/max accuracy (percent) over the seeds."""
        out = []
        keys = list(dict.fromkeys((r.dataset, r.variant) for r in self.runs))
        for dataset, variant in keys:
            runs = [r for r in self.runs if r.dataset == dataset and r.variant == variant]
            accs = [100 * r.accuracy for r in runs]
            fp = [100 * r.accuracy for r in self.runs if r.dataset == dataset and r.variant == "fp32"]
            mean = statistics.fmean(accs)
            out.append(
                {
                    "dataset": dataset,
                    "variant": variant,
                    "p": runs[0].p,
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
            data = load_dataset(dataset, self.options.data_path, self.options.train_limit)
            lines += [
                f"### {dataset}: {recipe.model}",
                "",
                f"{len(data.x_train):,} training / {len(data.x_test):,} held-out images; "
                f"{recipe.epochs} epochs, batch {recipe.batch_size}, "
                f"Adam + one-cycle max lr {recipe.lr:g}; "
                f"seeds {', '.join(map(str, self.seeds))}; tiled variants: {self._tiling_text()}.",
                "",
                "| variant | p (hidden) | bits/weight | model bytes | held-out acc % (mean ± sd) | "
                "per seed | Δ vs fp32 | s/run |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in (r for r in rows if r["dataset"] == dataset):
                per_seed = " / ".join(f"{a:.2f}" for a in r["accuracies"].values())
                fp = r["delta_vs_fp32"] is None or r["variant"] == "fp32"
                delta = "—" if fp else f"{r['delta_vs_fp32']:+.2f}"
                p = r["p"] if r["p"] is not None else "—"
                lines.append(
                    f"| {r['variant']} | {p} | {r['bits_per_weight']:.4f} | {r['model_bytes']:,} | "
                    f"{r['accuracy_mean']:.2f} ± {r['accuracy_sd']:.2f} | {per_seed} | "
                    f"{delta} | {r['seconds_per_run']:.1f} |"
                )
            lines.append("")
        lines.append(
            f"Wall time {self.wall_seconds:.0f} s with {self.workers} worker process(es), "
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
    ax.set_title("Tiled Bit Networks: accuracy vs bits per weight")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _compiler_check(onnx_path: Path, trained: list[dict]) -> dict:
    """What ``tbn_tvm.inspect`` detects in an exported file, against the p each layer was trained with."""
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
    expected = [layer for layer in trained if layer["p"] is not None]
    ok = len(detected) == len(expected) and all(
        d["weight_shape"] == e["weight_shape"]
        and (d["format"] == "tiled" and d["p"] == e["p"] if e["p"] > 1 else d["format"] == "binary")
        for d, e in zip(detected, expected, strict=False)
    )
    found = ", ".join(f"{d['format']} p={d['p']}" for d in detected)
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

    >>> table = train_table(["digits"], ["fp32", "tbn4"], seeds=[0],     # doctest: +SKIP
    ...                     out_dir="tbn-out/train")
    >>> print(table.markdown())                                          # doctest: +SKIP
    """
    options = options or TrainOptions()
    for v in variants:
        variant_p(v)
    for d in datasets:
        if d not in RECIPES:
            raise TBNError(f"unknown data set {d!r}", hint=f"use one of {', '.join(DATASETS)}")
        load_dataset(d, options.data_path, options.train_limit)  # fail early on a missing folder
        for v in variants:
            build_variant(d, v, 0, options)  # ... and on bad overrides
    if not seeds:
        raise TBNError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise TBNError(f"duplicate seeds: {list(seeds)}")
    workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
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
            runs=runs, options=options, seeds=list(seeds), wall_seconds=wall, workers=workers, command=command
        )
        if stage is not None and out is not None:
            if onnx_dir is not None:
                for r in runs:
                    if r.export and r.p is not None:
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
