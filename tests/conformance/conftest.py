"""Set-up of the conformance tests: the repository root on ``sys.path`` (the ``conformance``
package lives next to ``tbn_tvm``, not installed), and ``qemu`` tests skipped without the Arm
toolchain."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _toolchain_missing() -> str | None:
    from tbn_tvm.errors import TBNError
    from tbn_tvm.targets.cortex_m.toolchain import APT_COMMAND, find_gcc, find_qemu

    try:
        find_gcc()
        find_qemu()
    except TBNError as e:
        return f"{e.message}; install with: {APT_COMMAND}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("qemu"):
        missing = _toolchain_missing()
        if missing:
            pytest.skip(f"Cortex-M toolchain absent (arm-none-eabi-gcc, qemu-system-arm): {missing}")
