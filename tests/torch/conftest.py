"""Tests of the PyTorch side (``tbn_tvm.torch``): skipped as a whole when torch is not installed.

``tests/`` is on ``sys.path`` (tests/conftest.py), so a bare ``import torch`` could find this
folder as a namespace package when the real torch is missing: check for a real module.
"""

from __future__ import annotations

import importlib.util

_spec = importlib.util.find_spec("torch")
HAVE_TORCH = _spec is not None and _spec.origin not in (None, "namespace")

if not HAVE_TORCH:
    collect_ignore_glob = ["test_*.py"]
else:
    import pytest
    import torch

    torch.set_num_threads(1)  # more threads make these tiny models slower on a shared CPU

    def pytest_collection_modifyitems(config, items):
        for item in items:
            if "tests/torch/" in item.nodeid.replace("\\", "/"):
                item.add_marker(pytest.mark.torch)
