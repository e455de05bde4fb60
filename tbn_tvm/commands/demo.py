"""``tbn-tvm demo``: the main job in one command.

Compiles the bundled Tiled Bit Network (the paper authors' MNIST MLP) for a Cortex-M, runs it on
QEMU over the MNIST test images and prints accuracy, flash/RAM and instructions per inference,
next to the authors' own figure for their float C loop.
"""

from __future__ import annotations

import json
import sys
import time

from tbn_tvm.cli import arg, command

#: Instructions per inference of the authors' float C implementation of this MLP on QEMU M4
#: (gcc 12 -O2), as given in the project's issue tracker; their code is not part of tbn-tvm.
AUTHORS_INSTRUCTIONS = 2_645_000


@command("demo", help="Compile the bundled TBN MNIST model for Cortex-M, run it on QEMU, print the figures")
@arg("--target", default="cortex-m4", choices=["cortex-m4", "cortex-m7"], help="MCU (default cortex-m4)")
@arg("--samples", type=int, default=10000, help="how many MNIST test images to run (default all 10,000)")
@arg("--out", default=None, metavar="DIR", help="also keep the compiled artifact in DIR")
@arg("--json", action="store_true", help="print the figures as one JSON object")
def run(args) -> int:
    import numpy as np

    from tbn_tvm import zoo
    from tbn_tvm.api import compile as tbn_compile
    from tbn_tvm.datasets import load_mnist_test
    from tbn_tvm.errors import TBNError
    from tbn_tvm.report import inspect

    if not 1 <= args.samples <= 10000:
        raise TBNError("--samples must be between 1 and 10000")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    model = zoo.authors_mnist_mlp()
    rep = inspect(model)
    say("tbn-tvm demo: the paper authors' MNIST Tiled Bit Network (784-128-10, fc1 tiled p=4)")
    say(rep.table())
    t0 = time.perf_counter()
    say(f"\ncompiling for {args.target} ...")
    compiled = tbn_compile(model, args.target)
    compile_s = time.perf_counter() - t0
    images, labels = load_mnist_test()
    images, labels = images[: args.samples], labels[: args.samples]
    x = images.reshape(-1, 1, 784).astype(np.float32)
    say(f"running {len(x):,} test images on QEMU ({compiled.report()['qemu_machine']}) ...")
    y = compiled.run(x, count_instructions=True).reshape(len(x), -1)
    stats = compiled.last_run_stats
    pred = y.argmax(1)
    ref = zoo.authors_mnist_mlp_reference(images).argmax(1)
    acc = float((pred == labels).mean())
    agree = float((pred == ref).mean())
    r = compiled.report()
    ins = stats.get("instructions_per_inference")
    fig = {
        "target": args.target,
        "samples": len(x),
        "accuracy": acc,
        "agreement_with_numpy_reference": agree,
        "weight_bytes_in_flash": r["library_weight_bytes"],
        "flash_bytes": r["flash_bytes"],
        "ram_bytes": r["ram_bytes"],
        "instructions_per_inference": ins,
        "authors_instructions_per_inference": AUTHORS_INSTRUCTIONS,
        "fewer_instructions_than_authors": round(AUTHORS_INSTRUCTIONS / ins, 2) if ins else None,
        "compile_seconds": round(compile_s, 2),
        "qemu_seconds": round(stats["seconds"], 2),
    }
    if args.out:
        fig["artifact"] = str(compiled.save(args.out))
    if args.json:
        print(json.dumps(fig))
        return 0
    say("")
    say(
        f"accuracy           {acc * 100:.2f} % on {len(x):,} MNIST test images "
        f"(predictions equal to the numpy reference on {agree * 100:.2f} %)"
    )
    say(f"weights in flash   {r['library_weight_bytes']:,} bytes (fp32: {rep.totals()['fp32_bytes']:,})")
    say(f"firmware           flash {r['flash_bytes']:,} bytes, RAM {r['ram_bytes']:,} bytes (incl. stack)")
    if ins:
        say(
            f"instructions       {ins:,.0f} per inference on QEMU {args.target} "
            f"(authors' float C loop: {AUTHORS_INSTRUCTIONS:,}; {AUTHORS_INSTRUCTIONS / ins:.1f}x fewer)"
        )
    if agree < 1.0:
        print("warning: some predictions differ from the numpy reference", file=sys.stderr)
    return 0
