"""Writing an output directory safely: all or nothing, never losing what the user put there.

:func:`write_dir` builds the new content in a uniquely named temporary directory beside
``OUT_DIR`` and swaps it in with two renames at the end.  An existing ``OUT_DIR`` is replaced
only when it is empty or holds exactly a previous tbn-tvm output (its ``manifest.json`` lists
every file it wrote, with their SHA-256); anything else is refused unless ``force=True``.  Only
entries the run created itself (named ``.<OUT_DIR>.tbn-<random>``) are ever removed, also when
the run is interrupted (Ctrl-C, SIGTERM: the CLI turns both into exceptions), so the previous
``OUT_DIR`` stays as it was.

:func:`verify_dir` is the other side: before anything of an output is loaded, every file its
manifest lists must be a plain file inside it with the recorded SHA-256 (:func:`check_elf` then
refuses a library whose headers reach past its end, even with a matching hash).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> out = write_dir(root / "out", lambda d: (d / "a.txt").write_text("hi") and ["a.txt"])
>>> sorted(p.name for p in out.iterdir())
['a.txt', 'manifest.json']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tbn_tvm.errors import TBNError

MANIFEST = "manifest.json"
#: manifest keys that name a file of the output (each must be listed in ``files``)
FILE_KEYS = ("artifact", "firmware", "firmware_uart", "cuda_source", "ptx", "cubin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME_MAX = 255


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listing(root: Path) -> list[str]:
    """Every file under ``root`` (relative POSIX paths, sorted); symlinks count as files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root)
        out.extend((rel / f).as_posix() for f in filenames)
        out.extend((rel / d).as_posix() for d in dirnames if (Path(dirpath) / d).is_symlink())
    return sorted(out)


def foreign_files(out: Path) -> list[str]:
    """Files in ``out`` that a previous tbn-tvm run did not write, or that changed since (``[]``
    for an untouched tbn-tvm output whose manifest lists every file, or an empty directory)."""
    present = _listing(out)
    if not present:
        return []
    try:
        listed = json.loads((out / MANIFEST).read_text()).get("files", {})
        if not isinstance(listed, dict):
            listed = {}
    except (OSError, ValueError, AttributeError):
        listed = {}
    if not listed:
        return present
    return [p for p in present if p != MANIFEST and (p not in listed or sha256(out / p) != listed[p])]


def check_target(out: Path, force: bool) -> None:
    """Raise a TBNError when ``out`` cannot be (re)written."""
    try:
        _check_target(out, force)
    except OSError as e:  # a name too long, a path through /proc, ...
        raise TBNError(f"{out}: cannot use it as the output directory ({e.strerror or e})") from None


def _check_target(out: Path, force: bool) -> None:
    if str(out) in ("", ".") or out.name in ("", ".", ".."):
        raise TBNError(
            f"{str(out) or repr('')}: the output directory must be a new or a tbn-tvm directory, "
            "not the current, parent or root one"
        )
    if "\x00" in str(out):
        raise TBNError(f"{out!r}: a path cannot contain a NUL character")
    if any(len(os.fsencode(part)) > _NAME_MAX for part in out.parts):
        raise TBNError(f"{str(out)[:80]}...: a folder name longer than {_NAME_MAX} bytes")
    if out.is_symlink() and not out.exists():
        raise TBNError(f"{out}: is a dangling symbolic link")
    if out.exists() and not out.is_dir():
        raise TBNError(f"{out}: exists and is not a directory")
    parent = out.parent
    for p in (parent, *parent.parents):
        if p.exists() and not p.is_dir():
            raise TBNError(f"{out}: cannot create it, {p} is not a directory")
        if p.exists():
            break
    if out.is_dir() and not force:
        foreign = foreign_files(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise TBNError(
                f"{out}: holds files tbn-tvm did not write ({shown}); they would be lost",
                hint="choose another output directory, or pass --force (force=True) to replace it",
            )


def write_dir(
    out_dir: str | os.PathLike, fill: Callable[[Path], dict | list | None], force: bool = False
) -> Path:
    """Create ``out_dir`` with what ``fill(tmp)`` writes into a temporary directory, plus a
    ``manifest.json`` listing every file with its SHA-256.

    ``fill`` may return a dict to merge into the manifest (its ``files`` key is overwritten).
    Raises :class:`TBNError` for an unusable path or a directory holding foreign files."""
    out = Path(out_dir)
    check_target(out, force)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TBNError(f"{out}: cannot create its parent folder ({e.strerror or e})") from None
    prefix = f".{out.name[:40]}.tbn-"  # short: the name may already be 255 bytes long
    try:
        stage = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as e:
        raise TBNError(f"{out}: cannot write in {parent} ({e.strerror or e})") from None
    new = stage / "new"
    try:
        new.mkdir()
        extra = fill(new)
        manifest = dict(extra) if isinstance(extra, dict) else {}
        if (new / MANIFEST).exists():
            manifest = {**json.loads((new / MANIFEST).read_text()), **manifest}
        manifest["files"] = {p: sha256(new / p) for p in _listing(new) if p != MANIFEST}
        (new / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            old = stage / "old"
            os.rename(out, old)
            try:
                os.rename(new, out)
            except BaseException:
                os.rename(old, out)  # put the previous output back
                raise
        else:
            os.rename(new, out)
    except OSError as e:
        raise TBNError(f"{out}: writing the output failed ({e.strerror or e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def verify_dir(out: Path, manifest: dict) -> None:
    """Refuse an output directory whose files are not what its manifest recorded.

    Every entry of ``files`` must be a relative path inside ``out`` (no ``..``, no absolute
    path, no symbolic link on the way) to a regular file with the recorded SHA-256; every file the
    manifest names elsewhere (``artifact``, ``firmware`` ...) must be one of them.  Run before
    anything in ``out`` is loaded, so a damaged or swapped library is never mapped."""
    files = manifest.get("files")
    where = out / MANIFEST
    hint = "compile the model again"
    if not isinstance(files, dict) or not files:
        raise TBNError(f"{where}: the manifest lists no files with their SHA-256", hint=hint)
    root = out.resolve()
    for rel, digest in files.items():
        if not isinstance(rel, str) or not isinstance(digest, str) or not _SHA256.match(digest):
            raise TBNError(f"{where}: damaged manifest (entry {str(rel)[:60]!r} of 'files')", hint=hint)
        parts = rel.split("/")
        if not rel or rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
            raise TBNError(f"{where}: names a file outside the output directory ({rel[:80]!r})", hint=hint)
        path = out.joinpath(*parts)
        try:
            st = os.lstat(path)
            linked = any(os.path.islink(out.joinpath(*parts[:i])) for i in range(1, len(parts)))
        except OSError:
            raise TBNError(f"{out}: {rel} is missing", hint=hint) from None
        if linked or not stat.S_ISREG(st.st_mode) or not path.resolve().is_relative_to(root):
            raise TBNError(f"{out}: {rel} is not a plain file of the output directory", hint=hint)
        if sha256(path) != digest:
            raise TBNError(
                f"{out}: {rel} changed since it was built (SHA-256 differs from the manifest)", hint=hint
            )
    if "artifact" not in manifest:
        raise TBNError(f"{where}: the manifest names no artifact", hint=hint)
    for key in FILE_KEYS:
        if key in manifest and manifest[key] not in files:
            raise TBNError(
                f"{where}: '{key}' names {str(manifest[key])[:80]!r}, not a file the manifest lists",
                hint=hint,
            )


def check_elf(path: Path) -> None:
    """Refuse a shared library or ELF file whose segments or sections reach past its end (a
    truncated ``model.so`` is mapped, then kills the process with SIGBUS when touched)."""
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
                raise TBNError(f"{path}: not an ELF file", hint="compile the model again")
            end = "<" if ident[5] == 1 else ">"
            if ident[4] == 2:
                phoff, shoff = struct.unpack_from(end + "QQ", ident, 32)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", ident, 54)
                ph_fmt, off_i, filesz_i = end + "IIQQQQQQ", 2, 5
            else:
                phoff, shoff = struct.unpack_from(end + "II", ident, 28)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", ident, 42)
                ph_fmt, off_i, filesz_i = end + "IIIIIIII", 1, 4
            short = phoff + phnum * phentsize > size or (shnum and shoff + shnum * shentsize > size)
            if not short and phnum:
                f.seek(phoff)
                table = f.read(phnum * phentsize)
                for i in range(phnum):
                    entry = struct.unpack_from(ph_fmt, table, i * phentsize)
                    if entry[0] == 1 and entry[off_i] + entry[filesz_i] > size:  # PT_LOAD
                        short = True
    except OSError as e:
        raise TBNError(f"{path}: cannot read it ({e.strerror or e})") from None
    except struct.error:
        short = True
    if short:
        raise TBNError(
            f"{path}: truncated (its ELF headers describe more than the file holds)",
            hint="compile the model again",
        )


def normalize_tar(path: Path) -> None:
    """Rewrite a tar archive so that the same members give the same bytes: members sorted by
    name, modification times 0, owner root, no user or group names."""
    import io
    import tarfile

    with tarfile.open(path) as src:
        members = sorted((m for m in src.getmembers() if m.isfile()), key=lambda m: m.name)
        data = [(m, src.extractfile(m).read()) for m in members]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for m, content in data:
            info = tarfile.TarInfo(m.name)
            info.size, info.mode = len(content), 0o644
            dst.addfile(info, io.BytesIO(content))
    path.write_bytes(buf.getvalue())


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A temporary folder (like ``tempfile.TemporaryDirectory``) whose creation and removal a
    Ctrl-C or SIGTERM cannot split: the signal is held while the folder is made and registered,
    and while it is removed, then delivered — so an interrupted run leaves no ``tbn-*`` folder
    behind.  Yields the folder's path."""
    with _signals_held():
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
    try:
        yield tmp.name
    finally:
        with _signals_held():
            tmp.cleanup()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
