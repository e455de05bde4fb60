"""Board profiles, limits and the linker script rendered from them (no toolchain needed)."""

from __future__ import annotations

import re

import pytest

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m.boards import BOARDS, get_board
from tbn_tvm.targets.cortex_m.firmware import render_linker_script


def test_targets_map_to_qemu_machines() -> None:
    m4, m7 = get_board("cortex-m4"), get_board("cortex-m7")
    assert (m4.qemu_machine, m4.cpu, m4.fpu) == ("mps2-an386", "cortex-m4", "fpv4-sp-d16")
    assert (m7.qemu_machine, m7.cpu) == ("mps2-an500", "cortex-m7")
    assert m4.cflags == ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_profiles_are_consistent(name: str) -> None:
    b = BOARDS[name]
    assert b.stack_bytes % 8 == 0 and b.stack_bytes < b.ram_bytes
    assert b.flash_origin + b.flash_bytes <= b.ram_origin  # flash below RAM, no overlap
    assert (b.qemu_machine is None) == (b.uart_driver is None)


def test_physical_board_figures() -> None:
    assert (get_board("nrf52840").flash_bytes, get_board("nrf52840").ram_bytes) == (1 << 20, 256 << 10)
    assert (get_board("stm32f746").flash_origin, get_board("stm32f746").ram_bytes) == (0x0800_0000, 320 << 10)


def test_limits_override_without_touching_the_profile() -> None:
    small = get_board("nrf52840", flash_bytes=512 * 1024, ram_bytes=64 * 1024, stack_bytes=4096)
    assert (small.flash_bytes, small.ram_bytes, small.stack_bytes) == (512 * 1024, 64 * 1024, 4096)
    assert BOARDS["nrf52840"].flash_bytes == 1 << 20


@pytest.mark.parametrize(
    "kwargs", [{"flash_bytes": 0}, {"ram_bytes": -5}, {"stack_bytes": 1 << 30}, {"stack_bytes": 1001}]
)
def test_bad_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(TBNError):
        get_board("cortex-m4", **kwargs)


def test_unknown_board_lists_known_ones() -> None:
    with pytest.raises(TBNError) as e:
        get_board("esp32")
    assert "esp32" in e.value.message and "nrf52840" in str(e.value)


def test_linker_script_carries_the_memory_map() -> None:
    script = render_linker_script(get_board("stm32f746", ram_bytes=100_000, stack_bytes=2048))
    assert re.search(r"FLASH \(rx\)\s*: ORIGIN = 0x08000000, LENGTH = 1048576", script)
    assert re.search(r"RAM\s+\(rwx\) : ORIGIN = 0x20000000, LENGTH = 100000", script)
    assert ". += 2048;" in script and "${" not in script
