"""Build a firmware ELF from a model C library, refusing before linking when it cannot fit the board.

The model library is a directory with ``model.h`` (``TBN_MODEL_INPUT_SIZE``,
``TBN_MODEL_OUTPUT_SIZE``, ``TBN_MODEL_ARENA_BYTES``, ``int tbn_model_run(const float *in, float
*out)``) and its ``.c`` (or ``.S``/``.o``) files.  :func:`build_firmware` compiles it together
with the firmware templates (startup code, linker script, a ``main`` per mode) with
arm-none-eabi-gcc, estimates FLASH/RAM from the compiled objects and refuses with a
:class:`~tbn_tvm.errors.TBNError` naming needed and available bytes, then links and measures the
result.

Modes: ``"semihost"`` runs all samples of a host file under QEMU (see :mod:`.qemu`); ``"uart"``
serves the UART protocol of :mod:`.uart` (QEMU's serial port or a physical board).

The build is deterministic: fixed relative paths inside a temporary directory, mapped away from
debug info with ``-ffile-prefix-map``, sorted inputs, no timestamps, no build id — building the
same library twice gives byte-identical ELFs.  Only newlib-nano's libm and string functions are
linked, and only if the model references them (no stdio, no heap, no syscalls).

>>> report = build_firmware("out/lib", "cortex-m4", "out/firmware.elf")    # doctest: +SKIP
>>> report.flash, report.ram                                               # doctest: +SKIP
(5288, 20924)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from tbn_tvm.errors import TBNError
from tbn_tvm.outdir import scratch_dir
from tbn_tvm.targets.cortex_m.boards import Board, get_board
from tbn_tvm.targets.cortex_m.elf import ElfFile
from tbn_tvm.targets.cortex_m.toolchain import find_gcc

TEMPLATES = Path(__file__).parent / "templates"

#: gcc flags for every object (the board adds -mcpu/-mfpu/-mfloat-abi).
COMMON_CFLAGS: tuple[str, ...] = (
    "-g",
    "-std=gnu11",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-common",
    "-mfp16-format=ieee",  # float16 tensors as _Float16 (see tbn_abi.h)
)
#: gcc flags for the model library's sources: no contraction of ``a * b + c`` into a fused
#: multiply-add (GNU C's default is ``-ffp-contract=fast``).  Each ONNX operator rounds its
#: result; a multiply-add fused across two of them skips one rounding and moves exact ties in
#: what is rounded next (a Floor, a Cast, a nearest-neighbour index: issue 20).
LIB_CFLAGS: tuple[str, ...] = ("-ffp-contract=off",)
#: Extra warnings for the firmware's own sources (not for generated model code).
TEMPLATE_WARNINGS: tuple[str, ...] = ("-Wall", "-Wextra")

_HEADERS = ("tbn_fw.h", "semihost.h", "tbn_uart.h")
_MODE_SOURCES: dict[str, tuple[str, ...]] = {
    "semihost": ("startup.c", "measure.S", "semihost.c", "main_semihost.c"),
    "uart": ("startup.c", "main_uart.c", "tbn_uart_server.c"),
}
_SHIPPED_UART_DRIVERS = {"cmsdk": "uart_cmsdk.c"}
_LIB_SOURCE_SUFFIXES = (".c", ".S", ".s")
_MODES = {1: "semihost", 2: "uart"}
_UNLIMITED = 0x0800_0000  # region size of the sizing link (128 MiB: no overlap from any origin used)


@dataclass(frozen=True)
class SymbolSize:
    """Size of one function or object in the firmware; ``kind`` is text, rodata, data or bss."""

    name: str
    address: int
    size: int
    kind: str

    @property
    def memory(self) -> str:
        """Where it costs: ``flash``, ``ram`` or ``flash+ram`` (initialised data)."""
        return {"text": "flash", "rodata": "flash", "data": "flash+ram", "bss": "ram"}.get(self.kind, "ram")


@dataclass(frozen=True)
class SizeReport:
    """FLASH/RAM use of a firmware by section, its limits and the model library's symbols.

    FLASH = text + rodata + data (initial values), RAM = data + bss + stack.  ``estimated`` is
    true for the pre-link estimate (objects only: before garbage collection of unused sections
    and without libgcc/libm helpers).
    """

    board: str
    text: int
    rodata: int
    data: int
    bss: int
    stack: int
    flash_limit: int
    ram_limit: int
    library_symbols: tuple[SymbolSize, ...] = field(default=())
    estimated: bool = False

    @property
    def flash(self) -> int:
        return self.text + self.rodata + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss + self.stack

    @property
    def fits(self) -> bool:
        return self.flash <= self.flash_limit and self.ram <= self.ram_limit

    def to_dict(self) -> dict:
        """JSON-ready form, for ``manifest.json``."""
        return {
            "board": self.board,
            "flash": {
                "used": self.flash,
                "limit": self.flash_limit,
                "text": self.text,
                "rodata": self.rodata,
                "data": self.data,
            },
            "ram": {
                "used": self.ram,
                "limit": self.ram_limit,
                "data": self.data,
                "bss": self.bss,
                "stack": self.stack,
            },
            "library_symbols": [
                {"name": s.name, "kind": s.kind, "memory": s.memory, "size": s.size, "address": s.address}
                for s in self.library_symbols
            ],
        }


@dataclass(frozen=True)
class FirmwareInfo:
    """What a firmware ELF says about itself (its ``tbn_fw_info`` descriptor)."""

    mode: str
    input_size: int
    output_size: int
    arena_bytes: int


def build_firmware(
    lib_dir: str | Path,
    board: str | Board,
    out_elf: str | Path,
    mode: str = "semihost",
    *,
    uart_hal: str | Path | None = None,
    flash_bytes: int | None = None,
    ram_bytes: int | None = None,
    stack_bytes: int | None = None,
    opt_level: str = "-O2",
    extra_cflags: Sequence[str] = (),
    jobs: int = 2,
    object_cache: dict | None = None,
) -> SizeReport:
    """Compile ``lib_dir`` with the firmware for ``board``, check its size, link ``out_elf``.

    ``mode`` is ``"semihost"`` (QEMU, host files) or ``"uart"`` (UART protocol).  For a board
    without a shipped UART driver, ``uart_hal`` names a C file implementing ``tbn_uart_init``,
    ``tbn_uart_putc`` and ``tbn_uart_getc`` (see ``templates/tbn_uart.h``).  ``flash_bytes``,
    ``ram_bytes`` and ``stack_bytes`` override the board's limits.  ``object_cache`` (a dict the
    caller keeps) reuses the objects of an earlier call that compiled the same source with the
    same flags (a relink with another stack size compiles nothing).  Raises :class:`TBNError`
    when the library is malformed, does not compile, or does not fit.

    >>> build_firmware("lib", "nrf52840", "fw.elf", mode="uart", uart_hal="nrf_uart.c")  # doctest: +SKIP
    """
    board = get_board(board, flash_bytes=flash_bytes, ram_bytes=ram_bytes, stack_bytes=stack_bytes)
    if mode not in _MODE_SOURCES:
        raise TBNError(f"unknown firmware mode '{mode}'", hint="use 'semihost' or 'uart'")
    lib_dir = Path(lib_dir)
    if not (lib_dir / "model.h").is_file():
        raise TBNError(f"{lib_dir} is not a model C library: it has no model.h")
    hal = _uart_hal(board, mode, uart_hal)
    gcc = find_gcc()

    with scratch_dir("tbn-fw-") as tmp_name:
        tmp = Path(tmp_name)
        shutil.copytree(lib_dir, tmp / "lib")
        (tmp / "fw").mkdir()
        for name in (*_HEADERS, *_MODE_SOURCES[mode]):
            shutil.copyfile(TEMPLATES / name, tmp / "fw" / name)
        fw_sources = [f"fw/{name}" for name in _MODE_SOURCES[mode]]
        if hal is not None:
            (tmp / "fw" / "hal").mkdir()
            shutil.copyfile(hal, tmp / "fw" / "hal" / hal.name)
            fw_sources.append(f"fw/hal/{hal.name}")
        lib_files = sorted(p.relative_to(tmp).as_posix() for p in (tmp / "lib").rglob("*") if p.is_file())
        lib_sources = [p for p in lib_files if p.endswith(_LIB_SOURCE_SUFFIXES)]
        lib_objects = [p for p in lib_files if p.endswith(".o")]
        if not lib_sources and not lib_objects:
            raise TBNError(f"{lib_dir} has model.h but no .c, .S or .o file")

        base = [
            gcc,
            *board.cflags,
            opt_level,
            *COMMON_CFLAGS,
            f"-ffile-prefix-map={tmp}=.",
            f"-Wa,--debug-prefix-map={tmp}=.",
            "-Ilib",
            "-Ifw",
        ]
        defines = [f"-DTBN_CPU_HZ={board.cpu_hz}u"]
        if board.uart_base is not None:
            defines.append(f"-DTBN_UART_BASE=0x{board.uart_base:08x}u")
        jobs_list = [(src, [*base, *LIB_CFLAGS, *extra_cflags]) for src in lib_sources]
        jobs_list += [(src, [*base, *TEMPLATE_WARNINGS, *defines]) for src in fw_sources]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            compiled = list(pool.map(lambda job: _compile(tmp, *job, cache=object_cache), jobs_list))
        lib_objs = compiled[: len(lib_sources)] + lib_objects
        objects = lib_objs + compiled[len(lib_sources) :]

        estimate = estimate_objects([tmp / o for o in objects], board)
        if not estimate.fits:
            raise _does_not_fit(estimate)

        (tmp / "fw" / "link.ld").write_text(render_linker_script(board))
        if not _link(gcc, tmp, board, objects):
            # The libraries (libgcc, libm) tipped it over: link once without limits to say by how much.
            unlimited = dataclasses.replace(board, flash_bytes=_UNLIMITED, ram_bytes=_UNLIMITED)
            (tmp / "fw" / "link.ld").write_text(render_linker_script(unlimited))
            _link(gcc, tmp, unlimited, objects)
            raise _does_not_fit(measure_elf(tmp / "firmware.elf", board))
        names = _defined_names([tmp / o for o in lib_objs])
        report = measure_elf(tmp / "firmware.elf", board, library_names=names)
        out_elf = Path(out_elf)
        out_elf.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp / "firmware.elf", out_elf)
    return report


def render_linker_script(board: Board) -> str:
    """The linker script for ``board`` (``templates/link.ld.in`` with its memory map)."""
    return Template((TEMPLATES / "link.ld.in").read_text()).substitute(
        board=board.name,
        flash_origin=f"0x{board.flash_origin:08x}",
        flash_bytes=board.flash_bytes,
        ram_origin=f"0x{board.ram_origin:08x}",
        ram_bytes=board.ram_bytes,
        stack_bytes=board.stack_bytes,
    )


def estimate_objects(objects: Sequence[str | Path], board: Board) -> SizeReport:
    """Pre-link size estimate: the allocated sections of ``objects`` summed by kind, plus the stack."""
    totals = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for obj in objects:
        for sec in ElfFile.load(obj).sections:
            kind = sec.kind
            if kind in totals:
                totals[kind] += sec.size
    return SizeReport(
        board=board.name,
        **totals,
        stack=board.stack_bytes,
        flash_limit=board.flash_bytes,
        ram_limit=board.ram_bytes,
        estimated=True,
    )


def measure_elf(
    elf_path: str | Path, board: str | Board, library_names: set[str] | None = None
) -> SizeReport:
    """Sizes of a linked firmware by section kind; ``library_names`` selects the symbols reported."""
    board = get_board(board)
    elf = ElfFile.load(elf_path)
    totals = {"text": 0, "rodata": 0, "data": 0, "bss": 0, "stack": 0}
    for sec in elf.sections:
        if sec.kind in totals:
            totals[sec.kind] += sec.size
    symbols = symbol_sizes(elf_path)
    if library_names is not None:
        symbols = [s for s in symbols if s.name in library_names]
    return SizeReport(
        board=board.name,
        **totals,
        flash_limit=board.flash_bytes,
        ram_limit=board.ram_bytes,
        library_symbols=tuple(symbols),
    )


def symbol_sizes(elf_path: str | Path) -> list[SymbolSize]:
    """Every sized function and object of an ELF, largest first (ties by name).

    The lead's per-layer attribution sums these by the names of each layer's kernels and weights.
    """
    elf = ElfFile.load(elf_path)
    kinds = {sec.name: sec.kind for sec in elf.sections}
    out = {
        (s.name, s.address): SymbolSize(s.name, s.address, s.size, kinds.get(s.section or "") or "")
        for s in elf.symbols
        if s.type in ("func", "object") and s.size > 0 and s.section is not None and kinds.get(s.section)
    }
    return sorted(out.values(), key=lambda s: (-s.size, s.name, s.address))


def firmware_info(elf_path: str | Path) -> FirmwareInfo:
    """Read the ``tbn_fw_info`` descriptor (mode, model sizes) from a firmware ELF."""
    elf = ElfFile.load(elf_path)
    sym = elf.symbol("tbn_fw_info")
    magic, version, mode, n_in, n_out, arena = struct.unpack("<6I", elf.read(sym.address, 24))
    if magic != 0x464E4254 or version != 1 or mode not in _MODES:
        raise TBNError(f"{elf_path} has an unknown firmware descriptor (built by another tbn-tvm version?)")
    return FirmwareInfo(_MODES[mode], n_in, n_out, arena)


def _uart_hal(board: Board, mode: str, uart_hal: str | Path | None) -> Path | None:
    if mode != "uart":
        return None
    if uart_hal is not None:
        hal = Path(uart_hal)
        hint = "pass a C file implementing tbn_uart_init/tbn_uart_putc/tbn_uart_getc (see docs/cortex-m.md)"
        if not hal.exists():
            raise TBNError(f"UART driver {hal}: no such file", hint=hint)
        if not hal.is_file() or hal.suffix != ".c":
            raise TBNError(f"UART driver {hal} is not a .c file", hint=hint)
        try:
            with open(hal, "rb") as f:
                f.read(1)
        except OSError as e:
            raise TBNError(f"UART driver {hal} cannot be read ({e.strerror or type(e).__name__})") from None
        return hal
    if board.uart_driver in _SHIPPED_UART_DRIVERS:
        return TEMPLATES / _SHIPPED_UART_DRIVERS[board.uart_driver]
    raise TBNError(
        f"tbn-tvm ships no UART driver for {board.name}",
        hint="pass a C file implementing tbn_uart_init/tbn_uart_putc/tbn_uart_getc (see docs/cortex-m.md)",
    )


def _compile(tmp: Path, src: str, cmd: list[str], cache: dict | None = None) -> str:
    obj = f"obj/{src}.o"
    (tmp / obj).parent.mkdir(parents=True, exist_ok=True)
    key = None
    if cache is not None:  # the temp dir is mapped to "." in the object: leave it out of the key
        flags = tuple(c for c in cmd if str(tmp) not in c)
        key = (src, flags, hashlib.sha256((tmp / src).read_bytes()).hexdigest())
        if key in cache:
            (tmp / obj).write_bytes(cache[key])
            return obj
    proc = subprocess.run([*cmd, "-c", src, "-o", obj], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TBNError(f"compiling {src} for Cortex-M failed: {_first_errors(proc.stderr)}")
    if key is not None:
        cache[key] = (tmp / obj).read_bytes()
    return obj


def _does_not_fit(size: SizeReport) -> TBNError:
    about = "about " if size.estimated else ""
    return TBNError(
        f"the firmware does not fit {size.board}: it needs {about}{size.flash} bytes of flash (available "
        f"{size.flash_limit}) and {about}{size.ram} bytes of RAM (available {size.ram_limit}, "
        f"of which {size.stack} stack)",
        hint="use a smaller model or a larger board (--board), or raise the limits with --flash-size/--ram-size "
        "(flash_size=/ram_size= in the Python API)",
    )


def _link(gcc: str, tmp: Path, board: Board, objects: Sequence[str]) -> bool:
    """Link ``firmware.elf``; False if a memory region overflowed, TBNError on other failures."""
    cmd = [
        gcc,
        *board.cflags,
        "-nostartfiles",
        "--specs=nano.specs",
        "-Tfw/link.ld",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
        *objects,
        "-lm",
        "-o",
        "firmware.elf",
    ]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    if proc.returncode == 0:
        return True
    if re.search(r"region `(FLASH|RAM)' overflowed", proc.stderr):
        return False
    missing = sorted(set(re.findall(r"undefined reference to `([^']+)'", proc.stderr)))
    if missing:
        raise TBNError(f"linking the firmware failed: undefined {', '.join(missing)}")
    raise TBNError(f"linking the firmware failed: {_first_errors(proc.stderr)}")


def _first_errors(stderr: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if "error" in ln.lower()] or stderr.strip().splitlines()
    return " | ".join(lines[:n]) or "no diagnostic"


def _defined_names(objects: Sequence[Path]) -> set[str]:
    return {
        s.name
        for obj in objects
        for s in ElfFile.load(obj).symbols
        if s.section is not None and s.type in ("func", "object") and s.name
    }
