"""Golden metrics (tests/goldens.py): every case rerun through the command line must give the
stored numbers exactly (one CPU device, threads=1). A failure means a change altered numbers;
if that was the purpose, regenerate with `python tests/goldens.py regenerate <case>` in the
same commit and say why."""

import json

import pytest

from goldens import CASES, golden_path, run_in_subprocess


# the cases in two halves, each run in one subprocess; under `pytest -n 2` (xdist's loadgroup)
# each half is an xdist group of its own, so the two halves run side by side
HALVES = {name: i % 2 for i, name in enumerate(CASES)}


DONE: dict[int, dict] = {}  # kept for the whole worker process: xdist may tear fixtures down between tests


@pytest.fixture
def results(tmp_path_factory):
    """The results of each half that a test of this worker asked for, run on first use."""
    done = DONE

    def of(name: str) -> dict:
        half = HALVES[name]
        if half not in done:
            names = [n for n in CASES if HALVES[n] == half]
            done[half] = run_in_subprocess(names, tmp_path_factory.mktemp(f"goldens{half}"))
        return done[half][name]

    return of


def _first_difference(expected, got, where="") -> str | None:
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(set(expected) | set(got)):
            if key not in expected or key not in got:
                return f"{where}{key}: only in {'the golden' if key in expected else 'this run'}"
            found = _first_difference(expected[key], got[key], f"{where}{key}.")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{where}: {len(expected)} entries in the golden, {len(got)} in this run"
        for i, (a, b) in enumerate(zip(expected, got)):
            found = _first_difference(a, b, f"{where}[{i}].")
            if found:
                return found
        return None
    return None if expected == got else f"{where.rstrip('.')}: golden {expected!r}, this run {got!r}"


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.xdist_group(f"goldens{HALVES[name]}"))
                                  for name in CASES])
def test_golden_numbers_unchanged(results, name):
    expected = json.loads(golden_path(name).read_text())
    got = json.loads(json.dumps(results(name)))  # through JSON, as the golden was written
    assert got["metrics"], name
    difference = _first_difference(expected, got)
    assert difference is None, f"golden case {name} changed at {difference}"
