"""The benchmarks of tbn-tvm: ``python -m benchmarks [--quick] [--model FILE.onnx]`` from the
repository root (not part of the installed package).

Modules, one concept each: :mod:`benchmarks.models` (the ONNX generators of the default suite),
:mod:`benchmarks.harness` (timing, the trust rule, machine and version probes),
:mod:`benchmarks.suite` (the cases, running them on the host and on QEMU Cortex-M4, acceptance),
:mod:`benchmarks.report` (markdown, JSON, terminal summary), :mod:`benchmarks.plot` (the figure),
:mod:`benchmarks.cli` (the command line).
"""
