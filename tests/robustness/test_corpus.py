"""The robustness corpus (issue 15): every case ends in a clean ``error:`` line (exit 2) or a build
whose outputs match onnxruntime; no traceback, hang, wrong output, data loss or write outside
OUT_DIR.  The counts are printed (``pytest -s``) and written to ``robustness-report.txt`` in the
test's temporary folder.

Also: hypothesis-driven mutations of valid models through the same fork server and checks
(shrunk to the smallest failing mutation when one fails).
"""

from __future__ import annotations

import os
import random
import re
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from cases import BASE, BASE_MLP, corpus, mutate  # noqa: E402

MIN_CASES = 300
CI_SECONDS = 300


def _cortex_m_missing() -> str | None:
    from tbn_tvm.errors import TBNError
    from tbn_tvm.targets.cortex_m.toolchain import find_gcc, find_qemu

    try:
        find_gcc()
        find_qemu()
    except TBNError as e:
        return e.message
    return None


@pytest.fixture(scope="module")
def zygote():
    z = harness.Zygote()
    yield z
    z.close()


def test_corpus(tmp_path_factory):
    cases = corpus()
    only = os.environ.get("ROBUSTNESS_ONLY")  # a regular expression on case names, while debugging
    if only:
        cases = [c for c in cases if re.search(only, c.name)]
    missing = _cortex_m_missing()
    if missing:  # Cortex-M cases need the Arm gcc; the host cases still run
        cases = [c for c in cases if "cortex" not in c.target and "cortex" not in str(c.steps)]
    root = tmp_path_factory.mktemp("robustness")
    t0 = time.monotonic()
    results = harness.run_all(cases, root, workers=2)
    wall = time.monotonic() - t0
    text = harness.report(results, wall)
    (root / "robustness-report.txt").write_text(text + "\n")
    print("\n" + text)
    counts = harness.counts(results)
    bad = {
        k: counts[k] for k in ("tracebacks", "hangs", "wrong outputs", "data loss", "writes outside OUT_DIR")
    }
    if not only:
        assert counts["cases"] >= (MIN_CASES if not missing else MIN_CASES - 20), counts
    assert all(v == 0 for v in bad.values()), text
    assert counts["clean errors"] + counts["right builds"] + counts["interrupted cleanly"] == counts["cases"]


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    st = None

if st is not None:
    _counter = iter(range(10**6))

    @settings(
        max_examples=25,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        base=st.sampled_from(["gemm", "mlp"]), rng=st.randoms(use_true_random=False), times=st.integers(1, 3)
    )
    def test_mutations(zygote, tmp_path_factory, base, rng: random.Random, times):
        """Flip bytes, drop nodes, swap inputs, change attributes, dims and weights of a valid
        model (up to three times): a clean error or a build equal to onnxruntime, every time."""
        src = BASE if base == "gemm" else BASE_MLP
        for _ in range(times):
            try:
                src = mutate(src, rng)
            except Exception:  # noqa: BLE001 - a byte flip may leave no parsable model to mutate further
                break
        case = harness.Case(f"hyp-{next(_counter)}", "mutations", model=src)
        r = harness.run_case(zygote, case, tmp_path_factory.getbasetemp() / "hypothesis")
        assert r.outcome in harness.GOOD, f"{r.outcome}: {r.detail}"
