"""benchmarks/peers.py runs in a tiny configuration and prints its table: the rlcli
rows with finite numbers, and for each peer that cannot be imported a printed reason. No timed
assertions: the figures depend on the machine."""

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


def load_peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_median_and_budgets():
    peers = load_peers()
    assert peers.ratio(2.0, 8.0) == "0.25"
    assert peers.ratio(math.inf, 8.0) == "-"  # rlcli never reached the target
    assert peers.ratio(3.0, math.nan) == "n/a"  # peer skipped
    assert peers.median([3.0, math.inf, 1.0]) == 3.0  # a run that never solved counts as slowest
    full, half = peers.budget("full"), peers.budget("full", 0.5)
    assert half["ppo"] == full["ppo"] // 2 and half["solve_ppo"] == full["solve_ppo"]
    assert peers.budget("full", 1e-6)["sac"] > peers.SAC["learning_starts"]  # SAC still updates


def finite(cell: str) -> bool:
    try:
        return math.isfinite(float(cell.replace(",", "")))
    except ValueError:
        return False


@pytest.mark.slow
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
