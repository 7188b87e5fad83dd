"""benchmarks/peers.py runs in a tiny configuration and prints its table: the rlcli
rows with finite numbers, and for each peer that cannot be imported a printed reason;
benchmarks/throughput.py prints its table for one row at a small budget, and refuses bad flags
before it runs anything. No timed assertions: the figures depend on the machine."""

import importlib.util
import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "peers.py"


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_peers():
    return load(SCRIPT, "peers_benchmark")


def test_ratio_median_and_budgets():
    peers = load_peers()
    assert peers.ratio(2.0, 8.0) == "0.25"
    assert peers.ratio(math.inf, 8.0) == "-"  # rlcli never reached the target
    assert peers.ratio(3.0, math.nan) == "n/a"  # peer skipped
    assert peers.median([3.0, math.inf, 1.0]) == 3.0  # a run that never solved counts as slowest
    full, half = peers.budget("full"), peers.budget("full", 0.5)
    assert half["ppo"] == full["ppo"] // 2 and half["solve_ppo"] == full["solve_ppo"]
    assert peers.budget("full", 1e-6)["sac"] > peers.SAC["learning_starts"]  # SAC still updates


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def finite(cell: str) -> bool:
    try:
        return math.isfinite(float(cell.replace(",", "")))
    except ValueError:
        return False


@pytest.mark.extended
def test_quick_run_prints_rlcli_rows_and_skip_reasons(tmp_path):
    # a peers interpreter without site-packages: rejax and stable-baselines3 cannot be imported
    fake = tmp_path / "python-without-peers"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--reps", "1", "--rows", "1,4,6", "--scale", "0.2", "--seeds", "3",
         "--peers-python", str(fake)],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for package in ("rejax", "stable-baselines3"):
        assert re.search(rf"skipping the {package} rows: not importable in .*No module named", text), text
    assert re.search(r"skipped: rejax \(rejax\): not importable", text), text
    lines = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4 and cells[0] in {"1", "2", "3", "4", "5", "6"}:
            lines[cells[1]] = cells
    assert {c[0] for c in lines.values()} == {"1", "4", "6"}  # only the rows asked for
    assert any(what.startswith("PPO CartPole rejax cfg, 3 seeds x") for what in lines)  # --seeds
    ours = [c for what, c in lines.items() if "final return" not in what]
    assert len(ours) >= 8
    for cells in ours:
        assert finite(cells[3]), cells  # the rlcli column
    rejax = [c for c in lines.values() if c[4].startswith("rejax")]
    assert rejax and all(c[5] == "n/a" and c[6] == "n/a" for c in rejax)
    gym = next(c for what, c in lines.items() if what.startswith("gymnasium A2C"))
    assert finite(gym[5]) and finite(gym[6])  # the host-loop ceiling is ours, always measured
    rss = next(c for what, c in lines.items() if what.startswith("peak RSS"))
    assert 0.05 < float(rss[3]) < 64  # GiB: a real process, not KiB/bytes mistaken for GiB


# ---- benchmarks/throughput.py ---------------------------------------------------------------------


@pytest.mark.extended
def test_throughput_prints_its_table_for_the_rows_asked_for(capsys):
    """Row 4 (gymnasium backend, 8 envs) of the quick mode at 1/20 of its budgets, in this
    process: 20k x 0.05 = 1,000 throughput steps, rounded up to one whole chunk of 10,000 steps
    (250 updates of 8 envs x 5 steps), and 40k x 0.05 = 2,000 time-to-475 steps, with no
    evaluation before the final one (every 20,000). The script's mirrors of rlcli's defaults
    (chunk length, rollout length) are rlcli's."""
    from conftest import compose

    throughput = load(ROOT / "benchmarks" / "throughput.py", "throughput_benchmark")
    cfg = compose(["algo=a2c", "env=CartPole-v1"])
    assert (throughput.LOG_INTERVAL, throughput.NUM_STEPS) == (cfg.log_interval, cfg.algo.num_steps)
    throughput.main(["--quick", "--rows", "4", "--scale", "0.05"])
    text = capsys.readouterr().out
    assert "quick mode, budgets x0.05, medians over 1 repetition(s)" in text
    assert "(env steps: gymnasium 8: 10,000)" in text and "budget 2,000 (gymnasium) env steps;" in text, text
    lines = [re.split(r"\s{2,}", line.strip()) for line in text.split("\n\n")[1].splitlines()]
    assert lines[0] == ["backend", "num_envs", "steps/s", "compile s", "t->475 s", "steps@475", "final return"]
    assert len(lines) == 3 and lines[2][:2] == ["gymnasium", "8"]  # the header, its rule, row 4 only
    steps_per_s, compile_s, solve_s, solve_steps, final = lines[2][2:]
    assert number(steps_per_s) > 0 and number(compile_s) > 0
    assert number(final) >= 1  # every CartPole episode has at least one rewarded step
    # reached at the run's only evaluation, its last, or not at all
    assert (solve_s, solve_steps) == ("-", "-") or (number(solve_s) > 0 and solve_steps == "2,000")


@pytest.mark.parametrize("flags, message", [
    (["--rows", "5"], "--rows=5: rows are 1, 2, 3, 4"),
    (["--rows", "1,x"], "--rows=1,x: rows are 1, 2, 3, 4"),
    (["--reps", "0"], "--reps=0: at least 1"),
    (["--scale", "0"], "--scale=0.0: a number > 0"),
])
def test_throughput_refuses_bad_flags_before_running(capsys, monkeypatch, flags, message):
    throughput = load(ROOT / "benchmarks" / "throughput.py", "throughput_benchmark")
    monkeypatch.setattr(throughput, "train", lambda *args: pytest.fail("trained"))
    with pytest.raises(SystemExit) as exit_:
        throughput.main(flags)
    out = capsys.readouterr()
    assert exit_.value.code == 2 and out.out == ""
    assert out.err.splitlines()[-1].endswith(f": error: {message}")  # argparse: "<prog>: error: ..."
