"""A minimal reader for 32-bit little-endian ELF files (ARM objects and firmware images).

Only what the firmware tools need: section headers, the symbol table and reading bytes at an
address.  No dependency beyond the standard library, so a firmware can be inspected (and run
under QEMU) on a machine without binutils.

>>> elf = ElfFile.load("firmware.elf")                        # doctest: +SKIP
>>> hex(elf.symbol("tbn_model_run").address)                  # doctest: +SKIP
'0x1c8'
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from tbn_tvm.errors import TBNError

SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_NOBITS = 8
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00

_SYMBOL_TYPES = {0: "notype", 1: "object", 2: "func", 3: "section", 4: "file", 5: "common", 6: "tls"}
_SYMBOL_BINDS = {0: "local", 1: "global", 2: "weak"}


@dataclass(frozen=True)
class Section:
    """One section header."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int

    @property
    def kind(self) -> str | None:
        """Memory class of an allocated section: text, rodata, data, bss (``None`` if not loaded).

        ``.stack`` (the firmware's reserved stack, a NOBITS section) is its own class ``stack``.
        """
        if not self.flags & SHF_ALLOC or self.size == 0:
            return None
        if self.flags & SHF_EXECINSTR:
            return "text"
        if not self.flags & SHF_WRITE:
            return "rodata"
        if self.type == SHT_NOBITS:
            return "stack" if self.name == ".stack" else "bss"
        return "data"


@dataclass(frozen=True)
class Symbol:
    """One symbol-table entry; ``section`` is the section name or ``None`` (undefined/absolute)."""

    name: str
    value: int
    size: int
    type: str
    bind: str
    section: str | None

    @property
    def address(self) -> int:
        """The symbol's address with the Thumb bit cleared (functions have bit 0 set in ``value``)."""
        return self.value & ~1 if self.type == "func" else self.value


class ElfFile:
    """Sections and symbols of a 32-bit little-endian ELF file."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.name = name
        self._data = data
        if len(data) < 52 or data[:4] != b"\x7fELF":
            raise TBNError(f"{name} is not an ELF file")
        if data[4] != 1 or data[5] != 1:
            raise TBNError(f"{name} is not a 32-bit little-endian ELF file (not built for Cortex-M?)")
        self.type, self.machine = struct.unpack_from("<HH", data, 16)
        shoff = struct.unpack_from("<I", data, 32)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 46)
        raw = [struct.unpack_from("<10I", data, shoff + i * shentsize) for i in range(shnum)]
        names_off = raw[shstrndx][4] if shnum else 0
        self.sections: list[Section] = [
            Section(i, self._cstr(names_off + h[0]), h[1], h[2], h[3], h[4], h[5], h[6])
            for i, h in enumerate(raw)
        ]
        self.symbols: list[Symbol] = self._read_symbols()

    @classmethod
    def load(cls, path: str | Path) -> ElfFile:
        """Read an ELF file from disk."""
        try:
            return cls(Path(path).read_bytes(), str(path))
        except OSError as e:
            raise TBNError(f"cannot read {path}: {e.strerror}") from None

    def _cstr(self, offset: int) -> str:
        end = self._data.index(b"\0", offset)
        return self._data[offset:end].decode("utf-8", "replace")

    def _read_symbols(self) -> list[Symbol]:
        out: list[Symbol] = []
        for sec in self.sections:
            if sec.type != SHT_SYMTAB:
                continue
            strtab = self.sections[sec.link].offset
            for off in range(sec.offset + 16, sec.offset + sec.size, 16):  # entry 0 is the null symbol
                name, value, size, info, _other, shndx = struct.unpack_from("<IIIBBH", self._data, off)
                section = self.sections[shndx].name if SHN_UNDEF < shndx < SHN_LORESERVE else None
                out.append(
                    Symbol(
                        self._cstr(strtab + name),
                        value,
                        size,
                        _SYMBOL_TYPES.get(info & 0xF, str(info & 0xF)),
                        _SYMBOL_BINDS.get(info >> 4, str(info >> 4)),
                        section,
                    )
                )
        return out

    def symbol(self, name: str) -> Symbol:
        """The defined symbol called ``name`` (globals preferred); TBNError if absent."""
        found = [s for s in self.symbols if s.name == name and s.section is not None]
        if not found:
            raise TBNError(f"{self.name} has no symbol '{name}' (not a tbn-tvm firmware?)")
        found.sort(key=lambda s: s.bind != "global")
        return found[0]

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes of initialised content at ``address`` (from a loaded PROGBITS section)."""
        for sec in self.sections:
            if (
                sec.type == SHT_PROGBITS
                and sec.flags & SHF_ALLOC
                and sec.addr <= address < sec.addr + sec.size
            ):
                if address + size > sec.addr + sec.size:
                    break
                start = sec.offset + address - sec.addr
                return self._data[start : start + size]
        raise TBNError(f"{self.name}: no initialised data at 0x{address:08x}")
