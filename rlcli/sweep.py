"""Sweep summaries: one row per job of a Hydra multirun directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

FIELDS = ["job", "overrides", "status", "final_return", "wall_time_s", "error"]


def summarize(sweep_dir: Path) -> list[dict]:
    """Read every job directory of `sweep_dir` and write sweep_summary.csv there. A job is
    `ok` (summary.json), `failed` (error.txt) or `incomplete` (neither: killed or running)."""
    import yaml

    rows = []
    jobs = [p for p in Path(sweep_dir).iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    for job in sorted(jobs, key=lambda p: (len(p.name), p.name)):
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
    shown = [[str(r[k]) for k in FIELDS] for r in rows]
    widths = [max(len(k), *(len(row[i]) for row in shown)) if shown else len(k)
              for i, k in enumerate(FIELDS)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(FIELDS, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in shown]
    failed = sum(r["status"] != "ok" for r in rows)
    lines.append(f"{len(rows)} job(s), {failed} not ok" if failed else f"{len(rows)} job(s), all ok")
    return "\n".join(lines)
