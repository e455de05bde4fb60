"""The benchmark suite of tbn-tvm: ``python -m benchmarks [--quick]`` (see ``run.py``)."""
