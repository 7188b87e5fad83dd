"""Sweeps: one summary row per job of a Hydra multirun directory; the process settings shared
by the jobs of a sweep: the per-job thread limit for jobs that run side by side (joblib,
submitit, Ray launchers) and JAX's persistent compilation cache."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

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


def aligned(header: list[str], rows: list[list[str]]) -> str:
    """Text columns padded to a common width, two spaces apart, header first."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


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


# ---- thread limit ---------------------------------------------------------------------------------

_UNSET = object()
_applied = _UNSET  # the `threads` this process last applied (None: no limit)
_MARK = "RLCLI_THREADS"  # set with the variables below, so that a child process knows they are ours


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps a process at `threads` compute threads: NPROC sizes the thread
    pool of XLA's CPU client (read when JAX starts its backend), and JAX does not preallocate
    75% of GPU memory, so that jobs can share a GPU."""
    return {"NPROC": str(threads), "XLA_PYTHON_CLIENT_PREALLOCATE": "false", _MARK: str(threads)}


def threads_of(cfg) -> int | None:
    """The config's `threads`: None (no limit; also when the key is missing, as in runs saved
    before it existed) or an int >= 1; anything else raises ConfigError."""
    from rlcli import config

    value = cfg.get("threads")
    ok, allowed = config.optional_int_at_least(1)
    if not ok(value):
        raise config.ConfigError(f"threads={config.format_value(value)} is not allowed (allowed: {allowed})")
    return None if value is None else int(value)


def _jax_started() -> bool:
    """Whether this process has started a JAX backend (its thread pool is then fixed)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(bridge is not None and bridge.backends_are_initialized())


def limit_threads(cfg) -> None:
    """Apply the config's `threads` to this process: call it before the process starts JAX's
    backend (importing jax is fine). Once the backend runs, the same value is accepted and
    another raises ConfigError, as the pool cannot be resized. With `threads: null` the
    variables that an rlcli parent process set (and this process inherited) are removed."""
    from rlcli.config import ConfigError
    from rlcli.xla import set_host_devices

    global _applied
    threads = threads_of(cfg)
    if _jax_started():
        if _applied == threads or (_applied is _UNSET and threads is None):
            return
        had = "no limit" if _applied in (_UNSET, None) else f"threads={_applied}"
        raise ConfigError(
            f"threads={'null' if threads is None else threads} cannot be applied: this process "
            f"already started JAX with {had} (allowed: the same threads for all jobs of a "
            "process; for different values a launcher with a process per job, e.g. "
            "hydra/launcher=submitit_local)")
    if threads is not None:
        os.environ.update(thread_env(threads))
    elif _MARK in os.environ:
        for key in thread_env(int(os.environ[_MARK])):
            os.environ.pop(key, None)
    set_host_devices()  # one CPU device per core it may use: seeds train in parallel
    _applied = threads


def cache_dir_of(cfg) -> Path | None:
    """The config's `compile_cache` as a directory: `auto` (also when the key is missing, as in
    runs saved before it existed) is $XDG_CACHE_HOME/rlcli/jax (~/.cache/rlcli/jax), null
    turns the cache off, any other string is the directory; anything else raises ConfigError."""
    from rlcli import config

    value = cfg.get("compile_cache", "auto")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise config.ConfigError(f"compile_cache={config.format_value(value)} is not allowed (allowed: "
                                 "auto, null, or a directory path)")
    if value == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "rlcli" / "jax"
    path = Path(os.path.expanduser(value))
    if path.exists() and not path.is_dir():
        raise config.ConfigError(f"compile_cache={value!r} is not allowed (allowed: auto, null, or a "
                                 "directory path; this one is a file)")
    return path


def use_compilation_cache(cfg) -> None:
    """Turn on JAX's persistent compilation cache in the config's `compile_cache` directory, so
    a second run of the same programs (a sweep's next job, a rerun, `rlcli eval`) loads them
    instead of compiling: every program is cached, however fast it compiled. The first
    directory set in a process stays (JAX opens its cache once); JAX_COMPILATION_CACHE_DIR in
    the environment wins over the config."""
    import jax

    directory = cache_dir_of(cfg)
    if directory is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
