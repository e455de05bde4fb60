"""Toolchain discovery: a missing tool is a one-line error carrying the apt-get command."""

from __future__ import annotations

import pytest

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m import toolchain


def test_missing_cross_compiler_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBN_TVM_ARM_GCC", "/nonexistent/arm-none-eabi-gcc")
    with pytest.raises(TBNError) as e:
        toolchain.find_gcc()
    assert "arm-none-eabi-gcc" in e.value.message
    assert e.value.hint == f"install it with: {toolchain.APT_COMMAND}"
    assert "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm" in toolchain.APT_COMMAND


def test_missing_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBN_TVM_QEMU", "/nonexistent/qemu-system-arm")
    with pytest.raises(TBNError, match="qemu-system-arm not found"):
        toolchain.find_qemu()


def test_no_install_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBN_TVM_ARM_GCC", "/nonexistent/arm-none-eabi-gcc")
    monkeypatch.setattr(toolchain.os, "geteuid", lambda: 1000)
    with pytest.raises(TBNError) as e:
        toolchain.ensure_toolchain(install=True)
    assert "root" in e.value.message and toolchain.APT_COMMAND in e.value.hint
    with pytest.raises(TBNError, match="not found"):
        toolchain.ensure_toolchain(install=False)
