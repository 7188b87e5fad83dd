"""Golden metrics (tests/goldens.py), the second half of the cases: every case rerun through the command line must give
the stored numbers exactly (one CPU device, threads=1). A failure means a change altered
numbers; if that was the purpose, regenerate with `python tests/goldens.py regenerate <case>` in
the same commit and say why."""

from goldens import golden_half

results, test_golden_numbers_unchanged = golden_half(1)
