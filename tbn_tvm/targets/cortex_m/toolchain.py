"""Find (or install) the Cortex-M tools: arm-none-eabi-gcc with newlib, QEMU, a host C compiler.

Each tool can be pointed at explicitly with an environment variable (``TBN_TVM_ARM_GCC``,
``TBN_TVM_QEMU``, ``TBN_TVM_HOST_CC``); otherwise it is looked up on ``PATH``.  A missing tool
raises :class:`~tbn_tvm.errors.TBNError` whose hint is the apt-get command that installs it.

>>> tc = ensure_toolchain()            # doctest: +SKIP
>>> tc.gcc, tc.qemu                    # doctest: +SKIP
('/usr/bin/arm-none-eabi-gcc', '/usr/bin/qemu-system-arm')
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from tbn_tvm.errors import TBNError

#: Debian/Ubuntu packages of the Cortex-M toolchain (gcc 12 + newlib 3.3 + QEMU 7.2 on Debian 12).
APT_PACKAGES: tuple[str, ...] = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm")
APT_COMMAND = "apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)


@dataclass(frozen=True)
class Toolchain:
    """Paths of the tools; ``qemu`` is ``None`` when only building was asked for."""

    gcc: str
    qemu: str | None


def _which(env: str, *names: str) -> str | None:
    explicit = os.environ.get(env)
    if explicit:
        return shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _missing(what: str) -> TBNError:
    return TBNError(f"{what} not found", hint=f"install it with: {APT_COMMAND}")


@lru_cache(maxsize=8)
def _has_newlib(gcc: str) -> bool:
    # With newlib present gcc resolves the library to a full path, otherwise it echoes the name back.
    out = subprocess.run(
        [gcc, "-mthumb", "-mcpu=cortex-m4", "-print-file-name=libc_nano.a"], capture_output=True, text=True
    ).stdout.strip()
    return os.path.isabs(out) and os.path.exists(out)


def find_gcc() -> str:
    """Path of arm-none-eabi-gcc, checked to come with newlib-nano (used for libm/memcpy only)."""
    gcc = _which("TBN_TVM_ARM_GCC", "arm-none-eabi-gcc")
    if gcc is None:
        raise _missing("arm-none-eabi-gcc (the Cortex-M cross compiler)")
    if not _has_newlib(gcc):
        raise TBNError(f"{gcc} has no newlib (libc_nano.a not found)", hint=f"install it with: {APT_COMMAND}")
    return gcc


def find_qemu() -> str:
    """Path of qemu-system-arm."""
    qemu = _which("TBN_TVM_QEMU", "qemu-system-arm")
    if qemu is None:
        raise _missing("qemu-system-arm")
    return qemu


def find_host_cc() -> str:
    """Path of the host C compiler that builds the QEMU instruction-count plugin."""
    cc = _which("TBN_TVM_HOST_CC", "cc", "gcc", "clang")
    if cc is None:
        raise TBNError(
            "no host C compiler (cc/gcc/clang) to build the QEMU instruction-count plugin",
            hint="install it with: apt-get install -y --no-install-recommends gcc",
        )
    return cc


def ensure_toolchain(install: bool = False, *, need_qemu: bool = True) -> Toolchain:
    """Return the toolchain, installing the Debian packages first when asked and possible.

    With ``install=True`` and missing tools, runs ``apt-get update`` and ``apt-get install`` of
    :data:`APT_PACKAGES` — only as root on a system with apt-get; otherwise raises
    :class:`TBNError` with the command to run.
    """
    try:
        return Toolchain(gcc=find_gcc(), qemu=find_qemu() if need_qemu else None)
    except TBNError:
        if not install:
            raise
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise TBNError(
            "the Cortex-M toolchain is missing and cannot be installed here (needs root and apt-get)",
            hint=f"run as root: {APT_COMMAND}",
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([apt, "update"], [apt, *APT_COMMAND.split()[1:]]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
            raise TBNError(f"'{' '.join(cmd)}' failed: {tail}", hint=f"run it by hand: {APT_COMMAND}")
    _has_newlib.cache_clear()
    return Toolchain(gcc=find_gcc(), qemu=find_qemu() if need_qemu else None)
