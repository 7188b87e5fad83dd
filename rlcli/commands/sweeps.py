"""Sweeps: one summary row per job of a Hydra multirun directory (sweep_summary.csv and a printed
table), and the return value of a failed job for Hydra's sweepers. The process settings of a
sweep's jobs (threads, compilation cache) are in rlcli.runtime."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rlcli.commands.common import aligned

FIELDS = ["job", "overrides", "status", "final_return", "wall_time_s", "error"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories Hydra has started in `sweep_dir` (those with .hydra/overrides.yaml),
    in job order; none when the directory does not exist."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def summarize(sweep_dir: Path) -> list[dict]:
    """Read every job directory of `sweep_dir` and write sweep_summary.csv there. A job is
    `ok` (summary.json), `failed` (error.txt) or `incomplete` (neither: killed or running)."""
    import yaml

    rows = []
    for job in job_dirs(sweep_dir):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row = {"job": job.name, "overrides": " ".join(overrides), "status": "incomplete",
               "final_return": "", "wall_time_s": "", "error": ""}
        if (job / "error.txt").is_file():
            row.update(status="failed", error=(job / "error.txt").read_text().strip())
        elif (job / "summary.json").is_file():
            summary = json.loads((job / "summary.json").read_text())
            row.update(status="ok", final_return=round(summary["final_eval_return_mean"], 3),
                       wall_time_s=round(summary["wall_time_s"], 1))
        rows.append(row)
    with open(Path(sweep_dir) / "sweep_summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def table(rows: list[dict]) -> str:
    """A plain-text table of the rows, with a count of failed jobs."""
    failed = sum(r["status"] != "ok" for r in rows)
    count = f"{len(rows)} job(s), {failed} not ok" if failed else f"{len(rows)} job(s), all ok"
    return aligned(FIELDS, [[str(r[k]) for k in FIELDS] for r in rows]) + "\n" + count


# ---- failed jobs ----------------------------------------------------------------------------------

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class JobFailed(RuntimeError):
    """A sweep job that rlcli recorded as failed (its error.txt), raised to a sweeper that
    optimises the jobs' return values."""


def failed_job_return(hydra_cfg, message: str) -> float:
    """The return value of a failed sweep job. Hydra's basic sweeper gets NaN and goes on with
    the other jobs (a job that raises stops it). Other sweepers optimise the return value and
    get JobFailed: Optuna then records a failed trial and samples on (a NaN objective would
    stop the whole sweep with a traceback: hydra-optuna-sweeper 1.3.0 tells it back to
    optuna 2.10 as a failed trial with a value, which optuna refuses)."""
    if hydra_cfg.sweeper.get("_target_") == BASIC_SWEEPER:
        return float("nan")
    raise JobFailed(message)
