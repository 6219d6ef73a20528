"""The command line under fuzzing (issue 13): generated command lines, recipes (aliases, huge
values, wrong types), data files (``.npz`` archives and image folders, valid and damaged; 16-bit
and huge images, wide tables, huge text cells, sparse token ids) and damaged runs, checkpoints,
teacher stores and caches, each in a fresh directory beside the user's own files. A case passes
when kdistill exits 0 or 2 (2 with one line on stderr), prints no traceback, and leaves every
file that was there before byte-identical (kdistill's own run, store and cache excepted, and only
under a command that rewrites them). Every child runs under an address-space cap.

The default suite runs a short, fixed sample; ``-m slow`` runs 2,000 cases (and a sample through
the real console script) and prints the tally.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).with_name("helpers")))

from fuzz_cases import Case, cases, command_lines  # noqa: E402
from fuzz_runner import Worker, build_template, console_script, run_case  # noqa: E402

SHORT, FULL = 300, 2000
SHORT_SCRIPT, FULL_SCRIPT = 3, 40
FUZZ = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


class Tally:
    """What the cases did, for the closing note: counts per family and exit status."""

    def __init__(self):
        self.counts, self.failures, self.started = Counter(), [], time.perf_counter()

    def record(self, case: Case, outcome, problem: str | None) -> None:
        self.counts[(case.family, outcome.code)] += 1
        if problem:
            self.failures.append(f"{case!r}\n    {problem}")

    def report(self, title: str) -> str:
        total = sum(self.counts.values())
        rows = ", ".join(
            f"{family}/exit {code}: {n}" for (family, code), n in sorted(self.counts.items())
        )
        return (
            f"{title}: {total} cases in {time.perf_counter() - self.started:.0f} s, "
            f"{len(self.failures)} failed ({rows})"
        )


@pytest.fixture(scope="module")
def worker():
    process = Worker()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def template(worker, tmp_path_factory):
    return build_template(tmp_path_factory.mktemp("fuzz") / "template", worker.run)


def fuzz(count: int, runner, tally: Tally, template: Path, *, derandomize: bool, strategy=cases):
    @settings(max_examples=count, derandomize=derandomize, **FUZZ)
    @given(case=strategy)
    def one(case):
        outcome, problem = run_case(case, template, runner)
        tally.record(case, outcome, problem)

    one()


def check(tally: Tally, title: str, expected: int) -> None:
    print(tally.report(title))
    assert not tally.failures, f"{len(tally.failures)} failing case(s):\n" + "\n".join(
        tally.failures[:10]
    )
    assert sum(tally.counts.values()) >= expected


@pytest.mark.integration
def test_fuzzed_cases_exit_0_or_2_without_traceback_or_lost_files(worker, template):
    tally = Tally()
    fuzz(SHORT, worker.run, tally, template, derandomize=True)
    check(tally, "fuzz (worker, short)", SHORT)


@pytest.mark.integration
def test_fuzzed_command_lines_through_the_console_script(template):
    tally = Tally()
    fuzz(SHORT_SCRIPT, console_script, tally, template, derandomize=True, strategy=command_lines())
    check(tally, "fuzz (console script, short)", SHORT_SCRIPT)


@pytest.mark.integration
def test_the_harness_catches_a_traceback_and_a_changed_file(worker, template):
    """The verdict is not vacuous: a crash is exit 1, and a file a case rewrites is named."""
    outcome, problem = run_case(Case("probe", ["list", "taps"]), template, worker.run)
    assert problem is None and outcome.code == 2  # a user error: one line, exit 2
    from fuzz_runner import Outcome, verdict

    assert "exit 1" in verdict(
        Case("probe", []), Outcome(1, "Traceback (most recent call last):"), []
    )
    assert "important/thesis.txt" in verdict(
        Case("probe", []), Outcome(0, ""), ["important/thesis.txt"]
    )


@pytest.mark.slow
def test_two_thousand_fuzzed_cases(worker, template):
    tally = Tally()
    fuzz(FULL, worker.run, tally, template, derandomize=False)
    check(tally, "fuzz (worker, full)", FULL)


@pytest.mark.slow
def test_fuzzed_cases_through_the_console_script(template):
    tally = Tally()
    fuzz(FULL_SCRIPT, console_script, tally, template, derandomize=False)
    check(tally, "fuzz (console script, full)", FULL_SCRIPT)
