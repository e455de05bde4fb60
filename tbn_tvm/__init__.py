"""tbn-tvm: compile sub-bit neural networks (Tiled Bit Networks) from ONNX with Apache TVM.

>>> import tbn_tvm
>>> model = tbn_tvm.compile("examples/tbn-mnist-mlp.onnx", target="llvm")   # doctest: +SKIP
>>> y = model.run(x)                                                      # doctest: +SKIP
>>> model.save("out/")                                                    # doctest: +SKIP

Heavy modules (TVM) load on first use, so importing the package is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["compile", "load", "inspect", "TBNError", "__version__"]

from tbn_tvm.errors import TBNError


def __getattr__(name: str):
    if name in ("compile", "load"):
        from tbn_tvm import api

        return getattr(api, name)
    if name == "inspect":
        from tbn_tvm import report

        return report.inspect
    raise AttributeError(f"module 'tbn_tvm' has no attribute {name!r}")
