"""Architecture tests: skipped as a whole without torch, onnxscript (the exporter) or onnxruntime.

``tests/`` is on ``sys.path`` (tests/conftest.py), so a bare ``import torch`` could find the
``tests/torch`` folder as a namespace package when the real torch is missing: check for a real
module.
"""

from __future__ import annotations

import importlib.util


def _have(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin not in (None, "namespace")


HAVE_DEPS = all(_have(m) for m in ("torch", "onnxscript", "onnxruntime"))

if not HAVE_DEPS:
    collect_ignore_glob = ["test_*.py"]
else:
    import pytest
    import torch

    torch.set_num_threads(1)  # more threads make these small models slower on a shared CPU

    def pytest_collection_modifyitems(config, items):
        for item in items:
            if "tests/architectures/" in item.nodeid.replace("\\", "/"):
                item.add_marker(pytest.mark.torch)
