"""Build (once, cached) the QEMU TCG plugin that counts the instructions of each inference.

The plugin's sources ship in ``plugin/`` (with a hand-written minimal plugin-API header, since
Debian ships no ``qemu-plugin.h``).  It is compiled with the host C compiler into the user cache
(``$TBN_TVM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tbn-tvm``, else ``~/.cache/tbn-tvm``) under a
name carrying the hash of its sources and compiler, so an edited source is rebuilt and
concurrent builds never see a half-written file.

>>> insn_plugin()                              # doctest: +SKIP
PosixPath('/home/me/.cache/tbn-tvm/qemu-plugins/libtbn_insncount-3f2a9c0d1e7b5a44.so')
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m.toolchain import find_host_cc

PLUGIN_DIR = Path(__file__).parent / "plugin"
_SOURCES = ("insncount.c", "cycles.h", "tbn_qemu_plugin.h")
_CFLAGS = ("-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall")


def cache_dir() -> Path:
    """Where tbn-tvm keeps built helpers."""
    explicit = os.environ.get("TBN_TVM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tbn-tvm"


def insn_plugin(directory: str | Path | None = None) -> Path:
    """Path of the built instruction-count plugin, compiling it if its sources changed."""
    cc = find_host_cc()
    digest = hashlib.sha256(cc.encode())
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (PLUGIN_DIR / name).read_bytes())
    out_dir = Path(directory) if directory is not None else cache_dir() / "qemu-plugins"
    target = out_dir / f"libtbn_insncount-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out_dir)
        os.close(fd)
    except OSError as e:
        raise TBNError(
            f"cannot write the QEMU plugin into {out_dir}: {e.strerror}", hint="set TBN_TVM_CACHE_DIR"
        ) from None
    try:
        proc = subprocess.run(
            [cc, *_CFLAGS, f"-I{PLUGIN_DIR}", "-o", tmp_name, str(PLUGIN_DIR / "insncount.c")],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise TBNError(f"building the QEMU instruction-count plugin failed: {proc.stderr.strip()[:300]}")
        os.replace(tmp_name, target)  # atomic: a concurrent build of the same hash writes the same bytes
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target
