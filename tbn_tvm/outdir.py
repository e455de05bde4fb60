"""Writing an output directory safely: all or nothing, never losing what the user put there.

:func:`write_dir` builds the new content in a uniquely named temporary directory beside
``OUT_DIR`` and swaps it in with two renames at the end.  An existing ``OUT_DIR`` is replaced
only when it is empty or holds exactly a previous tbn-tvm output (its ``manifest.json`` lists
every file it wrote, with their SHA-256); anything else is refused unless ``force=True``.  Only
entries the run created itself (named ``.<OUT_DIR>.tbn-<random>``) are ever removed, also when
the run is interrupted (Ctrl-C, SIGTERM: the CLI turns both into exceptions), so the previous
``OUT_DIR`` stays as it was.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> out = write_dir(root / "out", lambda d: (d / "a.txt").write_text("hi") and ["a.txt"])
>>> sorted(p.name for p in out.iterdir())
['a.txt', 'manifest.json']
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tbn_tvm.errors import TBNError

MANIFEST = "manifest.json"


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
    if str(out) in ("", "."):
        raise TBNError("the output directory must be a new or a tbn-tvm directory, not the current one")
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
    prefix = f".{out.name[:40]}.tbn-"
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
