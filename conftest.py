"""Repository-level pytest set-up: the package's doctests are collected with the tests
(``--doctest-modules`` on ``tbn_tvm``); the PyTorch side is left out where torch is missing."""

import importlib.util

_spec = importlib.util.find_spec("torch")
if _spec is None or _spec.origin in (None, "namespace"):
    collect_ignore_glob = ["tbn_tvm/torch/*.py"]
