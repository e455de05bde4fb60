"""Board profiles: CPU flags, memory map and limits of each supported Cortex-M board.

A :class:`Board` says everything the firmware build and the runners need: the compiler flags for
its CPU/FPU, where FLASH and RAM start and how large they are (the limits the size check enforces),
the stack reserved in RAM, the QEMU machine that emulates it (``None`` for a physical board) and
its UART.  The compile targets ``cortex-m4`` / ``cortex-m7`` map to the QEMU machines
``mps2-an386`` / ``mps2-an500``.

>>> b = get_board("cortex-m4")
>>> b.name, b.qemu_machine, b.flash_bytes
('mps2-an386', 'mps2-an386', 4194304)
>>> get_board("nrf52840", ram_bytes=128 * 1024).ram_bytes
131072
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tbn_tvm.errors import TBNError

KiB = 1024
MiB = 1024 * 1024

_FPU_FLAGS = {
    # FPU name -> gcc -mfpu; all profiles use the hard-float ABI (floats in s-registers).
    "fpv4-sp-d16": "fpv4-sp-d16",  # Cortex-M4F: single precision
    "fpv5-sp-d16": "fpv5-sp-d16",  # Cortex-M7 with single-precision FPU (e.g. STM32F7)
    "fpv5-d16": "fpv5-d16",  # Cortex-M7 with double-precision FPU (e.g. STM32H7, QEMU's M7)
}


@dataclass(frozen=True)
class Board:
    """One Cortex-M board: CPU, memory map, limits and how to reach it.

    ``flash_bytes`` / ``ram_bytes`` are the limits the size check enforces; ``stack_bytes`` is
    reserved inside RAM (the firmware measures the stack it really used, see ``run_qemu``).
    """

    name: str
    cpu: str  # gcc -mcpu, e.g. "cortex-m4"
    fpu: str  # gcc -mfpu, one of _FPU_FLAGS
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    stack_bytes: int
    qemu_machine: str | None  # None: a physical board, reached over UART only
    uart_driver: str | None  # "cmsdk" (shipped driver) or None (the user supplies a HAL file)
    uart_base: int | None  # base address of the UART the protocol uses (informative for None drivers)
    cpu_hz: int  # core clock after reset, used to program the UART baud divider
    description: str = ""

    @property
    def cflags(self) -> tuple[str, ...]:
        """arm-none-eabi-gcc flags selecting this CPU, its FPU and the hard-float ABI."""
        return (f"-mcpu={self.cpu}", "-mthumb", "-mfloat-abi=hard", f"-mfpu={_FPU_FLAGS[self.fpu]}")

    def with_limits(
        self, flash_bytes: int | None = None, ram_bytes: int | None = None, stack_bytes: int | None = None
    ) -> Board:
        """A copy with other limits (``None`` keeps the profile's value)."""
        changes = {
            k: v
            for k, v in (("flash_bytes", flash_bytes), ("ram_bytes", ram_bytes), ("stack_bytes", stack_bytes))
            if v is not None
        }
        for key, value in changes.items():
            if not isinstance(value, int) or value <= 0:
                raise TBNError(f"{key} must be a positive number of bytes, got {value!r}")
        board = dataclasses.replace(self, **changes)
        if board.stack_bytes % 8 or not 256 <= board.stack_bytes < board.ram_bytes:
            raise TBNError(
                f"a stack of {board.stack_bytes} bytes does not suit {board.name}'s {board.ram_bytes} bytes "
                "of RAM (it must be a multiple of 8, at least 256 and smaller than the RAM)"
            )
        return board


BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        # QEMU's mps2-an386 (ARM MPS2 FPGA image AN386, Cortex-M4F): 4 MiB SSRAM1 at 0x0 holds the
        # code, 4 MiB SSRAM2/3 at 0x20000000 is the RAM; CMSDK APB UART0 at 0x40004000; 25 MHz.
        # Source: ARM AN386 application note, QEMU hw/arm/mps2.c.
        Board(
            name="mps2-an386",
            cpu="cortex-m4",
            fpu="fpv4-sp-d16",
            flash_origin=0x0000_0000,
            flash_bytes=4 * MiB,
            ram_origin=0x2000_0000,
            ram_bytes=4 * MiB,
            stack_bytes=16 * KiB,
            qemu_machine="mps2-an386",
            uart_driver="cmsdk",
            uart_base=0x4000_4000,
            cpu_hz=25_000_000,
            description="ARM MPS2 AN386 (Cortex-M4F), emulated by QEMU",
        ),
        # QEMU's mps2-an500 (AN500, Cortex-M7 with double-precision FPU): same memory map and UART
        # as AN386.  Source: ARM AN500 application note, QEMU hw/arm/mps2.c.
        Board(
            name="mps2-an500",
            cpu="cortex-m7",
            fpu="fpv5-d16",
            flash_origin=0x0000_0000,
            flash_bytes=4 * MiB,
            ram_origin=0x2000_0000,
            ram_bytes=4 * MiB,
            stack_bytes=16 * KiB,
            qemu_machine="mps2-an500",
            uart_driver="cmsdk",
            uart_base=0x4000_4000,
            cpu_hz=25_000_000,
            description="ARM MPS2 AN500 (Cortex-M7), emulated by QEMU",
        ),
        # Nordic nRF52840 (Cortex-M4F, 64 MHz): 1 MiB flash at 0x0, 256 KiB RAM at 0x20000000;
        # UARTE0 at 0x40002000.  Source: nRF52840 Product Specification v1.7, sections 4.2
        # "Memory" and 6.34 "UARTE".
        Board(
            name="nrf52840",
            cpu="cortex-m4",
            fpu="fpv4-sp-d16",
            flash_origin=0x0000_0000,
            flash_bytes=1 * MiB,
            ram_origin=0x2000_0000,
            ram_bytes=256 * KiB,
            stack_bytes=8 * KiB,
            qemu_machine=None,
            uart_driver=None,
            uart_base=0x4000_2000,
            cpu_hz=64_000_000,
            description="Nordic nRF52840 (Cortex-M4F), e.g. nRF52840-DK",
        ),
        # ST STM32F746 (Cortex-M7 with single-precision FPU, 16 MHz HSI after reset): 1 MiB flash
        # at 0x08000000, 320 KiB contiguous SRAM at 0x20000000 (DTCM 64 + SRAM1 240 + SRAM2 16);
        # USART3 (the ST-LINK virtual COM port on NUCLEO-F746ZG) at 0x40004800.
        # Source: STM32F745xx/746xx datasheet DS10916, RM0385 section 2.2 "Memory organization".
        Board(
            name="stm32f746",
            cpu="cortex-m7",
            fpu="fpv5-sp-d16",
            flash_origin=0x0800_0000,
            flash_bytes=1 * MiB,
            ram_origin=0x2000_0000,
            ram_bytes=320 * KiB,
            stack_bytes=8 * KiB,
            qemu_machine=None,
            uart_driver=None,
            uart_base=0x4000_4800,
            cpu_hz=16_000_000,
            description="ST STM32F746 (Cortex-M7), e.g. NUCLEO-F746ZG / 32F746G-DISCO",
        ),
    )
}

#: Compile targets -> the board (QEMU machine) they build for by default.
TARGET_BOARDS: dict[str, str] = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500"}


def get_board(
    name: str | Board,
    *,
    flash_bytes: int | None = None,
    ram_bytes: int | None = None,
    stack_bytes: int | None = None,
) -> Board:
    """The profile for a board or compile target name, with optional limit overrides.

    >>> get_board("cortex-m7").qemu_machine
    'mps2-an500'
    """
    if isinstance(name, Board):
        board = name
    else:
        key = TARGET_BOARDS.get(name, name)
        if key not in BOARDS:
            known = ", ".join(sorted(TARGET_BOARDS) + sorted(BOARDS))
            raise TBNError(f"unknown Cortex-M board or target '{name}'", hint=f"choose one of {known}")
        board = BOARDS[key]
    return board.with_limits(flash_bytes=flash_bytes, ram_bytes=ram_bytes, stack_bytes=stack_bytes)
