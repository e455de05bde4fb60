"""Shared test set-up: make the helper modules in tests/ (onnx_zoo) importable."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))


def _toolchain_missing() -> str | None:
    from tbn_tvm.errors import TBNError
    from tbn_tvm.targets.cortex_m.toolchain import APT_COMMAND, find_gcc, find_qemu

    try:
        find_gcc()
        find_qemu()
    except TBNError as e:
        return f"{e.message}; install with: {APT_COMMAND}"
    return None


_MISSING: list[str | None] = []


def pytest_runtest_setup(item) -> None:
    """Tests marked ``qemu`` are skipped, with the reason, where the Arm toolchain is absent."""
    import pytest

    if item.get_closest_marker("qemu"):
        if not _MISSING:
            _MISSING.append(_toolchain_missing())
        if _MISSING[0]:
            pytest.skip(f"Cortex-M toolchain absent: {_MISSING[0]}")
