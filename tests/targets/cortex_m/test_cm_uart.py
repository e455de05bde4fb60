"""The UART path end to end: host protocol code against a UART firmware on QEMU's serial port."""

from __future__ import annotations

import numpy as np
import pytest

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m import run_qemu, run_uart_qemu

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("board", ["cortex-m4", "cortex-m7"])
def test_uart_outputs_match_numpy_and_semihosting(toy, firmware, board: str) -> None:
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    y, stats = run_uart_qemu(firmware("toy", board, "uart"), board, x, output_size=10)
    np.testing.assert_allclose(y, toy.reference(x), rtol=1e-5, atol=1e-5)
    y_semihost, _ = run_qemu(firmware("toy", board), board, x)
    np.testing.assert_array_equal(y, y_semihost)  # same code, same bits
    assert stats["samples"] == 4 and stats["port"].startswith("socket://127.0.0.1:")
    assert stats["device"] == {"input_size": 64, "output_size": 10, "arena_bytes": 40}
    assert stats["cycles"] is None  # QEMU does not model the DWT cycle counter


def test_uart_model_error(firmware) -> None:
    with pytest.raises(TBNError, match="tbn_model_run returned -7 on sample 1"):
        run_uart_qemu(firmware("misbehave", mode="uart"), "cortex-m4", np.array([[0, 0], [1, 0]], np.float32))


def test_uart_fault_frame(firmware) -> None:
    with pytest.raises(TBNError) as e:
        run_uart_qemu(firmware("misbehave", mode="uart"), "cortex-m4", np.array([[2, 0]], np.float32))
    assert "the device crashed: fault HardFault pc=0x" in e.value.message


def test_uart_lockup(firmware) -> None:
    with pytest.raises(TBNError, match="overflowed its 16384-byte stack"):
        run_uart_qemu(
            firmware("misbehave", mode="uart"), "cortex-m4", np.array([[5, 0]], np.float32), timeout_s=10
        )


def test_uart_hang_times_out(firmware) -> None:
    with pytest.raises(TBNError, match="no answer from the device within 1.5 s"):
        run_uart_qemu(
            firmware("misbehave", mode="uart"), "cortex-m4", np.array([[3, 0]], np.float32), timeout_s=1.5
        )


def test_semihost_firmware_is_not_a_uart_firmware(firmware) -> None:
    with pytest.raises(TBNError, match="not a UART firmware"):
        run_uart_qemu(firmware("toy"), "cortex-m4", np.zeros((1, 64), np.float32))
