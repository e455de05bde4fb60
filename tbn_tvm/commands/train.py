"""``tbn-tvm train``: train fp32, binary, tiled, sub-bit and bit-wise variants of a bundled or a
user's model, write a table, a plot and ONNX files.

tbn-tvm train --dataset mnist digits --seeds 0 1 2 --out tbn-out/train
tbn-tvm train --dataset digits --variants fp32 tbn4 snn5 bitwise6x3 --out tbn-out/train
tbn-tvm train --model mypackage.models:small_cnn --dataset mnist --input-shape 1,28,28 --p 4
tbn-tvm train --model mymodel.py:net --data-npz mydata.npz --variants model snn5
torchrun --nproc_per_node 2 -m tbn_tvm train --model mymodel.py:net --data-npz mydata.npz
tbn-tvm compile tbn-out/train/onnx/mnist-tbn4.onnx --target cortex-m4 -o tbn-out/m4
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys

from tbn_tvm.cli import arg, command
from tbn_tvm.errors import TBNError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TBNError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise TBNError(f"expected a positive integer, got {value}")
    return value


def _parse_overrides(items: list[str] | None) -> tuple[tuple[str, int | None], ...]:
    """``["fc1=4", "conv*=fp32"]`` -> ``(("fc1", 4), ("conv*", None))``."""
    out = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise TBNError(f"bad --override {item!r}", hint="write LAYER=P, e.g. fc1=4 or fc3=fp32")
        if value == "fp32":
            out.append((name, None))
            continue
        try:
            p = int(value)
        except ValueError:
            p = 0
        if p < 1:
            raise TBNError(f"bad --override {item!r}: P must be a positive integer or fp32")
        out.append((name, p))
    return tuple(out)


def _parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` (or ``"1x28x28"``) -> ``(1, 28, 28)``."""
    parts = text.replace("x", ",").split(",")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise TBNError(
            f"bad --input-shape {text!r}", hint="write positive sizes separated by commas, e.g. 1,28,28"
        )
    return tuple(int(p) for p in parts)


def _command_line(args, datasets: list[str], variants: list[str]) -> str:
    """The command as a user would type it (for the result files)."""
    parts = ["tbn-tvm", "train"]
    if args.model:
        parts += ["--model", args.model]
    if args.data_npz:
        parts += ["--data-npz", args.data_npz]
    else:
        parts += ["--dataset", *datasets]
    parts += ["--variants", *variants, "--seeds", *map(str, args.seeds)]
    for item in args.override or []:
        parts += ["--override", item]
    for name in (
        "model_kwargs",
        "input_shape",
        "epochs",
        "batch_size",
        "lr",
        "min_size",
        "alpha",
        "alpha_source",
        "data",
        "train_limit",
        "workers",
        "threads",
        "out",
        "export_form",
    ):
        value = getattr(args, name)
        if value is not None:
            parts += ["--" + name.replace("_", "-"), str(value)]
    flags = ("tile-first", "no-export", "no-plot", "quiet")
    parts += [f"--{flag}" for flag in flags if getattr(args, flag.replace("-", "_"))]
    return " ".join(shlex.quote(p) for p in parts)


@command("train", help="Train full-precision, binary, tiled, sub-bit and bit-wise variants and export ONNX")
@arg(
    "--dataset",
    nargs="+",
    choices=["mnist", "digits", "cifar10"],
    default=None,
    help="data set(s): mnist (bundled test set, first 8,000 train / last 2,000 held out), "
    "digits (sklearn), cifar10 (needs --data) (default: digits)",
)
@arg(
    "--variants",
    nargs="+",
    default=None,
    metavar="VARIANT",
    help="fp32, binary, tbnP (tbn2, tbn4, ...), snnT (SNN codebook of 2^T 3x3 kernels, e.g. snn5), "
    "bitwiseKxT (K-bit bit-wise weights, T most significant bits trained, e.g. bitwise6x3), "
    "model (a --model as its factory returns it) (default: fp32 binary tbn2 tbn4 tbn8; with "
    "--model: model)",
)
@arg(
    "--model",
    default=None,
    metavar="MODULE:FACTORY",
    help="train your own model: package.module:factory or path/to/file.py:factory, a function "
    "returning a torch.nn.Module (the current folder is importable)",
)
@arg(
    "--model-kwargs",
    default=None,
    metavar="JSON",
    help="keyword arguments for the --model factory, a JSON object",
)
@arg(
    "--p", type=int, default=None, metavar="P", help="with --model: tbnify it with this p (the variant tbnP)"
)
@arg(
    "--data-npz",
    default=None,
    metavar="FILE",
    help="your own data: a .npz with arrays x [N, ...] and y [N] (class indices), optionally x_test "
    "and y_test (else a seeded random 20%% is held out); needs --model",
)
@arg(
    "--input-shape",
    default=None,
    metavar="D0,D1,...",
    help="reshape every sample to this shape (e.g. 1,28,28 to give MNIST images to a CNN)",
)
@arg(
    "--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED", help="training seeds (default: 0 1 2)"
)
@arg("--epochs", type=_positive, default=None, help="epochs (default: 20 mnist, 40 digits, 30 cifar10)")
@arg("--batch-size", type=_positive, default=None, help="batch size (default: 128 mnist/cifar10, 64 digits)")
@arg("--lr", type=float, default=None, help="peak learning rate of the one-cycle schedule (default: 3e-3)")
@arg(
    "--min-size",
    type=int,
    default=0,
    help="layers with fewer weights stay binary (p=1); the authors use 64000 for large models "
    "(default: 0, so every hidden layer of the small models is tiled)",
)
@arg(
    "--alpha",
    choices=["per_copy", "single"],
    default="per_copy",
    help="one scale per tile copy (default) or one per layer",
)
@arg("--alpha-source", choices=["A", "W"], default="A", help="scales from a separate tensor A or from W")
@arg(
    "--override",
    action="append",
    default=None,
    metavar="LAYER=P",
    help="per-layer p for the tiled variants (repeatable; P an integer or fp32; LAYER a name or glob, "
    "e.g. fc1=4 tiles the first MNIST layer too)",
)
@arg(
    "--tile-first",
    action="store_true",
    help="tiled variants: tile the first layer too (the last one stays binary), like the authors' "
    "MNIST microcontroller model",
)
@arg("--data", default=None, metavar="DIR", help="CIFAR-10 folder (torchvision's cifar-10-batches-py)")
@arg("--train-limit", type=_positive, default=None, metavar="N", help="use only the first N training images")
@arg("--workers", type=_positive, default=None, help="training processes (default: min(2, CPUs))")
@arg("--threads", type=_positive, default=1, help="torch threads per process (default: 1)")
@arg(
    "--out",
    "-o",
    default=os.path.join("tbn-out", "train"),
    metavar="DIR",
    help="output folder (default: tbn-out/train)",
)
@arg(
    "--export-form",
    choices=["tile", "dense"],
    default="tile",
    help="ONNX weights as compact tile + Expand/Mul/Reshape (default) or folded dense tensors",
)
@arg("--no-export", action="store_true", help="do not write ONNX files")
@arg("--no-plot", action="store_true", help="do not draw accuracy_vs_bits.png")
@arg("--quiet", "-q", action="store_true", help="no progress bars")
def run(args) -> int:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin in (None, "namespace"):  # a bare folder named torch is not torch
        raise TBNError("training needs PyTorch", hint="pip install torch==2.13.0 (the CPU wheel)")
    try:
        from tbn_tvm.torch import train
        from tbn_tvm.torch.fitting import distributed_env
    except ImportError as e:
        raise TBNError(f"training needs {e.name}", hint="pip install 'tbn-tvm[torch]'") from None

    overrides = _parse_overrides(args.override)
    if args.data_npz is not None:
        if args.dataset is not None:
            raise TBNError("--data-npz replaces --dataset: give one of them")
        if not args.model:
            raise TBNError("--data-npz needs --model", hint="the bundled models fit only the bundled data")
        datasets = ["npz"]
    else:
        datasets = list(args.dataset or ["digits"])
    if args.data is not None and "cifar10" not in datasets:
        raise TBNError("--data is only used with --dataset cifar10")
    if args.p is not None:
        if not args.model:
            raise TBNError("--p goes with --model", hint="for the bundled models use --variants tbnP")
        if args.variants:
            raise TBNError("give --p or --variants, not both", hint=f"--variants tbn{args.p} is the same")
        if args.p < 1:
            raise TBNError(f"--p must be a positive integer, got {args.p}")
    if args.model_kwargs is not None and not args.model:
        raise TBNError("--model-kwargs goes with --model")
    options = train.TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_size=args.min_size,
        alpha=args.alpha,
        alpha_source=args.alpha_source,
        threads=args.threads,
        train_limit=args.train_limit,
        data_path=args.data_npz if args.data_npz is not None else args.data,
        overrides=overrides,
        tile_first=args.tile_first,
        model=args.model,
        model_kwargs=args.model_kwargs,
        input_shape=_parse_shape(args.input_shape) if args.input_shape else None,
    )
    if args.min_size < 0:
        raise TBNError(f"--min-size must be >= 0, got {args.min_size}")
    if args.lr is not None and not args.lr > 0:
        raise TBNError(f"--lr must be positive, got {args.lr}")
    if args.variants:
        variants = list(args.variants)
    elif args.model:
        variants = ["model" if args.p is None else ("binary" if args.p == 1 else f"tbn{args.p}")]
    else:
        variants = list(train.DEFAULT_VARIANTS)
    command_line = _command_line(args, datasets, variants)
    table = train.train_table(
        datasets,
        variants,
        args.seeds,
        options,
        out_dir=args.out,
        workers=args.workers,
        export_form=args.export_form,
        export=not args.no_export,
        plot=not args.no_plot,
        progress=not args.quiet,
        command=command_line,
    )
    env = distributed_env()
    if env is not None and env[0] != 0:
        return 0  # torchrun: process 0 reports and writes
    print(table.markdown())
    print(f"wrote {len(table.files)} files to {args.out}:")
    for rel in sorted(table.files):  # every one of them (checkpoints, reference outputs too)
        print(f"  {rel}")
    bad = [name for name, check in table.compiler_check.items() if check.get("ok") is False]
    if bad:
        print(f"warning: the compiler does not see the trained format in {', '.join(bad)}", file=sys.stderr)
    return 0
