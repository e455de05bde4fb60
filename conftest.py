"""Repository-level pytest set-up: the package's doctests are collected with the tests
(``--doctest-modules``); conftest files are not doctest modules (several share the basename);
the PyTorch side is left out where torch is missing."""

import importlib.util

collect_ignore_glob = ["tests/conftest.py", "tests/*/conftest.py", "tests/*/*/conftest.py"]

_spec = importlib.util.find_spec("torch")
if _spec is None or _spec.origin in (None, "namespace"):
    collect_ignore_glob.append("tbn_tvm/torch/*.py")
