"""Golden metrics (tests/goldens.py), the second half of the cases: every case rerun through the command line must give
the stored numbers exactly (one CPU device, threads=1). A failure means a change altered
numbers; if that was the purpose, regenerate with `python tests/goldens.py regenerate <case>` in
the same commit and say why."""

import pytest

from goldens import assert_unchanged, half, run_in_subprocess

NAMES = half(1)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_in_subprocess(NAMES, tmp_path_factory.mktemp("goldens"))


@pytest.mark.parametrize("name", NAMES)
def test_golden_numbers_unchanged(results, name):
    assert_unchanged(name, results[name])
