"""Train and export ``examples/bitwise4-mlp-mnist.onnx`` (issue 23): the MNIST MLP 784-256-256-10
with BatchNorm (``tbn_tvm.torch.models.mnist_mlp``), every Linear bit-wise with k = 4 bits per
weight (sign + 3 magnitude bits, ``W = α_row · q``, ``|q| ≤ 7``, one α per output channel;
Cristian Ivan's bit-wise training, ``tbn_tvm.torch.bitwise``), against its float twin and the
variant that trains only the top three bits (the lowest magnitude bit frozen at its quantised
start, Ivan's finding that the most significant bits carry the accuracy).

The recipe is ``tbn-tvm train``'s MNIST one (the bundled 8,000 / 2,000 split, 20 epochs, batch
128, Adam, one-cycle to 3e-3, one torch thread); the reported accuracy is on the 2,000 held-out
images after the last epoch.  Writes the k = 4 model of the first seed (all four bits trained)
in the compact export form (int8 ``q``, ``Cast → Mul`` by α) and its ``.reference.npz`` (64
held-out inputs ``[64, 1, 784]``, torch's logits ``[64, 1, 10]``, the labels), like the other
examples::

    .venv/bin/python examples/train_bitwise4_mlp.py [--seeds 0 1 2] [--no-export]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tbn_tvm.datasets import load_mnist_split
from tbn_tvm.torch import bitwiseify, export_onnx, fit
from tbn_tvm.torch.models import mnist_mlp

HERE = Path(__file__).resolve().parent
STEM = "bitwise4-mlp-mnist"
VARIANTS = {"fp32": None, "bitwise4x4": 4, "bitwise4x3": 3}  # name -> trained bits (None: float)


def build(variant: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = mnist_mlp()
    trained = VARIANTS[variant]
    if trained is not None:
        bitwiseify(model, k=4, trainable=trained, alpha="channel")
    return model


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_mnist_split(flatten=True)
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        for variant in VARIANTS:
            t0 = time.perf_counter()
            model = build(variant, seed)
            fit(
                model,
                (data.x_train, data.y_train),
                epochs=args.epochs,
                batch_size=128,
                lr=3e-3,
                optimizer="adam",
                schedule="onecycle",
                seed=seed,
                progress=False,
            )
            acc = accuracy(model, data.x_test, data.y_test)
            results[variant].append(acc)
            print(f"{variant:11s} seed {seed}: {100 * acc:.2f} % held out ({time.perf_counter() - t0:.0f} s)")
            if variant == "bitwise4x4" and seed == args.seeds[0] and not args.no_export:
                path = HERE / f"{STEM}.onnx"
                export_onnx(model, torch.from_numpy(data.x_test[:1]), path)
                x_ref = torch.from_numpy(data.x_test[:64])
                with torch.no_grad():
                    logits = model.eval()(x_ref).numpy()
                np.savez_compressed(
                    HERE / f"{STEM}.reference.npz",
                    x=x_ref.numpy()[:, None],
                    logits=logits[:, None],
                    labels=data.y_test[:64],
                )
                print(f"wrote {path} ({path.stat().st_size:,} bytes) and its .reference.npz")
    summary = {v: {"mean": float(np.mean(a)), "per_seed": a} for v, a in results.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
