"""What the benchmark scripts share: one timed `rlcli train` process of a source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# variables a test session or an earlier run may have set that would change what is measured
DROPPED = ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS", "RLCLI_HOST_DEVICES", "RLCLI_THREADS", "NPROC")


def train_process(args: list[str], out: Path, tree: Path = ROOT) -> float:
    """Run `python -m rlcli train <args> logger=quiet hydra.run.dir=<out>` with `tree` on the
    PYTHONPATH and the variables above removed; its wall time in seconds. A failure raises
    SystemExit naming the command, with the end of its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env["PYTHONPATH"] = str(tree)
    command = [sys.executable, "-m", "rlcli", "train", *args, "logger=quiet", f"hydra.run.dir={out}"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {tree}:\n{done.stderr[-3000:]}")
    return wall
