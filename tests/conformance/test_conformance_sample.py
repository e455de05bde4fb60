"""ONNX conformance on deterministic samples of ONNX's own node tests (see docs/conformance.md).

The property asserted: every case either passes or is refused cleanly (a ``TBNError``); none
is ``wrong`` (an output differs in value, shape or dtype), ``internal`` (another exception),
``crash`` or ``hang``.  And every float32 case of an operator version listed in
``tbn_tvm/frontend/supported_ops.json`` passes.  The full suite is ``python -m conformance --full``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from conformance import Suite, run_suite, select_cases
from conformance.cases import collect, is_float32_case, sample, version_targets
from conformance.compare import compare_outputs
from conformance.pool import WorkerPool
from conformance.report import BAD, full_message
from conformance.run import default_jobs

REPO = Path(__file__).resolve().parents[2]
SUPPORTED_OPS = REPO / "tbn_tvm" / "frontend" / "supported_ops.json"

#: Sized to run in under four minutes on the project's 2-core CI machine: this whole file took
#: 2 min 10-20 s there, leaving room for the cases that are refused early today to compile later.
LLVM_SAMPLE = 1000
QEMU_SAMPLE = 10
SEED = 0


def _listing(suite: Suite, records: list[dict]) -> str:
    return "\n".join(
        f"  {r['name']} [{r['op']}]: {r['status']} in {r['phase']}: {full_message(r)[:240]}" for r in records
    )


def _assert_clean(suite: Suite) -> None:
    order = {status: i for i, status in enumerate(("wrong", "crash", "hang", "internal"))}
    bad = sorted(suite.by_status(*BAD), key=lambda r: (order[r["status"]], r["name"]))
    counts = ", ".join(f"{k} {v}" for k, v in suite.totals().items() if v)
    assert not bad, (
        f"{len(bad)} of {len(suite.records)} cases neither pass nor are refused cleanly ({counts}):\n"
        + _listing(suite, bad)
    )


@pytest.fixture(scope="module")
def llvm_suite() -> Suite:
    cases = select_cases(sample_size=LLVM_SAMPLE, seed=SEED)
    return run_suite(
        cases, target="llvm", jobs=default_jobs(), command=f"pytest sample {LLVM_SAMPLE} seed {SEED}"
    )


# ---------------------------------------------------------------------------- the harness itself
def test_comparison_follows_onnx_runner_semantics() -> None:
    f = np.float32
    assert compare_outputs([f([1.0, np.nan, np.inf])], [f([1.0005, np.nan, np.inf])], ["y"], 1e-3, 1e-7) == []
    [values] = compare_outputs([f([1.0, 2.0])], [f([1.0, 2.1])], ["y"], 1e-3, 1e-7)
    assert values.kind == "values" and values.mismatched == 1 and abs(values.max_abs_err - 0.1) < 1e-6
    assert [m.kind for m in compare_outputs([f([1.0])], [np.float64([1.0])], ["y"], 1e-3, 1e-7)] == ["dtype"]
    assert [m.kind for m in compare_outputs([f([1.0])], [f([[1.0]])], ["y"], 1e-3, 1e-7)] == ["shape"]
    assert [m.kind for m in compare_outputs([np.array([True])], [np.array([False])], ["y"], 1e-3, 1e-7)] == [
        "values"
    ]


def test_cases_are_described_and_sampled_deterministically() -> None:
    cases = collect()
    relu = cases["test_relu"]
    assert (relu.op, relu.domain, relu.float32, relu.expanded) == ("Relu", "", True, False)
    assert relu.since_version == relu.opset == 14 and version_targets(relu) == [7, 13]
    assert cases["test_relu_expanded_ver18"].expanded and cases["test_relu_expanded_ver18"].op == "Relu"
    assert is_float32_case(["float32", "int64"], ["float32"]) and not is_float32_case(
        ["float16"], ["float16"]
    )
    assert not is_float32_case(["int64"], ["int64"])
    picked = sample(cases.values(), 50, seed=SEED)
    assert [c.name for c in picked] == [c.name for c in sample(cases.values(), 50, seed=SEED)]
    assert len({c.op for c in picked}) == 50  # one case per operator first


def _fake_worker(conn: Connection, mem_limit: int | None, log_path: str) -> None:
    """Speaks the worker protocol: a case named ``crash*`` segfaults (after writing a TVM-like
    last word to its log), ``hang*`` sleeps, any other passes."""
    conn.send(("ready",))
    while (job := conn.recv()) is not None:
        conn.send(("phase", job["name"], "compile"))
        if job["name"].startswith("crash"):
            with open(log_path, "a") as log:
                log.write("InternalError: Check failed: boom\n")
            os.kill(os.getpid(), signal.SIGSEGV)
        if job["name"].startswith("hang"):
            time.sleep(600)
        conn.send(("result", job["name"], {"status": "pass", "phase": "compare", "message": ""}))


def test_pool_replaces_crashed_and_hung_workers() -> None:
    base = collect()["test_relu"]
    names = ["crash_a", "hang_a", "ok_a", "ok_b", "crash_b", "ok_c"]
    verdicts: dict[str, dict] = {}
    pool = WorkerPool(2, timeout=3, mem_limit=None, target="llvm", worker=_fake_worker)
    pool.run([dataclasses.replace(base, name=n) for n in names], lambda c, v: verdicts.setdefault(c.name, v))
    assert sorted(verdicts) == sorted(names)
    for name in ("crash_a", "crash_b"):
        v = verdicts[name]
        assert v["status"] == "crash" and v["phase"] == "compile", v
        assert "SIGSEGV" in v["message"] and "Check failed: boom" in v["message"], v
    assert verdicts["hang_a"]["status"] == "hang" and verdicts["hang_a"]["phase"] == "compile"
    assert all(verdicts[n]["status"] == "pass" for n in ("ok_a", "ok_b", "ok_c"))


# ---------------------------------------------------------------------------- conformance
@pytest.mark.slow
def test_llvm_sample_passes_or_is_refused_cleanly(llvm_suite: Suite) -> None:
    _assert_clean(llvm_suite)


@pytest.mark.slow
def test_supported_op_table_cases_pass(llvm_suite: Suite) -> None:
    """Every float32 case of an operator version the table lists as ``full`` passes; of a
    ``restricted`` version, passes or is refused cleanly (the table's promise)."""
    if not SUPPORTED_OPS.exists():
        pytest.skip(
            f"{SUPPORTED_OPS.relative_to(REPO)} does not exist (write it with python -m conformance --write-table)"
        )
    table = json.loads(SUPPORTED_OPS.read_text())
    ops = table.get("ops", table)
    listed: dict[str, set[int] | None] = {}
    for op, entry in ops.items() if isinstance(ops, dict) else ((op, None) for op in ops):
        versions = entry.get("full", entry.get("versions")) if isinstance(entry, dict) else entry
        listed[op] = set(versions) if versions is not None else None  # None: every version

    def covered(r: dict) -> bool:
        key = f"{r['domain']}.{r['op']}" if r["domain"] else r["op"]
        if r["expanded"] or not r["float32"] or r["status"] == "not_convertible" or key not in listed:
            return False
        versions = listed[key]
        return versions is None or r["since_version"] in versions

    checked = [r for r in llvm_suite.records if covered(r)]
    failing = [r for r in checked if r["status"] != "pass"]
    assert not failing, (
        f"{len(failing)} of {len(checked)} sampled cases of operators listed in "
        f"{SUPPORTED_OPS.relative_to(REPO)} do not pass:\n" + _listing(llvm_suite, failing)
    )


#: Cases the Cortex-M sample always holds: what a run of every single-input float32 case found
#: wrong or crashing on Cortex-M4 alone (issue 20): the Resize tie that a fused multiply-add
#: moved, and the scatter and unpool kernels the Cortex-M schedules crashed on.
QEMU_NAMED = (
    "test_resize_upsample_sizes_nearest@const",
    "test_scatter_elements_with_axis@const",
    "test_maxunpool_export_without_output_shape@const",
)


def _cortex_m_table() -> tuple[dict, dict]:
    """(Cortex-M table section, host table) of ``supported_ops.json`` ({} where absent)."""
    if not SUPPORTED_OPS.exists():
        return {}, {}
    table = json.loads(SUPPORTED_OPS.read_text())
    return table.get("cortex_m", {}), table.get("ops", {})


@pytest.mark.slow
@pytest.mark.qemu
def test_cortex_m4_sample_passes_or_is_refused_cleanly() -> None:
    """A sample of the single-input float32 cases and the named ones, on QEMU: every case passes
    or is refused cleanly; a case of an operator version the Cortex-M table lists as ``full``
    passes; one of a version it lists as ``host_only`` is refused at compile time, saying so."""
    cases = select_cases(sample_size=QEMU_SAMPLE, seed=SEED, single_float32=True)
    assert len(cases) == QEMU_SAMPLE
    named = [c for c in select_cases(names=QEMU_NAMED, single_float32=True) if c.name in QEMU_NAMED]
    assert sorted(c.name for c in named) == sorted(QEMU_NAMED)
    suite = run_suite([*cases, *named], target="cortex-m4", jobs=default_jobs(), timeout=120)
    _assert_clean(suite)
    for r in suite.records:
        if r["name"] in QEMU_NAMED:
            assert r["status"] == "pass", (r["name"], r["status"], full_message(r))
    section, host = _cortex_m_table()
    if not section:
        return
    for r in suite.records:
        key = f"{r['domain']}.{r['op']}" if r["domain"] else r["op"]
        v = r["since_version"]
        if v in section.get("host_only", {}).get(key, []):
            assert r["status"] == "refused" and "not for Cortex-M" in full_message(r), r["name"]
        elif v in section.get("ops", {}).get(key, {}).get("full", []) and v in host.get(key, {}).get(
            "versions", []
        ):
            assert r["status"] == "pass", (r["name"], r["status"], full_message(r))
