"""`rlcli reproduce run=<run dir> [out=<dir>] [rtol=...]`: train the run's saved config again
into a new run directory and compare the metrics record by record.

A run that was resumed (to a larger budget, or after a stop) is replayed as it was trained:
leg by leg from its legs.json, each leg with its own config, stopped with a checkpoint at the
update where the next leg resumed, and resumed from there.

Compared are every metric of every record of the original's metrics.jsonl (update, env steps,
episode statistics, losses, evaluations), except the timings `wall_time` and
`perf/steps_per_s`. On CPU, where rlcli's programs are deterministic, they must be equal bit for
bit; where either run was not on CPU (GPU kernels may reorder reductions) they must agree
within a relative tolerance `rtol` (default 1e-3, printed; values near zero within
rtol/1000 absolute). `rtol=` also loosens a CPU comparison. The result, with both runs'
package versions and git commits (so a mismatch can be explained), goes to reproduce.json in
the new run directory; the exit code is 0 when the metrics match and 1 when they do not.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rlcli import arguments
from rlcli.arguments import Command, Option, text_of
from rlcli.errors import ConfigError
from rlcli.rules import non_empty_text, positive

COMMAND = Command(
    "reproduce", "run=<run dir> [out=<new run dir>] [rtol=<relative tolerance>]",
    """Re-runs the run's saved config (.hydra/config.yaml, seed included; a resumed run leg by leg)
into a new run directory and reports whether its metrics match the original's: bit for bit
when both ran on CPU, within rtol otherwise. Writes reproduce.json (match, first difference,
versions and git commits of both runs) into the new directory. Exit code 0: the metrics match;
1: they differ; 2: bad input. run=<multirun dir> reproduces every job J into
<multirun dir>-reproduced/J (or <out>/J).""",
    (Option("run", None, non_empty_text(), "the run directory written by rlcli train", text_of),
     Option("out", None, non_empty_text(),
            "the new run directory, new or empty (default: <run dir>-reproduced, or -reproduced-1, ... "
            "when taken)", text_of),
     Option("rtol", None, positive(), "relative tolerance (default: exact on CPU, else 1e-3)")),
)

VOLATILE = ("wall_time", "perf/steps_per_s")
DEFAULT_RTOL = 1e-3


def compare(original: list[dict], reproduced: list[dict], rtol: float | None) -> dict:
    """Compare the records of two runs; rtol None means exact equality. Returns
    {"match", "records", "values", "first_difference"} where first_difference names the
    update, seed index and key of the first value that differs (or is missing)."""
    values = 0
    key_of = lambda r: (r["update"], r["seed_index"])  # noqa: E731
    theirs = {key_of(r): r for r in reproduced}
    for record in original:
        other = theirs.get(key_of(record))
        for key, value in record.items():
            if key in VOLATILE:
                continue
            got = None if other is None else other.get(key)
            same = got is not None and (value == got if rtol is None or not isinstance(value, float)
                                        else math.isclose(value, got, rel_tol=rtol, abs_tol=rtol * 1e-3))
            if not same:
                return {"match": False, "records": len(original), "values": values,
                        "first_difference": {"update": record["update"], "seed_index": record["seed_index"],
                                             "key": key, "original": value, "reproduced": got}}
            values += 1
    extra = len(reproduced) - len(original)
    if extra > 0:
        return {"match": False, "records": len(original), "values": values,
                "first_difference": {"key": "records", "original": len(original), "reproduced": len(reproduced)}}
    return {"match": True, "records": len(original), "values": values, "first_difference": None}


def replay_plan(run_dir: Path, cfg) -> list[tuple]:
    """[(config, stop update or None)] per leg of the run: a run that was resumed is replayed
    as it was trained, each leg with its own config, stopped at the update where the next leg
    resumed (legs.json). A run without legs.json is one leg with its saved config."""
    from omegaconf import OmegaConf

    from rlcli import schema, train

    legs = train.read_legs(run_dir)
    if len(legs) < 2 or legs[0]["start_update"] != 0:
        return [(cfg, None)]
    starts = [leg["start_update"] for leg in legs[1:]]
    configs = [OmegaConf.create(leg["config"]) for leg in legs]
    for config in configs:
        schema.complete(config)  # keys declared after the run was written
    return list(zip(configs, [*starts, None]))


def _parse(args: list[str]):
    """(run_dir, cfg, out_dir, rtol or None) from the arguments; ConfigError for bad input."""
    from rlcli.commands.common import load_run
    from rlcli.config import validate
    from rlcli.paths import claim_dir
    from rlcli.runtime import limit_threads

    parsed = arguments.parse(COMMAND, args)
    out = Path(parsed.values["out"]) if parsed.values["out"] else None
    run_dir, cfg = load_run([f"run={parsed.given['run']}"] if "run" in parsed.given else [])
    # the run's threads and one CPU device per core, as `rlcli train` set them, before validate
    # starts JAX: the seeds are sharded over the devices as in the original run, so its numbers
    # come out bit for bit (on one device a vmapped pair of seeds rounds differently)
    limit_threads(cfg)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"run={run_dir} has no metrics.jsonl to compare with (allowed: a run directory "
                          "written by rlcli train)")
    validate(cfg)
    # claimed for this process alone: <run dir>-reproduced, or -reproduced-1, ... when taken
    out = claim_dir("out", out or run_dir.with_name(run_dir.name + "-reproduced"), named_by_user=out is not None)
    return run_dir, cfg, out, parsed.values["rtol"]


def main(args: list[str]) -> int:
    import shutil

    from omegaconf import OmegaConf

    from rlcli import train
    from rlcli.commands.common import configure_logging
    from rlcli.errors import ConfigError, Interrupted, report
    from rlcli.logger import read_metrics
    from rlcli.paths import write_atomic

    if arguments.wants_help(args):
        print(arguments.usage(COMMAND))
        return 0
    try:
        run_dir, cfg, out, rtol = _parse(args)
    except ConfigError as err:
        return report("reproduce", err)
    legs = replay_plan(run_dir, cfg)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    write_atomic(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(legs[0][0]))
    for name in ("overrides.yaml", "hydra.yaml"):
        if (run_dir / ".hydra" / name).is_file():
            shutil.copyfile(run_dir / ".hydra" / name, out / ".hydra" / name)
    configure_logging(out)
    print(f"rlcli reproduce: training the config of {run_dir} again into {out}"
          + (f", in its {len(legs)} legs (resumed at updates "
             f"{', '.join(str(stop) for _, stop in legs[:-1])})" if len(legs) > 1 else ""), file=sys.stderr)
    try:
        for number, (leg_cfg, stop) in enumerate(legs):
            summary = train.train(leg_cfg, out, resume=number > 0, stop_at_update=stop)
    except (Exception, Interrupted) as err:
        code = report("reproduce", err)
        if code is None:
            raise
        return code
    original_summary = {}
    if (run_dir / "summary.json").is_file():
        original_summary = json.loads((run_dir / "summary.json").read_text())
    on_cpu = original_summary.get("device", "cpu") == "cpu" and summary["device"] == "cpu"
    tolerance = rtol if rtol is not None else (None if on_cpu else DEFAULT_RTOL)
    result = compare(read_metrics(run_dir), read_metrics(out), tolerance)
    result.update(
        original=str(run_dir), reproduced=str(out),
        tolerance="exact" if tolerance is None else f"rtol={tolerance:g}",
        original_versions=original_summary.get("versions"), reproduced_versions=summary["versions"],
        original_git_commit=original_summary.get("git_commit"), reproduced_git_commit=summary["git_commit"],
        original_device=original_summary.get("device"), reproduced_device=summary["device"],
    )
    write_atomic(out / "reproduce.json", json.dumps(result, indent=2) + "\n")
    how = "bit for bit" if tolerance is None else f"within rtol={tolerance:g}"
    if result["match"]:
        print(f"rlcli reproduce: the metrics match {how}: {result['records']} records, "
              f"{result['values']} values compared (timings excluded); {out}/reproduce.json")
        return 0
    diff = result["first_difference"]
    where = (f"update {diff['update']}, seed index {diff['seed_index']}, {diff['key']}"
             if "update" in diff else diff["key"])
    changed = [f"{k} {v} -> {summary['versions'].get(k)}"
               for k, v in (original_summary.get("versions") or {}).items() if summary["versions"].get(k) != v]
    if original_summary.get("git_commit") != summary["git_commit"]:
        changed.append(f"git commit {original_summary.get('git_commit')} -> {summary['git_commit']}")
    print(f"rlcli reproduce: the metrics differ ({how}) first at {where}: original {diff['original']}, "
          f"reproduced {diff['reproduced']}; changed since the original: {', '.join(changed) or 'no versions'}; "
          f"{out}/reproduce.json")
    return 1
