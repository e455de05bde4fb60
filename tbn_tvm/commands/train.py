"""``tbn-tvm train``: train fp32, binary and tiled variants, write a table, a plot and ONNX files.

tbn-tvm train --dataset mnist digits --seeds 0 1 2 --out tbn-out/train
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


def _command_line(args, variants: list[str]) -> str:
    """The command as a user would type it (for the result files)."""
    parts = [
        "tbn-tvm",
        "train",
        "--dataset",
        *args.dataset,
        "--variants",
        *variants,
        "--seeds",
        *map(str, args.seeds),
    ]
    for item in args.override or []:
        parts += ["--override", item]
    for name in (
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


@command("train", help="Train full-precision, binary and tiled variants and export ONNX")
@arg(
    "--dataset",
    nargs="+",
    choices=["mnist", "digits", "cifar10"],
    default=["digits"],
    help="data set(s): mnist (bundled test set, first 8,000 train / last 2,000 held out), "
    "digits (sklearn), cifar10 (needs --data) (default: digits)",
)
@arg(
    "--variants",
    nargs="+",
    default=None,
    metavar="VARIANT",
    help="fp32, binary, tbn2, tbn4, tbn8, ... (default: fp32 binary tbn2 tbn4 tbn8)",
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
    except ImportError as e:
        raise TBNError(f"training needs {e.name}", hint="pip install 'tbn-tvm[torch]'") from None

    overrides = _parse_overrides(args.override)
    if args.data is not None and "cifar10" not in args.dataset:
        raise TBNError("--data is only used with --dataset cifar10")
    options = train.TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_size=args.min_size,
        alpha=args.alpha,
        alpha_source=args.alpha_source,
        threads=args.threads,
        train_limit=args.train_limit,
        data_path=args.data,
        overrides=overrides,
        tile_first=args.tile_first,
    )
    if args.min_size < 0:
        raise TBNError(f"--min-size must be >= 0, got {args.min_size}")
    if args.lr is not None and not args.lr > 0:
        raise TBNError(f"--lr must be positive, got {args.lr}")
    variants = args.variants or list(train.DEFAULT_VARIANTS)
    command_line = _command_line(args, variants)
    table = train.train_table(
        args.dataset,
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
    print(table.markdown())
    print(f"wrote {len(table.files)} files to {args.out}:")
    for rel in sorted(table.files):
        if rel.endswith((".json", ".md", ".png", ".onnx")):
            print(f"  {rel}")
    bad = [name for name, check in table.compiler_check.items() if check.get("ok") is False]
    if bad:
        print(f"warning: the compiler does not see the trained tiling in {', '.join(bad)}", file=sys.stderr)
    return 0
