"""Firmware build: section sizes, per-symbol sizes, determinism, size refusal, library errors."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cm_support import FIXTURES, write_dense_lib

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m import build_firmware, firmware_info, get_board, symbol_sizes
from tbn_tvm.targets.cortex_m import firmware as fw_module
from tbn_tvm.targets.cortex_m.elf import ElfFile
from tbn_tvm.targets.cortex_m.toolchain import find_gcc

pytestmark = pytest.mark.qemu


def _binutil(tool: str) -> str:
    return find_gcc().replace("arm-none-eabi-gcc", f"arm-none-eabi-{tool}")


def test_size_report_matches_binutils(toy, tmp_path: Path) -> None:
    elf = tmp_path / "fw.elf"
    report = build_firmware(toy.lib, "cortex-m4", elf)
    sizes = {}
    for line in subprocess.run(
        [_binutil("size"), "-A", str(elf)], capture_output=True, text=True
    ).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    assert report.text == sizes[".text"] and report.rodata == sizes[".rodata"]
    assert report.data == sizes.get(".data", 0) and report.bss == sizes[".bss"]
    assert report.stack == sizes[".stack"] == get_board("cortex-m4").stack_bytes
    assert report.flash == report.text + report.rodata + report.data
    assert report.ram == report.data + report.bss + report.stack
    assert report.to_dict()["flash"]["used"] == report.flash and not report.estimated


def test_library_symbols_are_attributed(toy, tmp_path: Path) -> None:
    report = build_firmware(toy.lib, "cortex-m7", tmp_path / "fw.elf")
    by_name = {s.name: s for s in report.library_symbols}
    n_out, n_in = toy.weight.shape
    assert by_name["toy_weight"].size == 4 * n_out * n_in and by_name["toy_weight"].memory == "flash"
    assert by_name["toy_bias"].size == 4 * n_out and by_name["toy_bias"].kind == "rodata"
    assert by_name["toy_arena"].size == 4 * n_out and by_name["toy_arena"].memory == "ram"
    assert by_name["tbn_model_run"].kind == "text"
    assert "main" not in by_name and "tbn_reset_handler" not in by_name  # firmware, not library
    # The same figures as binutils' nm.
    nm = subprocess.run(
        [_binutil("nm"), "-S", str(tmp_path / "fw.elf")], capture_output=True, text=True
    ).stdout
    nm_sizes = {p[3]: int(p[1], 16) for p in (ln.split() for ln in nm.splitlines()) if len(p) == 4}
    assert all(nm_sizes[s.name] == s.size for s in report.library_symbols)
    assert {s.name for s in symbol_sizes(tmp_path / "fw.elf")} >= {"main", "tbn_model_run", "tbn_fw_info"}


def test_firmware_describes_itself(toy, firmware) -> None:
    info = firmware_info(firmware("toy", "cortex-m4", "uart"))
    assert (info.mode, info.input_size, info.output_size, info.arena_bytes) == ("uart", 64, 10, 40)
    assert firmware_info(firmware("toy")).mode == "semihost"


def test_two_builds_are_byte_identical(toy, tmp_path: Path) -> None:
    copy = shutil.copytree(toy.lib, tmp_path / "elsewhere" / "lib")
    for mode in ("semihost", "uart"):
        a, b = tmp_path / f"a-{mode}.elf", tmp_path / "deeper" / f"b-{mode}.elf"
        build_firmware(toy.lib, "cortex-m4", a, mode=mode)
        build_firmware(copy, "cortex-m4", b, mode=mode)
        assert a.read_bytes() == b.read_bytes()
        assert str(tmp_path).encode() not in a.read_bytes()


def test_too_large_is_refused_before_linking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    big = write_dense_lib(
        tmp_path / "big", np.ones((64, 1024), np.float32), np.zeros(64, np.float32)
    )  # 256 KiB
    monkeypatch.setattr(fw_module, "_link", lambda *a: pytest.fail("the linker ran"))
    elf = tmp_path / "fw.elf"
    with pytest.raises(TBNError) as e:
        build_firmware(big, "nrf52840", elf, flash_bytes=200_000)
    msg = e.value.message
    assert "does not fit nrf52840" in msg and "(available 200000)" in msg and "(available 262144" in msg
    needed_flash = int(msg.split("needs about ")[1].split()[0])
    assert needed_flash > 64 * 1024 * 4
    assert not elf.exists()
    with pytest.raises(TBNError, match=r"RAM \(available 10000, of which 8192 stack\)"):
        build_firmware(big, "nrf52840", elf, ram_bytes=10_000)


def test_link_time_overflow_names_exact_sizes(toy, tmp_path: Path) -> None:
    # The pre-link estimate leaves out libgcc/libm; the linker's verdict is reported exactly too.
    exact = build_firmware(toy.lib, "nrf52840", tmp_path / "ok.elf").flash
    with pytest.raises(TBNError, match=f"needs {exact} bytes of flash \\(available {exact - 1}\\)"):
        build_firmware(toy.lib, "nrf52840", tmp_path / "no.elf", flash_bytes=exact - 1)
    assert build_firmware(toy.lib, "nrf52840", tmp_path / "edge.elf", flash_bytes=exact).flash == exact


def test_physical_board_with_user_uart_driver(toy, tmp_path: Path) -> None:
    with pytest.raises(TBNError, match="ships no UART driver for stm32f746"):
        build_firmware(toy.lib, "stm32f746", tmp_path / "fw.elf", mode="uart")
    elf = tmp_path / "fw.elf"
    build_firmware(toy.lib, "stm32f746", elf, mode="uart", uart_hal=FIXTURES / "stm32_usart_hal.c")
    board = get_board("stm32f746")
    initial_sp, reset = struct.unpack("<II", ElfFile.load(elf).read(board.flash_origin, 8))
    assert initial_sp == board.ram_origin + board.stack_bytes  # stack at the bottom of RAM
    assert board.flash_origin < reset < board.flash_origin + board.flash_bytes and reset & 1  # Thumb


def test_library_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TBNError, match="has no model.h"):
        build_firmware(tmp_path / "empty", "cortex-m4", tmp_path / "fw.elf")
    broken = shutil.copytree(FIXTURES / "misbehave_lib", tmp_path / "broken")
    (broken / "model.c").write_text(
        '#include "model.h"\nint tbn_model_run(const float *in, float *out) { oops }\n'
    )
    with pytest.raises(TBNError, match="compiling lib/model.c for Cortex-M failed: .*error"):
        build_firmware(broken, "cortex-m4", tmp_path / "fw.elf")
    (broken / "model.c").write_text('#include "model.h"\nint not_the_entry_point(void) { return 0; }\n')
    with pytest.raises(TBNError, match="undefined tbn_model_run"):
        build_firmware(broken, "cortex-m4", tmp_path / "fw.elf")
    with pytest.raises(TBNError, match="unknown firmware mode"):
        build_firmware(broken, "cortex-m4", tmp_path / "fw.elf", mode="jtag")
