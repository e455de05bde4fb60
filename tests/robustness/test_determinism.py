"""Deterministic builds (issue 15): the same model and options give byte-identical outputs
(library or object archive, C sources, firmware, manifest) on every kind of target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from cases import BASE_MLP  # noqa: E402

from tbn_tvm.cli import main  # noqa: E402


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "target",
    [
        "llvm",
        "aarch64-linux-gnu",  # cross-compiled object archive: tar headers must not carry times
        pytest.param("cortex-m4", marks=pytest.mark.qemu),
        pytest.param("cortex-m7", marks=pytest.mark.qemu),
    ],
)
def test_two_builds_are_byte_identical(tmp_path, target):
    model = tmp_path / "mlp.onnx"
    model.write_bytes(BASE_MLP)
    extra = ["--no-measure"] if target.startswith("cortex") else []
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        assert main(["compile", str(model), "-o", str(out), "--target", target, *extra]) == 0
        outs.append(_files(out))
    assert sorted(outs[0]) == sorted(outs[1])
    differ = [name for name in outs[0] if outs[0][name] != outs[1][name]]
    assert differ == [], f"{target}: {differ} differ between two builds"
    if target.startswith("cortex"):
        assert any(name.endswith(".c") for name in outs[0]) and "firmware.elf" in outs[0]
