"""Run the benchmark suite: ``python -m benchmarks [--quick] [--out DIR]`` from the repository root.

The same as ``tbn-tvm bench`` (same options, see ``--help``): the runner is
:mod:`tbn_tvm.bench`; this entry point hands it the model generators of ``benchmarks/models.py``.
A full run takes a few minutes and writes ``benchmarks/results/report.md``, ``report.json`` and
``speedup.png``, copied to ``benchmarks/REPORT.md``, ``benchmarks/report.json`` and
``benchmarks/speedup.png``; ``--quick`` is the smoke run of the test suite (under a minute, no
copies).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from tbn_tvm.cli import build_parser, guarded

    argv = sys.argv[1:] if argv is None else list(argv)

    def run() -> int:
        args = build_parser().parse_args(["bench", *argv])
        from benchmarks import models
        from tbn_tvm.bench import run_from_args

        models.__bench_path__ = Path(models.__file__).resolve()
        return run_from_args(args, prog="python -m benchmarks", models=None if args.models else models)

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
