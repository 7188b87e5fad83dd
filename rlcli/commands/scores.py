"""Final returns across seeds, runs and environments, for `rlcli plot`: the percentile
bootstrap interval of a group's mean, and the aggregate metrics the field now recommends
(Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice"),
computed with rliable (`pip install 'rlcli[rliable]'`).

A final return R on environment e is normalised as (R - random_e) / (reference_e - random_e):
0 for uniformly random actions, 1 for the reference (conf/scores.yaml: the RL Zoo's best
published return; `normalize_by=<file>` gives others). A *method* is a group of the plot with
the environment left out of its keys; its score matrix is [runs, tasks]. Over it rliable gives
the interquartile mean (IQM: the mean of the middle 50% of all runs' scores), the median and
mean of the tasks' mean scores, and the optimality gap (the mean shortfall below 1), each with a
stratified bootstrap interval (runs resampled with replacement within each task), and the
performance profile: the fraction of runs whose score
exceeds tau, for tau on a grid, with its interval. Resamples and the bootstrap's seed are fixed,
so the output is reproducible.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rlcli.errors import ConfigError

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
METRICS = ("iqm", "median", "mean", "optimality_gap")
RLIABLE_MISSING = "IQM and performance profiles need rliable: pip install 'rlcli[rliable]'"


def bootstrap_ci(values, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values with replacement
    `resamples` times (numpy generator seeded with `seed`). One value: (value, value)."""
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return float(values[0]), float(values[0])
    idx = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values[idx].mean(axis=1), [tail, 100 - tail])
    return float(low), float(high)


def number(value: float) -> str:
    """A CSV cell: integers without a point, floats in full, non-finite as empty."""
    if not np.isfinite(value):
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Final(NamedTuple):
    group: str
    n: int
    mean: float
    low: float
    high: float


def final(group: str, returns: list[float]) -> Final:
    """Mean and bootstrap interval of the final evaluation returns of a group's seeds."""
    if not returns:
        return Final(group, 0, float("nan"), float("nan"), float("nan"))
    return Final(group, len(returns), float(np.mean(returns)), *bootstrap_ci(returns))


def finals_csv(finals: list[Final]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "n_seeds", "mean", "ci_low", "ci_high"])
    for f in finals:
        writer.writerow([f.group, f.n, number(f.mean), number(f.low), number(f.high)])
    return out.getvalue()


def finals_table(finals: list[Final]) -> str:
    """The final-return table as aligned text."""
    from rlcli.commands.common import aligned

    header = ["group", "seeds", "final return", "95% CI"]
    rows = [[f.group, str(f.n), f"{f.mean:.2f}" if f.n else "-",
             (f"[{f.low:.2f}, {f.high:.2f}]" if f.n > 1 else "- (one seed)" if f.n else "- (no summary.json)")]
            for f in finals]
    return aligned(header, rows)


# ---- normalised scores ------------------------------------------------------------------------


def anchors(normalize_by: str | None) -> dict[str, tuple[float, float]]:
    """{env id: (random, reference)} of conf/scores.yaml, updated by the file `normalize_by`
    (YAML or JSON of the same shape); raises ConfigError (one line) for a bad file."""
    import yaml

    from rlcli.paths import config_dir

    found: dict[str, tuple[float, float]] = {}
    for path, key in [(config_dir() / "scores.yaml", None)] + ([(Path(normalize_by), "normalize_by")]
                                                               if normalize_by else []):
        where = f"{key}={path}" if key else str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{where} cannot be read: {str(err).splitlines()[0]} (allowed: a YAML or JSON "
                              "file of env id: {random: <return>, reference: <return>})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where} is not a mapping (allowed: env id: {{random: <return>, reference: <return>}})")
        for env_id, entry in data.items():
            values = [entry.get(k) if isinstance(entry, dict) else None for k in ("random", "reference")]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or values[0] == values[1]:
                raise ConfigError(f"{where}: {env_id}={entry!r} is not allowed (allowed: {{random: <number>, "
                                  "reference: <number>}} with reference != random)")
            found[str(env_id)] = (float(values[0]), float(values[1]))
    return found


class ScoreTable(NamedTuple):
    methods: list[str]
    tasks: list[str]
    scores: dict[str, np.ndarray]  # method -> normalised final returns [runs, tasks]
    notes: list[str]


def score_table(finals: dict[tuple[str, str], list[float]], methods: list[str],
                known: dict[str, tuple[float, float]]) -> ScoreTable | str:
    """The normalised score matrix of each method from {(method, env id): final returns}, over
    the environments every method has, with as many runs per task as the method's smallest
    task has (the first ones); or, when there is nothing to aggregate, the reason."""
    tasks = sorted({env for _, env in finals})
    missing = [env for env in tasks if env not in known]
    if missing:
        return (f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no random and reference return "
                "in conf/scores.yaml (give them with normalize_by=<file>)")
    shared = [env for env in tasks if all(finals.get((m, env)) for m in methods)]
    notes = [f"left out of the aggregates: {env} (not every method has final returns on it)"
             for env in tasks if env not in shared]
    if not shared:
        return "no environment has final returns of every method"
    scores = {}
    for method in methods:
        runs = min(len(finals[(method, env)]) for env in shared)
        if any(len(finals[(method, env)]) > runs for env in shared):
            notes.append(f"{method}: the first {runs} runs of each environment are aggregated")
        scores[method] = np.array([[(finals[(method, env)][i] - known[env][0]) / (known[env][1] - known[env][0])
                                    for env in shared] for i in range(runs)])
    return ScoreTable(methods, shared, scores, notes)


class Aggregate(NamedTuple):
    method: str
    metric: str
    value: float
    low: float
    high: float
    runs: int
    tasks: int


def aggregates(table: ScoreTable) -> list[Aggregate]:
    """IQM, median, mean and optimality gap of each method's scores with their stratified
    bootstrap intervals (rliable)."""
    from rliable import metrics

    def all_four(scores):
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores),
                         metrics.aggregate_mean(scores), metrics.aggregate_optimality_gap(scores)])

    rows = []
    for m in table.methods:
        point, interval = all_four(table.scores[m]), stratified_interval(table.scores[m], all_four)
        rows += [Aggregate(m, name, float(point[k]), float(interval[0, k]), float(interval[1, k]),
                           *table.scores[m].shape) for k, name in enumerate(METRICS)]
    return rows


def stratified_interval(scores: np.ndarray, func) -> np.ndarray:
    """[2, ...]: the percentile interval of func(scores) under rliable's stratified bootstrap of
    the runs within each task, `RESAMPLES` resamples. rliable draws the resampled indices from
    numpy's global generator (its `random_state` argument does not reach them), so the global
    generator is seeded with `SEED` for the bootstrap and its state put back afterwards."""
    import warnings

    from rliable import library as rly

    state = np.random.get_state()
    try:
        np.random.seed(SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # arch on rliable's random_state keyword
            bootstrap = rly.StratifiedBootstrap(scores)
            return bootstrap.conf_int(func, reps=RESAMPLES, size=LEVEL, method="percentile")
    finally:
        np.random.set_state(state)


def profiles(table: ScoreTable, taus: np.ndarray) -> dict[str, np.ndarray]:
    """{method: [3, len(taus)]}: the fraction of runs (over all tasks) whose score is above tau,
    and its stratified bootstrap interval (rliable's score distribution)."""
    from rliable import library as rly

    def profile(scores):
        return rly.score_distributions(scores, taus)

    return {m: np.concatenate([profile(table.scores[m])[None], stratified_interval(table.scores[m], profile)])
            for m in table.methods}


def taus_for(table: ScoreTable) -> np.ndarray:
    """101 thresholds from min(0, lowest score) to max(1, highest score)."""
    every = np.concatenate([s.ravel() for s in table.scores.values()])
    return np.linspace(min(0.0, float(every.min())), max(1.0, float(every.max())), 101)


def aggregates_csv(rows: list[Aggregate]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "metric", "value", "ci_low", "ci_high", "runs", "tasks"])
    for r in rows:
        writer.writerow([r.method, r.metric, number(r.value), number(r.low), number(r.high), r.runs, r.tasks])
    return out.getvalue()


def profiles_csv(taus: np.ndarray, curves: dict[str, np.ndarray]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "tau", "fraction_above", "ci_low", "ci_high"])
    for method, curve in curves.items():
        for tau, (value, low, high) in zip(taus, curve.T):
            writer.writerow([method, number(tau), number(value), number(low), number(high)])
    return out.getvalue()


def aggregates_table(rows: list[Aggregate]) -> str:
    from rlcli.commands.common import aligned

    by_method: dict[str, dict[str, Aggregate]] = {}
    for r in rows:
        by_method.setdefault(r.method, {})[r.metric] = r
    header = ["method", "runs x tasks", "IQM [95% CI]", "median", "mean", "optimality gap"]
    body = [[m, f"{a['iqm'].runs} x {a['iqm'].tasks}", f"{a['iqm'].value:.3f} [{a['iqm'].low:.3f}, {a['iqm'].high:.3f}]",
             *(f"{a[k].value:.3f}" for k in ("median", "mean", "optimality_gap"))] for m, a in by_method.items()]
    return aligned(header, body)


def plot_profiles(taus: np.ndarray, curves: dict[str, np.ndarray], tasks: list[str], path: Path) -> None:
    """The performance profiles with their shaded intervals, one line per method."""
    import matplotlib.pyplot as plt

    from rlcli.curves import save_figure

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, (method, (value, low, high)) in enumerate(curves.items()):
        ax.plot(taus, value, color=f"C{i % 10}", lw=1.8, label=method)
        ax.fill_between(taus, low, high, color=f"C{i % 10}", alpha=0.2, lw=0)
    ax.set_xlabel("normalised score τ ((R − random) / (reference − random))")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_title(f"performance profiles, 95% stratified bootstrap CIs; {', '.join(tasks)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
