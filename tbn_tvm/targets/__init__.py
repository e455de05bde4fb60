"""Targets: what a ``--target`` string means and which back end builds it.

>>> resolve_target("llvm").family
'host'
>>> resolve_target("aarch64-linux-gnu").tvm_target["mtriple"]
'aarch64-linux-gnu'
>>> resolve_target("cortex-m7").family
'cortex-m'
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field

from tbn_tvm.errors import TBNError

_TRIPLE = re.compile(r"^(?P<arch>[a-z0-9_]+)-(?P<rest>[a-z0-9_.]+(?:-[a-z0-9_.]+){0,2})$")
_HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_CORTEX_M = {"cortex-m4": "cortex-m4", "cortex-m7": "cortex-m7", "m4": "cortex-m4", "m7": "cortex-m7"}
_KNOWN = "llvm, an LLVM triple (x86_64-linux-gnu, aarch64-linux-gnu), cortex-m4, cortex-m7, thumbv7em-none-eabihf --mcpu cortex-m4|cortex-m7"


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: its family (host / cortex-m), a name for people and the manifest,
    and the dict TVM's ``Target`` takes."""

    family: str
    name: str
    tvm_target: dict = field(default_factory=dict)
    cpu: str | None = None

    @property
    def runs_here(self) -> bool:
        """Whether a host build can be loaded and run on this machine."""
        if self.family != "host":
            return False
        triple = self.tvm_target.get("mtriple")
        if triple is None:
            return True
        arch = triple.split("-", 1)[0]
        return (
            _HOST_ARCH.get(platform.machine().lower()) == arch
            and "linux" in triple
            and platform.system() == "Linux"
        )

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "name": self.name,
            "tvm_target": dict(self.tvm_target),
            "cpu": self.cpu,
        }

    def tvm(self):
        import tvm

        return tvm.target.Target(dict(self.tvm_target))

    def with_native_cpu(self) -> TargetSpec:
        """For the plain host target: pin LLVM's name of this machine's CPU (so its vector
        units, e.g. AVX-512, are used).  Other targets are returned unchanged."""
        if self.family != "host" or self.name != "llvm" or "mcpu" in self.tvm_target:
            return self
        return TargetSpec(self.family, self.name, {**self.tvm_target, **_native_cpu()}, self.cpu)


def resolve_target(target: str | dict | TargetSpec, mcpu: str | None = None) -> TargetSpec:
    """Turn what the user typed into a :class:`TargetSpec`, or raise a one-line TBNError."""
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, dict):
        kind = target.get("kind")
        if kind == "llvm" and "thumb" not in str(target.get("mtriple", "")):
            return TargetSpec("host", target.get("mtriple", "llvm"), dict(target))
        raise TBNError(f"unsupported target dict {target!r}", hint=f"use one of: {_KNOWN}")
    t = str(target).strip()
    low = t.lower()
    if mcpu is not None and low not in ("thumbv7em-none-eabihf", "thumbv7em-none-eabi"):
        if _CORTEX_M.get(mcpu.lower()) and low in _CORTEX_M:
            pass
        else:
            raise TBNError(f"--mcpu is only used with a thumbv7em triple, not with target '{t}'")
    if low in ("llvm", "host", "cpu"):
        return TargetSpec("host", "llvm", {"kind": "llvm"})
    if low in ("llvm-generic", "x86_64"):
        return TargetSpec("host", "llvm-generic", {"kind": "llvm"})
    if low in _CORTEX_M:
        cpu = _CORTEX_M[low]
        return _cortex_m(cpu)
    if low in ("thumbv7em-none-eabihf", "thumbv7em-none-eabi"):
        if mcpu is None:
            raise TBNError(f"target {t} needs --mcpu cortex-m4 or --mcpu cortex-m7")
        cpu = _CORTEX_M.get(mcpu.lower())
        if cpu is None:
            raise TBNError(f"unknown --mcpu '{mcpu}'", hint="use cortex-m4 or cortex-m7")
        return _cortex_m(cpu)
    if low == "cuda" or low.startswith("nvidia/"):
        raise TBNError(
            f"target '{t}': the CUDA back end is not part of this release", hint=f"use one of: {_KNOWN}"
        )
    m = _TRIPLE.match(low)
    if (
        m
        and m.group("arch") in ("x86_64", "aarch64", "armv7", "armv7a", "riscv64", "i686")
        and "none" not in low
    ):
        return TargetSpec("host", low, {"kind": "llvm", "mtriple": low})
    raise TBNError(f"unknown target '{t}'", hint=f"use one of: {_KNOWN}")


def _native_cpu() -> dict:
    """The host CPU's name for LLVM (so vector units such as AVX-512 are used), if known."""
    try:
        from tvm.target import codegen

        cpu = str(codegen.llvm_get_system_cpu())
        return {"mcpu": cpu} if cpu and cpu != "generic" else {}
    except Exception:  # an LLVM without host detection: generic code
        return {}


def _cortex_m(cpu: str) -> TargetSpec:
    return TargetSpec(
        "cortex-m",
        cpu,
        {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": cpu, "mfloat-abi": "hard"},
        cpu=cpu,
    )
