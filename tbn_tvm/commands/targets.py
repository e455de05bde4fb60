"""``tbn-tvm targets [--json]``: what ``compile --target`` accepts, and the Cortex-M boards
(``compile --board``) with their flash, RAM, default stack, QEMU machine and UART."""

from __future__ import annotations

import json

from tbn_tvm.cli import arg, command


def _kib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n // 1024} KiB"


@command("targets", help="List the compile targets and the Cortex-M boards with their flash and RAM")
@arg("--json", action="store_true", help="print one JSON object instead of tables")
def run(args) -> int:
    from tbn_tvm.report import text_table
    from tbn_tvm.targets import BACKENDS, backend_class
    from tbn_tvm.targets.cortex_m.boards import BOARDS, TARGET_BOARDS

    families = {family: backend_class(family).target_names for family in BACKENDS}
    implied = {board: target for target, board in TARGET_BOARDS.items()}
    boards = [
        {
            "board": b.name,
            "target": implied.get(b.name, b.cpu),
            "cpu": b.cpu,
            "fpu": b.fpu,
            "flash_bytes": b.flash_bytes,
            "ram_bytes": b.ram_bytes,
            "stack_bytes": b.stack_bytes,
            "qemu_machine": b.qemu_machine,
            "uart": "shipped driver" if b.uart_driver else "your driver (--uart-driver FILE.c)",
            "description": b.description,
        }
        for b in BOARDS.values()
    ]
    if args.json:
        print(json.dumps({"targets": families, "boards": boards}))
        return 0
    rows = [[family, names] for family, names in families.items()]
    print("\n".join(text_table(["family", "--target"], rows, set())))
    print()
    rows = [
        [
            b["board"],
            b["target"],
            b["fpu"],
            _kib(b["flash_bytes"]),
            _kib(b["ram_bytes"]),
            _kib(b["stack_bytes"]),
            b["qemu_machine"] or "none (UART)",
            b["uart"],
        ]
        for b in boards
    ]
    head = ["--board", "target", "FPU", "flash", "RAM", "stack", "QEMU", "UART"]
    print("\n".join(text_table(head, rows, {3, 4, 5})))
    print(
        "compile --board NAME implies its target; --flash-size/--ram-size/--stack-size override the "
        "limits; the stack default is the peak measured on QEMU at build time plus a margin"
    )
    return 0
