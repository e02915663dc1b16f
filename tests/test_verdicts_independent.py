"""loadgen's verdicts against a server it did not write, whose capacity is exact (issue 11).

The server is ``tests/fifo_server.py`` (N slots, a FIFO queue, fixed TTFT and
inter-token time: capacity = N / (TTFT + (tokens − 1) × ITL)); the cases and
the criteria are those of ``scripts/validate_verdicts.py`` (see its
docstring and docs/verdicts.md). Each test runs loadgen end to end (one worker, a private
Ray on 127.0.0.1), analyses the run, and asserts the criteria, not the
figures of any one version of the analysis. Together they take about four
minutes on a 2-core machine.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

pytestmark = pytest.mark.slow

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "validate_verdicts.py"


def _validator():
    """Input: none. Output: scripts/validate_verdicts.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("validate_verdicts", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("validate_verdicts", module)
    spec.loader.exec_module(module)
    return module


vv = _validator()


@pytest.fixture(scope="module", autouse=True)
def _one_ray():
    """One private local Ray for the three runs (each would otherwise start its own: 15–30 s apiece)."""
    with vv.shared_ray():
        yield


def _check(name: str, tmp_path: Path) -> None:
    """Run one case of the validation script and fail with its table row and levels if a criterion is missed."""
    outcome = vv.run_case(vv.CASES[name], tmp_path)
    print("\n" + vv.HEADER + "\n" + vv.row(outcome))  # shown with -s: the figures for docs/verdicts.md
    assert outcome.passed, outcome.report()


def test_short_requests_sweep_brackets_the_true_capacity(tmp_path):
    """4 slots, 0.36 s requests, levels at 0.33–1.5 × capacity: saturation and goodput within ±15 %."""
    _check("fifo-short-sweep", tmp_path)


def test_long_requests_below_capacity_are_not_called_saturated(tmp_path):
    """32 slots, 6 s requests, levels at 1/3, 2/3 and 1.5 × capacity: only the last one is saturated."""
    _check("fifo-long-sweep", tmp_path)


def test_search_goodput_capacity_is_near_the_truth_and_was_served(tmp_path):
    """load=search on 4 slots, 0.36 s requests: saturation and goodput capacity within ±15 %, goodput ≤ best served."""
    _check("fifo-search", tmp_path)
