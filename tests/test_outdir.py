"""OUT_DIR safety: nothing the user put anywhere is lost; interrupted runs leave no trace.

Reported: an earlier output holding the user's notes.txt was replaced; a folder of the user's
named `.out.old` beside OUT_DIR was deleted; SIGTERM during a Cortex-M compile left temporary
files and no clean message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reports

from tbn_tvm.errors import TBNError
from tbn_tvm.outdir import foreign_files, write_dir

REPO = Path(__file__).resolve().parents[1]


def _fill(text: str):
    def fill(d: Path) -> dict:
        (d / "lib").mkdir()
        (d / "lib" / "model.c").write_text(text)
        (d / "model.bin").write_bytes(text.encode())
        return {"note": text}

    return fill


def test_replaces_own_output_only(tmp_path):
    out = tmp_path / "out"
    write_dir(out, _fill("one"))
    assert foreign_files(out) == []
    write_dir(out, _fill("two"))  # an earlier tbn-tvm output is replaced
    assert (out / "lib" / "model.c").read_text() == "two"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TBNError, match="notes.txt"):
        write_dir(out, _fill("three"))
    assert (out / "notes.txt").read_text() == "mine" and (out / "lib" / "model.c").read_text() == "two"
    (out / "notes.txt").unlink()
    (out / "lib" / "model.c").write_text("edited by the user")
    with pytest.raises(TBNError, match="model.c"):  # a changed file is the user's now
        write_dir(out, _fill("three"))
    write_dir(out, _fill("four"), force=True)
    assert (out / "lib" / "model.c").read_text() == "four"


def test_never_touches_siblings_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "out"
    user_dir = tmp_path / ".out.old"
    user_dir.mkdir()
    (user_dir / "keep.txt").write_text("user data")
    write_dir(out, _fill("one"))
    write_dir(out, _fill("two"))
    assert (user_dir / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]


def test_failure_keeps_previous_output(tmp_path):
    out = tmp_path / "out"
    write_dir(out, _fill("one"))

    def broken(d: Path):
        (d / "partial").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir(out, broken)
    assert (out / "lib" / "model.c").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda t: t / "file" / "out", "not a directory"),
        (lambda t: t / "file", "not a directory"),
        (lambda t: Path(""), "current"),
    ],
)
def test_unusable_paths(tmp_path, make, words):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TBNError, match=words):
        write_dir(make(tmp_path), _fill("one"))


def _cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "tbn_tvm", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        **kw,
    )


@pytest.mark.qemu
def test_sigterm_during_cortex_m_compile(tmp_path):
    m, _ = reports.tiled_conv((8, 2, 3, 3), 36)
    model = tmp_path / "m.onnx"
    model.write_bytes(m.SerializeToString())
    out = tmp_path / "out"
    first = _cli("compile", model, "--target", "cortex-m4", "-o", out)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    for delay in (1.5, 4.0):
        proc = _cli("compile", model, "--target", "cortex-m4", "-o", out, "--force", env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        err = proc.stderr.read()
        # interrupted (143, one line), or killed before Python set its handler up (-15), or it
        # finished before the signal (0): in every case nothing is left behind
        assert code in (0, 143, -signal.SIGTERM), err
        if code == 143:
            assert err.strip().splitlines() == ["error: terminated"], err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out", "scratch"]
        assert list(scratch.iterdir()) == [], "temporary files left behind"
        if code != 0:
            assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
