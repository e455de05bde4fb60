"""Print the robustness corpus's counts in pytest's summary (also without ``-s``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def pytest_terminal_summary(terminalreporter) -> None:
    import harness

    if harness.LAST_REPORT:
        terminalreporter.section("robustness corpus")
        terminalreporter.write_line(harness.LAST_REPORT)
