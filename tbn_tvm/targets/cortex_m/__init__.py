"""Cortex-M target: firmware build, size checks, QEMU and board (UART) runners.

The compiler emits a self-contained model C library (``model.h`` + ``.c`` files); this package
wraps it into firmware and runs it:

>>> from tbn_tvm.targets import cortex_m as cm                                    # doctest: +SKIP
>>> report = cm.build_firmware("out/lib", "cortex-m4", "out/firmware.elf")        # doctest: +SKIP
>>> y, stats = cm.run_qemu("out/firmware.elf", "cortex-m4", x, count_instructions=True)  # doctest: +SKIP
>>> cm.build_firmware("out/lib", "cortex-m4", "out/firmware_uart.elf", mode="uart")      # doctest: +SKIP
>>> y, stats = cm.run_uart("/dev/ttyACM0", x)                                     # doctest: +SKIP

See docs/cortex-m.md for dropping the library into a board project, flashing and the protocol.
"""

from tbn_tvm.targets.cortex_m.boards import BOARDS, TARGET_BOARDS, Board, get_board
from tbn_tvm.targets.cortex_m.firmware import (
    FirmwareInfo,
    SizeReport,
    SymbolSize,
    build_firmware,
    firmware_info,
    measure_elf,
    symbol_sizes,
)
from tbn_tvm.targets.cortex_m.qemu import run_qemu
from tbn_tvm.targets.cortex_m.toolchain import APT_COMMAND, Toolchain, ensure_toolchain
from tbn_tvm.targets.cortex_m.uart import run_uart, run_uart_qemu

__all__ = [
    "APT_COMMAND",
    "BOARDS",
    "TARGET_BOARDS",
    "Board",
    "FirmwareInfo",
    "SizeReport",
    "SymbolSize",
    "Toolchain",
    "build_firmware",
    "ensure_toolchain",
    "firmware_info",
    "get_board",
    "measure_elf",
    "run_qemu",
    "run_uart",
    "run_uart_qemu",
    "symbol_sizes",
]
