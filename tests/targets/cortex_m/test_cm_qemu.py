"""QEMU runs: numerics against numpy, exact instruction counts, and every way a firmware can fail."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m import run_qemu
from tbn_tvm.targets.cortex_m.plugin import insn_plugin

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("board", ["cortex-m4", "cortex-m7"])
def test_outputs_match_numpy(toy, firmware, board: str) -> None:
    x = np.random.default_rng(1).standard_normal((7, 64)).astype(np.float32)
    y, stats = run_qemu(firmware("toy", board), board, x, output_size=10)
    assert y.shape == (7, 10) and y.dtype == np.float32
    np.testing.assert_allclose(y, toy.reference(x), rtol=1e-5, atol=1e-5)
    assert stats["samples"] == 7 and stats["machine"] in ("mps2-an386", "mps2-an500")
    assert 0 < stats["stack_peak_bytes"] < 1024
    assert "instructions" not in stats


def test_instruction_counts_are_exact(firmware) -> None:
    # count_lib's tbn_model_run executes exactly 7 + 5n instructions for in[0] = n (see model.S),
    # including the 2-instruction callee in another file and its own return.
    n = np.array([1, 2, 3, 10, 1000], dtype=np.float32)
    y, stats = run_qemu(firmware("count"), "cortex-m4", n[:, None], count_instructions=True)
    np.testing.assert_array_equal(y[:, 0], n)
    counts = stats["instructions"]
    assert counts["per_inference"] == [7 + 5 * int(k) for k in n]
    assert (counts["min"], counts["max"]) == (12, 5007) and counts["mean"] == pytest.approx(
        np.mean(7 + 5 * n)
    )
    assert counts["total_executed"] > sum(counts["per_inference"])  # startup and I/O are not counted


def test_dense_counts_are_stable_and_plausible(firmware) -> None:
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    _, stats = run_qemu(firmware("toy"), "cortex-m4", x, count_instructions=True)
    counts = stats["instructions"]["per_inference"]
    assert len(set(counts)) == 1  # no data-dependent branch in a dense layer
    assert 640 < counts[0] < 640 * 12  # at least one multiply-add per weight


def test_model_error_status(firmware) -> None:
    x = np.array([[0, 1], [0, 2], [1, 0]], np.float32)  # sample 2 makes tbn_model_run return -7
    with pytest.raises(TBNError, match="tbn_model_run returned -7 on sample 2"):
        run_qemu(firmware("misbehave"), "cortex-m4", x)


def test_hard_fault_is_reported(firmware) -> None:
    with pytest.raises(TBNError) as e:
        run_qemu(firmware("misbehave"), "cortex-m4", np.array([[2, 0]], np.float32))
    assert "crashed: fault HardFault pc=0x" in e.value.message


def test_lockup_is_reported(firmware) -> None:
    with pytest.raises(TBNError, match="locked up .*Lockup"):
        run_qemu(firmware("misbehave"), "cortex-m4", np.array([[4, 0]], np.float32))


@pytest.mark.parametrize("board", ["cortex-m4", "cortex-m7"])
def test_stack_overflow_is_caught_at_once(firmware, board: str) -> None:
    # The MPU guard below RAM stops the unbounded recursion at the first stray write.
    with pytest.raises(TBNError, match="overflowed its 16384-byte stack") as e:
        run_qemu(firmware("misbehave", board), board, np.array([[5, 0]], np.float32), timeout_s=5)
    assert "--stack-size" in e.value.hint and "stack_size" in e.value.hint


def test_stack_overflow_hint_names_the_flag() -> None:
    # The hint names what a user can set: the CLI flag and the API option.
    from tbn_tvm.targets.cortex_m.boards import get_board
    from tbn_tvm.targets.cortex_m.qemu import lockup_error

    board = get_board("cortex-m4")
    dump = f"Lockup: can't escalate 3 to HardFault\nR13={board.ram_origin - 8:08x}\n"
    err = lockup_error(dump, board)
    assert "overflowed" in err.message
    assert "--stack-size" in err.hint and "stack_size" in err.hint and "stack_bytes" not in err.hint


def test_hang_times_out(firmware) -> None:
    t0 = time.monotonic()
    with pytest.raises(TBNError, match=r"did not finish within 1.5 s \(hang or infinite loop\)"):
        run_qemu(firmware("misbehave"), "cortex-m4", np.array([[0, 0], [3, 0]], np.float32), timeout_s=1.5)
    assert time.monotonic() - t0 < 10


def test_wrong_inputs_and_firmware_are_refused(firmware) -> None:
    with pytest.raises(TBNError, match="do not hold 64 values per sample"):
        run_qemu(firmware("toy"), "cortex-m4", np.zeros((2, 63), np.float32))
    with pytest.raises(TBNError, match="produces 10 outputs per sample, not 3"):
        run_qemu(firmware("toy"), "cortex-m4", np.zeros((2, 64), np.float32), output_size=3)
    with pytest.raises(TBNError, match="is a UART firmware"):
        run_qemu(firmware("toy", "cortex-m4", "uart"), "cortex-m4", np.zeros((1, 64), np.float32))
    with pytest.raises(TBNError, match="physical board"):
        run_qemu(firmware("toy"), "nrf52840", np.zeros((1, 64), np.float32))


def test_plugin_is_cached_by_source_hash(tmp_path) -> None:
    first = insn_plugin(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert insn_plugin(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert first.name.startswith("libtbn_insncount-") and os.access(first, os.R_OK)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
