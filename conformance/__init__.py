"""ONNX conformance suite for tbn-tvm: ONNX's own node tests, generated from the installed onnx
package, compiled with :func:`tbn_tvm.compile` and run with :meth:`tbn_tvm.CompiledModel.run`.

``python -m conformance --help`` for the command line; :func:`select_cases` and
:func:`run_suite` for the Python API; ``docs/conformance.md`` for the latest full run.
"""

from conformance.run import Suite, run_suite, select_cases

__all__ = ["Suite", "run_suite", "select_cases"]
