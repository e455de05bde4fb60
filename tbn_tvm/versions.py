"""Versions of tbn-tvm, the Python packages it builds with, and the external tools it runs.

Read without importing the packages (``importlib.metadata``: ``tbn-tvm --version`` stays fast)
and without network.  The manifest records :func:`package_versions` (and a Cortex-M build the
Arm compiler's :func:`tool_version`), so an artifact says what built it; the values depend
only on what is installed, so rebuilding on the same machine gives the same manifest.

>>> sorted(package_versions())
['numpy', 'onnx', 'tbn_tvm', 'tvm']
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata

from tbn_tvm import __version__

#: Distribution names of the packages recorded, by the key used in the manifest.
PACKAGES = {"tvm": "apache-tvm", "onnx": "onnx", "numpy": "numpy"}


def package_versions() -> dict[str, str]:
    """``{"tbn_tvm": ..., "tvm": ..., "onnx": ..., "numpy": ...}`` ("not installed" if absent)."""
    out = {"tbn_tvm": __version__}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


@lru_cache(maxsize=8)
def tool_version(path: str) -> str | None:
    """The first line of ``path --version`` (e.g. ``arm-none-eabi-gcc (15:12.2.rel1-1) 12.2.1
    20221205``), or None when the tool does not run."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


def toolchain_versions() -> dict[str, str]:
    """Versions of the Cortex-M tools found (``arm_gcc``, ``qemu``): "not found" when absent."""
    from tbn_tvm.errors import TBNError
    from tbn_tvm.targets.cortex_m.toolchain import find_gcc, find_qemu

    out = {}
    for key, find in (("arm_gcc", find_gcc), ("qemu", find_qemu)):
        try:
            out[key] = tool_version(find()) or "does not run"
        except TBNError:
            out[key] = "not found"
    return out
