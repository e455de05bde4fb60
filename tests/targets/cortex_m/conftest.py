"""Fixtures for the Cortex-M tests: toolchain detection and firmwares built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from cm_support import FIXTURES, Toy


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    return Toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def firmware(tmp_path_factory: pytest.TempPathFactory, toy: Toy):
    """build(lib, board, mode) -> ELF path, cached for the session."""
    from tbn_tvm.targets.cortex_m import build_firmware

    root = tmp_path_factory.mktemp("fw")
    built: dict[tuple[str, str, str], Path] = {}
    libs = {"toy": toy.lib, "count": FIXTURES / "count_lib", "misbehave": FIXTURES / "misbehave_lib"}

    def build(lib: str, board: str = "cortex-m4", mode: str = "semihost") -> Path:
        key = (lib, board, mode)
        if key not in built:
            elf = root / f"{lib}-{board}-{mode}.elf"
            build_firmware(libs[lib], board, elf, mode=mode)
            built[key] = elf
        return built[key]

    return build
