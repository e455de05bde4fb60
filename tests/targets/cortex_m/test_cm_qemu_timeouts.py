"""QEMU run limits per sample (issue 14): a long run of quick samples is not a hang.

``timeout_per_sample`` bounds each sample (from the end of the previous one), so a run of
hundreds of samples may take many times the limit; a sample that hangs is named with the option
to raise.  The count_lib fixture executes ``7 + 5n`` instructions for input ``n``, which gives
samples of a known, controlled length.
"""

from __future__ import annotations

import numpy as np
import pytest

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m import run_qemu

pytestmark = pytest.mark.qemu

#: Loop count of each count_lib sample: about 5 M instructions, ~10 ms on QEMU.
N_LOOP = 1_000_000


def test_many_quick_samples_outlast_the_per_sample_limit(firmware):
    """300 samples of ~10 ms each: the run takes longer than the 1 s limit, and passes."""
    x = np.full((300, 1), N_LOOP, np.float32)
    y, stats = run_qemu(firmware("count"), "cortex-m4", x, count_instructions=True, timeout_per_sample=1.0)
    np.testing.assert_array_equal(y[:, 0], x[:, 0])
    assert stats["instructions"]["per_inference"] == [7 + 5 * N_LOOP] * 300
    # the point of the test: the run lasted longer than the limit (else use a larger N_LOOP)
    assert stats["wall_s"] > 1.0, stats["wall_s"]


def test_a_hanging_sample_is_named_with_the_option_to_raise(firmware):
    x = np.array([[0, 0], [0, 0], [3, 0]], np.float32)  # misbehave_lib: 3 = hang
    with pytest.raises(TBNError) as e:
        run_qemu(firmware("misbehave"), "cortex-m4", x, timeout_per_sample=1.0)
    assert "sample 2 (of 3) did not finish within 1 s" in e.value.message
    assert "--timeout-per-sample" in str(e.value)


def test_the_whole_run_limit_still_holds(firmware):
    x = np.full((400, 1), N_LOOP, np.float32)  # ~4 s of quick samples
    with pytest.raises(TBNError) as e:
        run_qemu(firmware("count"), "cortex-m4", x, timeout_s=1.0, timeout_per_sample=30)
    assert "did not finish within 1 s" in e.value.message and "of 400 samples done" in e.value.message
    assert "--timeout" in str(e.value)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "5"])
def test_limits_are_positive_seconds(firmware, bad):
    with pytest.raises(TBNError, match="timeout_per_sample must be a positive number of seconds"):
        run_qemu(firmware("count"), "cortex-m4", np.ones((1, 1), np.float32), timeout_per_sample=bad)
