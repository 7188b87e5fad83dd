"""`rlcli plot`: learning curves across seeds and runs with the mean and a 95% bootstrap confidence band.

A *seed* is one `seed_index` of one run directory: the vmapped seeds of a run and the jobs of
a multirun all count. Curves are aligned on a common x grid per group: for `x=env_steps` the
union of the env steps that the group's seeds logged, for `x=wall_time` `max(100, records per
seed)` evenly spaced points. Each seed is linearly interpolated onto the grid within its own
logged range only (never extrapolated), so `n_seeds` in curves.csv can vary along x.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt  # noqa: E402  (after rlcli.curves chose the Agg backend)
import numpy as np

from rlcli import arguments
from rlcli.arguments import Command, Option, text_of
from rlcli.commands.groups import SHORT_KEYS, check_group_by, config_value, group_of, label, order, text
from rlcli.commands.scores import LEVEL, bootstrap_ci, final, finals_csv, finals_table, number
from rlcli.curves import grid, save_figure, seed_curves
from rlcli.rules import Rule, non_empty_text, one_of

COMMAND = Command(
    "plot", "<run or multirun dir> [<dir> ...] [key=value ...]",
    """Learning curves of the runs in the given directories: per group, the mean across seeds and a
95% bootstrap confidence band (2000 resamples of the seeds, fixed seed, percentile interval).
A seed is one seed_index of one run, so the vmapped seeds of a run (num_seeds=K) and the jobs
of a multirun (rlcli train -m ...) both count. A group with one seed has no band (it collapses
to the mean). Curves are interpolated linearly onto a common grid, each within its own logged
range: the union of the logged env steps, or 100+ evenly spaced wall times. Writes curves.png,
curves.csv (group, x, mean, ci_low, ci_high, n_seeds) and final_returns.csv (group, n_seeds,
mean, ci_low, ci_high: the final evaluation return per seed from summary.json), and prints the
final-return table. With rliable installed (pip install 'rlcli[rliable]'), the final returns are
also normalised per environment, (R - random) / (reference - random) with conf/scores.yaml's
anchors (or normalize_by=<file>), and each method (a group without its env) gets the IQM,
median, mean and optimality gap with 95% stratified bootstrap intervals (aggregates.csv, printed)
and performance profiles (profiles.png, profiles.csv).""",
    (Option("x", "env_steps", one_of("env_steps", "wall_time"),
            "the x axis: env steps per seed, or seconds since the run started (compile included)", text_of),
     Option("group_by", "algo,env,estimator", Rule(lambda v: isinstance(v, str), "comma-separated config keys"),
            "config keys that make a group: algo (algo.name), env (env.id), estimator (estimator.name) or any "
            "dotted key of .hydra/config.yaml; empty pools every run", text_of),
     Option("metric", "episode/return", Rule(lambda v: isinstance(v, str) and bool(v),
                                             "episode/return, eval/return_mean or another numeric key of metrics.jsonl"),
            "the y axis: training episodes that finished in the interval, or the evaluations", text_of),
     Option("aggregates", "auto", one_of("auto", "true", "false"),
            "IQM, optimality gap and performance profiles of the normalised final returns: auto (when rliable is "
            "installed and every env has anchors), true (or exit 2 saying why not), false", text_of),
     Option("normalize_by", None, non_empty_text(), "a YAML/JSON file of env id: {random: R, reference: R} "
            "replacing conf/scores.yaml's entries", text_of),
     Option("out", None, non_empty_text(), "where to write (default: the first directory if it is a multirun "
            "directory, else <first run dir>/plots; a name taken gets -1, -2, ...)", text_of)),
    positional="run directories (with .hydra/config.yaml) or multirun directories whose job directories are "
               "run directories, directly or one level down",
)

X_AXES = {"env_steps": "env steps (per seed)", "wall_time": "wall time (s, compile included)"}
METRIC_LABELS = {"episode/return": "episode return (training)",
                 "eval/return_mean": "evaluation return (mean over episodes)"}
DIRS_ALLOWED = ("allowed: a run directory with .hydra/config.yaml, or a multirun directory "
                "holding run directories")


class Options(NamedTuple):
    dirs: list[str]
    x: str
    group_by: list[str]
    metric: str
    aggregates: str
    normalize_by: str | None
    out: str | None


class Run(NamedTuple):
    """One run directory: its config, metric records and final evaluation return per seed
    index (None without summary.json)."""

    path: Path
    config: object
    records: list[dict]
    final: list[float] | None


class Band(NamedTuple):
    """Mean and confidence band of one group on its x grid."""

    group: str
    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray


# ---- numbers ----------------------------------------------------------------------------------


def aligned(curves: list[tuple[np.ndarray, np.ndarray]], xs: np.ndarray) -> np.ndarray:
    """[len(xs), seeds]: each curve linearly interpolated onto xs, NaN outside its x range."""
    columns = [np.where((xs >= cx[0]) & (xs <= cx[-1]), np.interp(xs, cx, cy), np.nan) for cx, cy in curves]
    return np.stack(columns, axis=1)


def band(group: str, curves: list[tuple[np.ndarray, np.ndarray]], x: str) -> Band:
    """Mean across seeds and bootstrap interval at each grid point (points no seed covers
    are left out)."""
    xs = grid(curves, x)
    ys = aligned(curves, xs)
    n = np.sum(~np.isnan(ys), axis=1)
    xs, ys, n = xs[n > 0], ys[n > 0], n[n > 0]
    rows = [row[~np.isnan(row)] for row in ys]
    ci = np.array([bootstrap_ci(row) for row in rows]).reshape(-1, 2)
    return Band(group, xs, np.array([row.mean() for row in rows]), ci[:, 0], ci[:, 1], n)


# ---- input ------------------------------------------------------------------------------------


def parse_args(args: list[str]) -> Options:
    """Directories and key=value options; raises ConfigError for an unknown option or x."""
    from rlcli.errors import ConfigError

    parsed = arguments.parse(COMMAND, args)
    values, dirs = parsed.values, parsed.positional
    if not dirs:
        raise ConfigError(f"no directory given ({DIRS_ALLOWED}; rlcli plot --help)")
    group_by = [k.strip() for k in values["group_by"].split(",") if k.strip()]
    return Options(dirs, values["x"], group_by, values["metric"], values["aggregates"], values["normalize_by"],
                   values["out"])


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file()


def _children(path: Path) -> list[Path]:
    """Subdirectories, job numbers in numeric order."""
    return sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))


def run_dirs(arg: str) -> list[Path]:
    """The run directories of one argument: itself, or its job directories one or two levels
    down. Raises ConfigError for a missing path or one that holds no run."""
    from rlcli.errors import ConfigError

    path = Path(arg)
    if not path.is_dir():
        raise ConfigError(f"{arg} does not exist ({DIRS_ALLOWED})")
    if is_run_dir(path):
        return [path]
    found = []
    for child in _children(path):
        found += [child] if is_run_dir(child) else [p for p in _children(child) if is_run_dir(p)]
    if not found:
        raise ConfigError(f"{arg} holds no run: no .hydra/config.yaml in it or in its "
                          f"subdirectories ({DIRS_ALLOWED})")
    return found


def load(path: Path) -> Run | None:
    """The run in `path`, or None when it has no metrics (a sweep job that failed early)."""
    import json

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlcli.errors import ConfigError
    from rlcli.logger import read_metrics

    try:
        config = OmegaConf.load(path / ".hydra" / "config.yaml")
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise ConfigError(f"{path}: .hydra/config.yaml cannot be read: {str(err).splitlines()[0]} "
                          f"({DIRS_ALLOWED})") from None
    if not (path / "metrics.jsonl").is_file():
        return None
    summary = path / "summary.json"
    final_returns = None
    if summary.is_file():
        try:
            final_returns = [float(v) for v in json.loads(summary.read_text())["final_eval"]["return_mean"]]
        except (ValueError, KeyError, TypeError):
            final_returns = None
    return Run(path, config, read_metrics(path), final_returns)


def default_out(first: str) -> Path:
    path = Path(first)
    return path / "plots" if is_run_dir(path) else path


# ---- output -----------------------------------------------------------------------------------


def curves_csv(bands: list[Band]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "x", "mean", "ci_low", "ci_high", "n_seeds"])
    for b in bands:
        for row in zip(b.x, b.mean, b.low, b.high, b.n):
            writer.writerow([b.group, *map(number, row[:4]), int(row[4])])
    return out.getvalue()


def plot_bands(bands: list[Band], groups: list[tuple[tuple[str, str], ...]], x: str, metric: str,
               path: Path) -> None:
    """One line per group (the mean) with its shaded 95% band; the legend names the group_by
    values that differ between groups, the title those they share."""
    from matplotlib.ticker import EngFormatter

    varying = {k for k, _ in groups[0] if len({dict(g)[k] for g in groups}) > 1}
    common = " ".join(f"{k}={v}" for k, v in groups[0] if k not in varying)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    handles, labels = [], []
    for i, (b, g) in enumerate(zip(bands, groups)):
        colour = f"C{i % 10}"
        lo, hi = int(b.n.min()), int(b.n.max())
        seeds = f"{hi} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"
        name = " ".join(f"{k}={v}" for k, v in g if k in varying) or "mean"
        line, = ax.plot(b.x, b.mean, color=colour, lw=1.8, marker="o" if len(b.x) <= 30 else None, ms=3)
        shade = ax.fill_between(b.x, b.low, b.high, color=colour, alpha=0.2, lw=0)
        handles.append((shade, line))
        labels.append(f"{name} ({seeds}{', no band' if hi == 1 else ''})")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_title(f"{common + ': ' if common else ''}mean and 95% bootstrap CI across seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


# ---- the command ------------------------------------------------------------------------------


def collect(options: Options) -> tuple[list[Run], list[str]]:
    """The runs of every directory (each once) and notes on the skipped ones."""
    from rlcli.errors import ConfigError

    paths = {}
    for arg in options.dirs:
        for p in run_dirs(arg):
            paths.setdefault(p.resolve(), p)
    runs, notes = [], []
    for p in paths.values():
        run = load(p)
        if run is None:
            notes.append(f"skipped {p}: no metrics.jsonl")
        else:
            runs.append(run)
    if not runs:
        raise ConfigError(f"{options.dirs[0]} holds no run with metrics.jsonl ({DIRS_ALLOWED})")
    return runs, notes


def compute(options: Options, runs: list[Run]):
    """Groups, bands and final-return rows; raises ConfigError for a metric no run has."""
    from rlcli.errors import ConfigError

    check_group_by([r.config for r in runs], options.group_by)
    by_group: dict[tuple, list[Run]] = {}
    for run in runs:
        by_group.setdefault(group_of(run.config, options.group_by), []).append(run)
    groups = sorted(by_group, key=order)
    bands, finals, plotted = [], [], []
    for g in groups:
        curves = [c for run in by_group[g] for c in seed_curves(run.records, options.metric, options.x).values()]
        if curves:
            bands.append(band(label(g), curves, options.x))
            plotted.append(g)
        finals.append(final(label(g), [v for run in by_group[g] for v in run.final or []]))
    if not bands:
        raise ConfigError(f"metric={options.metric} has no values in the runs' metrics.jsonl (allowed: "
                          f"{', '.join(METRIC_LABELS)} or another numeric key of metrics.jsonl)")
    return plotted, bands, finals


def score_table(options: Options, runs: list[Run]):
    """(the normalised scores of each method, None) for the aggregates, or (None, why not);
    raises ConfigError for a bad normalize_by file, or when aggregates=true cannot be met."""
    import importlib.util

    from rlcli.commands import scores
    from rlcli.errors import ConfigError

    if options.aggregates == "false":
        return None, None
    known = scores.anchors(options.normalize_by)
    keys = [k for k in options.group_by if SHORT_KEYS.get(k, k) != "env.id"]
    finals: dict[tuple[str, str], list[float]] = {}
    methods = sorted({group_of(run.config, keys) for run in runs if run.final}, key=order)
    for run in runs:
        if run.final:
            env = text(config_value(run.config, "env.id"))
            finals.setdefault((label(group_of(run.config, keys)), env), []).extend(run.final)
    table = (scores.RLIABLE_MISSING if importlib.util.find_spec("rliable") is None
             else "no run has final returns (summary.json)" if not finals
             else scores.score_table(finals, [label(m) for m in methods], known))
    if not isinstance(table, str):
        return table, None
    if options.aggregates == "true":
        raise ConfigError(f"aggregates=true cannot be met: {table} (allowed: aggregates=auto or aggregates=false)")
    return None, table


def main(args: list[str]) -> int:
    """`rlcli plot`: see COMMAND."""
    from rlcli.commands import scores
    from rlcli.errors import ConfigError, report
    from rlcli.paths import write_atomic
    from rlcli.paths import check_output_dir, claim_dir

    if arguments.wants_help(args):
        print(arguments.usage(COMMAND))
        return 0
    try:
        options = parse_args(args)
        runs, notes = collect(options)
        groups, bands, finals = compute(options, runs)
        table, skipped = score_table(options, runs)
        out = Path(options.out) if options.out else default_out(options.dirs[0])
        check_output_dir("out", str(out))
    except ConfigError as err:
        return report("plot", err)
    try:
        if options.out or not is_run_dir(out.parent):
            out.mkdir(parents=True, exist_ok=True)  # out= (or a sweep directory) is written into
        else:  # <run>/plots is claimed for this process (plots-1, plots-2, ... when taken)
            out = claim_dir("out", out, named_by_user=False)
        plot_bands(bands, groups, options.x, options.metric, out / "curves.png")
        write_atomic(out / "curves.csv", curves_csv(bands))
        write_atomic(out / "final_returns.csv", finals_csv(finals))
        if table is not None:
            rows, taus = scores.aggregates(table), scores.taus_for(table)
            profiles = scores.profiles(table, taus)
            scores.plot_profiles(taus, profiles, table.tasks, out / "profiles.png")
            write_atomic(out / "profiles.csv", scores.profiles_csv(taus, profiles))
            write_atomic(out / "aggregates.csv", scores.aggregates_csv(rows))
    except OSError as err:
        print(f"rlcli plot: error: cannot write to out={out}: {err}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    print(f"final evaluation return per group (mean over seeds, {LEVEL:.0%} bootstrap CI over seeds):")
    print(finals_table(finals))
    if table is not None:
        for note in table.notes:
            print(f"note: {note}")
        print(f"normalised final returns, (R - random) / (reference - random) over {', '.join(table.tasks)}; "
              f"{LEVEL:.0%} stratified bootstrap CIs ({scores.RESAMPLES} resamples, seed {scores.SEED}):")
        print(scores.aggregates_table(rows))
    elif skipped:
        print(f"note: no IQM or performance profiles: {skipped}")
    print(f"wrote {out / 'curves.png'}, curves.csv and final_returns.csv"
          + (", aggregates.csv, profiles.csv and profiles.png" if table is not None else ""))
    return 0
