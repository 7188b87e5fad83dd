"""`rlcli plot`: learning curves across seeds with bootstrap bands, on run directories written
by hand (numbers chosen here) and on one real tiny run."""

import csv
import json

import numpy as np
import pytest

from rlcli.commands.plot import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(path, curves, final=None, algo="a2c", estimator="nstep", lr=0.0007, env="CartPole-v1"):
    """A run directory: .hydra/config.yaml, one metrics.jsonl record per (seed index, x) of
    `curves` ({seed_index: [(env_steps, episode return), ...]}), summary.json with `final`."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(
        f"seed: 0\nalgo:\n  name: {algo}\n  learning_rate: {lr}\nenv:\n  id: {env}\n"
        f"estimator:\n  name: {estimator}\n  'n': null\n")
    lines = [json.dumps({"seed_index": i, "seed": i, "update": k, "env_steps": x, "wall_time": x / 100,
                         "episode/count": 1, "episode/return": y})
             for i, points in curves.items() for k, (x, y) in enumerate(points)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if final is not None:
        (path / "summary.json").write_text(json.dumps({"final_eval": {"return_mean": final}}))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rows_of(rows, group):
    return [{k: float(v) for k, v in r.items() if k != "group"} for r in rows if r["group"] == group]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (600, 960)  # 8 x 5 in at 120 dpi


A2C = "algo=a2c env=CartPole-v1 estimator=nstep"


def test_multirun_jobs_and_vmapped_seeds_are_seeds_with_mean_and_bootstrap_band(tmp_path, capsys):
    """Two jobs of a multirun (one level down: <date>/<time>/<job>), two vmapped seeds each:
    four seeds at every env step. Means by hand; the band against scipy's percentile bootstrap;
    at x=300 the four seeds agree, so the band has zero width."""
    from scipy.stats import bootstrap

    sweep = tmp_path / "multirun" / "2026-01-01"
    make_run(sweep / "10-00-00" / "0", {0: [(100, 10.0), (200, 20.0), (300, 7.0)],
                                        1: [(100, 14.0), (200, 26.0), (300, 7.0)]}, final=[100.0, 200.0])
    make_run(sweep / "10-00-00" / "1", {0: [(100, 20.0), (200, 50.0), (300, 7.0)],
                                        1: [(100, 31.0), (200, 8.0), (300, 7.0)]}, final=[300.0, 500.0])
    assert main([str(sweep)]) == 0
    rows = rows_of(read_csv(sweep / "curves.csv"), A2C)
    assert [r["x"] for r in rows] == [100, 200, 300] and {r["n_seeds"] for r in rows} == {4}
    assert [r["mean"] for r in rows] == pytest.approx([18.75, 26.0, 7.0], abs=1e-12)
    for r, values in zip(rows[:2], ([10.0, 14.0, 20.0, 31.0], [20.0, 26.0, 50.0, 8.0])):
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        ref = bootstrap((np.array(values),), np.mean, method="percentile", n_resamples=20_000,
                        random_state=np.random.default_rng(1)).confidence_interval
        tol = 0.05 * (max(values) - min(values))
        assert r["ci_low"] == pytest.approx(ref.low, abs=tol) and r["ci_high"] == pytest.approx(ref.high, abs=tol)
    assert rows[2]["ci_low"] == rows[2]["ci_high"] == 7.0
    # final returns: mean of the four seeds' summary.json values, a band around it
    (final,) = read_csv(sweep / "final_returns.csv")
    assert final["group"] == A2C and int(final["n_seeds"]) == 4 and float(final["mean"]) == 275.0
    assert 100.0 <= float(final["ci_low"]) < 275.0 < float(final["ci_high"]) <= 500.0
    out = capsys.readouterr().out
    assert f"{A2C}  4      275.00" in out
    assert_png(sweep / "curves.png")
    # the same input gives the same numbers (fixed bootstrap seed)
    first = (sweep / "curves.csv").read_text()
    assert main([str(sweep)]) == 0 and (sweep / "curves.csv").read_text() == first


def test_group_by_splits_groups(tmp_path):
    """Four runs, one seed each: by default one group per (algo, env, estimator); group_by=
    algo pools the estimators; a dotted key groups by its value; group_by= pools everything.
    A group of one seed has a band of zero width."""
    runs = [("a2c", "gae", 0.001, 1.0), ("a2c", "nstep", 0.001, 3.0),
            ("ppo", "gae", 0.0003, 10.0), ("ppo", "nstep", 0.001, 30.0)]
    sweep = tmp_path / "sweep"
    for job, (algo, est, lr, y) in enumerate(runs):
        make_run(sweep / str(job), {0: [(100, y), (200, 2 * y)]}, final=[y], algo=algo, estimator=est, lr=lr)

    def means(group_by):
        out = tmp_path / f"out-{group_by}"
        assert main([str(sweep), f"group_by={group_by}", f"out={out}", "aggregates=false"]) == 0
        rows = read_csv(out / "curves.csv")
        finals = {r["group"]: (int(r["n_seeds"]), float(r["mean"])) for r in read_csv(out / "final_returns.csv")}
        curves = {g: [(r["x"], r["mean"], r["n_seeds"]) for r in rows_of(rows, g)] for g in {r["group"] for r in rows}}
        return curves, finals

    curves, finals = means("algo,env,estimator")
    assert len(curves) == 4 and curves["algo=ppo env=CartPole-v1 estimator=gae"] == [(100, 10, 1), (200, 20, 1)]
    one = rows_of(read_csv(tmp_path / "out-algo,env,estimator" / "curves.csv"),
                  "algo=ppo env=CartPole-v1 estimator=gae")
    assert all(r["ci_low"] == r["mean"] == r["ci_high"] for r in one)
    curves, finals = means("algo")
    assert curves == {"algo=a2c": [(100, 2, 2), (200, 4, 2)], "algo=ppo": [(100, 20, 2), (200, 40, 2)]}
    assert finals == {"algo=a2c": (2, 2.0), "algo=ppo": (2, 20.0)}
    curves, finals = means("algo.learning_rate")
    assert curves == {"algo.learning_rate=0.001": [(100, 34 / 3, 3), (200, 68 / 3, 3)],
                      "algo.learning_rate=0.0003": [(100, 10, 1), (200, 20, 1)]}
    curves, finals = means("")
    assert curves == {"all runs": [(100, 11, 4), (200, 22, 4)]} and finals == {"all runs": (4, 11.0)}


def test_groups_are_ordered_by_value(tmp_path, capsys):
    """Learning rates come out 3e-05 < 0.0001 < 0.0003 < 0.001 < 0.01 in the table, the CSVs and
    the legend, not in text order ('0.0001' < '0.0003' < '0.001' < '0.01' < '3e-05')."""
    rates = [0.001, 3e-05, 0.01, 0.0003, 0.0001]
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(rates):
        make_run(sweep / str(job), {0: [(100, job), (200, job)]}, final=[float(job)], lr=lr)
    out = tmp_path / "out"
    assert main([str(sweep), "group_by=algo.learning_rate", f"out={out}", "aggregates=false"]) == 0
    expected = [f"algo.learning_rate={lr}" for lr in ("3e-05", "0.0001", "0.0003", "0.001", "0.01")]
    assert [r["group"] for r in read_csv(out / "final_returns.csv")] == expected
    assert list(dict.fromkeys(r["group"] for r in read_csv(out / "curves.csv"))) == expected
    table = capsys.readouterr().out
    assert [table.index(g + " ") for g in expected] == sorted(table.index(g + " ") for g in expected)


def test_different_log_steps_are_interpolated_within_each_range(tmp_path):
    """Seed 0 logs at 0, 10, 20, seed 1 at 5, 15: the grid is the union 0, 5, 10, 15, 20 and each
    seed counts only inside its own range. x=wall_time (here env_steps / 100) interpolates onto
    100 evenly spaced points."""
    run = make_run(tmp_path / "run", {0: [(0, 0.0), (10, 10.0), (20, 40.0)], 1: [(5, 100.0), (15, 200.0)]})
    assert main([str(run)]) == 0
    rows = rows_of(read_csv(run / "plots" / "curves.csv"), A2C)
    assert [(r["x"], r["mean"], r["n_seeds"]) for r in rows] == [
        (0, 0.0, 1), (5, (5.0 + 100.0) / 2, 2), (10, (10.0 + 150.0) / 2, 2), (15, (25.0 + 200.0) / 2, 2), (20, 40.0, 1)]
    assert main([str(run), "x=wall_time", f"out={tmp_path / 'wall'}"]) == 0
    rows = rows_of(read_csv(tmp_path / "wall" / "curves.csv"), A2C)
    xs = np.linspace(0.0, 0.2, 100)
    inside = (xs >= 0.05) & (xs <= 0.15)
    seed0, seed1 = np.interp(xs, [0, 0.1, 0.2], [0, 10, 40]), np.interp(xs, [0.05, 0.15], [100, 200])
    expected = np.where(inside, (seed0 + seed1) / 2, seed0)
    assert np.allclose([r["x"] for r in rows], xs) and np.allclose([r["mean"] for r in rows], expected)
    assert [r["n_seeds"] for r in rows] == list(np.where(inside, 2, 1))


@pytest.mark.parametrize("case", ["missing", "empty", "x", "group_by", "metric", "option"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    run = make_run(tmp_path / "run", {0: [(100, 1.0)]}, final=[1.0])
    (tmp_path / "empty").mkdir()
    args = {"missing": [str(tmp_path / "nowhere")], "empty": [str(tmp_path / "empty")],
            "x": [str(run), "x=updates"], "group_by": [str(run), "group_by=algo,algo.learning_rat"],
            "metric": [str(run), "metric=eval/return_mean"], "option": [str(run), "colour=red"]}[case]
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlcli plot: error: ") and "allowed: " in err
    assert {"x": "x=updates is not allowed (allowed: one of env_steps, wall_time)",
            "group_by": "group_by=algo.learning_rat is not a config key of any run (did you mean algo.learning_rate?",
            "missing": "nowhere does not exist", "empty": "holds no run",
            "metric": "metric=eval/return_mean has no values", "option": "colour=red is not an argument of rlcli plot"}[case] in err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "usage: rlcli plot" in capsys.readouterr().out


def test_real_run_vmapped_seeds(tmp_path, cli, shared_run):
    """A real 2-seed run through `rlcli train` (the session's shared run): the curves' means are
    the per-step means of metrics.jsonl's episode/return, the final table that of summary.json's
    final_eval."""
    from rlcli.logger import read_metrics

    run, plots = shared_run, tmp_path / "plots"
    assert (run / "curve.png").read_bytes()[:8] == PNG_SIGNATURE  # train's own plot
    plotted = cli(["plot", str(run), f"out={plots}"], tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    rows = rows_of(read_csv(plots / "curves.csv"), A2C)
    records = read_metrics(run)
    steps = sorted({r["env_steps"] for r in records})
    assert [r["x"] for r in rows] == steps and {r["n_seeds"] for r in rows} == {2}
    for row, x in zip(rows, steps):
        assert row["mean"] == pytest.approx(np.mean([r["episode/return"] for r in records if r["env_steps"] == x]))
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    (final,) = read_csv(plots / "final_returns.csv")
    summary = json.loads((run / "summary.json").read_text())
    assert int(final["n_seeds"]) == 2 and float(final["mean"]) == pytest.approx(summary["final_eval_return_mean"])
    assert_png(plots / "curves.png")


def test_the_runs_curve_shows_seed_lines_or_beyond_ten_seeds_their_mean_and_range():
    from matplotlib import pyplot as plt

    from rlcli.curves import MAX_SEED_LINES, curve_figure

    def records(num_seeds):
        # seed i: training returns i and 2 i at steps 100, 200 (none finished at 100 for seed 0);
        # evaluation 10 i at step 200
        out = []
        for i in range(num_seeds):
            out.append({"seed_index": i, "seed": 5 + i, "env_steps": 100, "episode/return": None if i == 0 else float(i)})
            out.append({"seed_index": i, "seed": 5 + i, "env_steps": 200, "episode/return": 2.0 * i,
                        "eval/return_mean": 10.0 * i})
        return out

    fig = curve_figure(records(MAX_SEED_LINES), "t")
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines[::2][:2]] == ["seed 5", "seed 6"]
    assert len(lines) == 2 * MAX_SEED_LINES  # a line and eval markers per seed
    plt.close(fig)

    n = MAX_SEED_LINES + 2
    fig = curve_figure(records(n), "t")
    ax = fig.axes[0]
    train, evals = ax.get_lines()
    assert train.get_label() == f"training: mean of {n} seeds"
    # step 100: seeds 1..n-1 (seed 0 had no finished episode); step 200: seeds 0..n-1
    np.testing.assert_allclose(train.get_xdata(), [100, 200])
    np.testing.assert_allclose(train.get_ydata(), [n / 2, n - 1])
    np.testing.assert_allclose(evals.get_ydata(), [5.0 * (n - 1)])
    # the training range: 1 .. n - 1 at step 100, 0 .. 2 (n - 1) at step 200
    shaded = {tuple(v) for v in ax.collections[0].get_paths()[0].vertices}
    assert {(100.0, 1.0), (100.0, n - 1.0), (200.0, 0.0), (200.0, 2.0 * (n - 1))} <= shaded
    plt.close(fig)


# ---- normalised scores: IQM, optimality gap, performance profiles (rliable) -------------------

# final returns of 4 seeds per (method, env); anchors by hand: CartPole random 0, reference 100;
# Pendulum random -1000, reference 0
FINALS = {("a2c", "CartPole-v1"): [10.0, 90.0, 40.0, 120.0], ("a2c", "Pendulum-v1"): [-900.0, -500.0, -100.0, -300.0],
          ("ppo", "CartPole-v1"): [100.0, 95.0, 60.0, 20.0], ("ppo", "Pendulum-v1"): [-50.0, -150.0, -1000.0, -400.0]}
ANCHORS = {"CartPole-v1": (0.0, 100.0), "Pendulum-v1": (-1000.0, 0.0)}


def scored_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for job, ((algo, env), finals) in enumerate(FINALS.items()):
        make_run(sweep / str(job), {i: [(100, 1.0)] for i in range(4)}, final=finals, algo=algo, env=env)
    anchors = tmp_path / "anchors.yaml"
    anchors.write_text("".join(f"{env}: {{random: {r}, reference: {ref}}}\n" for env, (r, ref) in ANCHORS.items()))
    return sweep, anchors


def normalised(algo):
    return np.array([[(FINALS[(algo, env)][i] - ANCHORS[env][0]) / (ANCHORS[env][1] - ANCHORS[env][0])
                      for env in ANCHORS] for i in range(4)])


def test_iqm_median_mean_and_optimality_gap_match_numpy(tmp_path, capsys):
    sweep, anchors = scored_sweep(tmp_path)
    out = tmp_path / "out"
    assert main([str(sweep), f"normalize_by={anchors}", f"out={out}"]) == 0
    rows = {(r["method"], r["metric"]): r for r in read_csv(out / "aggregates.csv")}
    for algo in ("a2c", "ppo"):
        # 8 scores: the IQM is the mean of the middle 4; the median is that of the tasks' means
        scores = np.sort(normalised(algo).ravel())
        method = f"algo={algo} estimator=nstep"
        expected = {"iqm": scores[2:6].mean(), "median": np.median(normalised(algo).mean(axis=0)), "mean": scores.mean(),
                    "optimality_gap": np.mean(1.0 - np.minimum(scores, 1.0))}
        for metric, value in expected.items():
            row = rows[(method, metric)]
            assert float(row["value"]) == pytest.approx(value, abs=1e-12)
            assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
            assert (row["runs"], row["tasks"]) == ("4", "2")
        assert float(rows[(method, "iqm")]["ci_low"]) < float(rows[(method, "iqm")]["ci_high"])
    # the profile at tau: the fraction of the 8 runs x tasks scoring above it
    profile = [r for r in read_csv(out / "profiles.csv") if r["method"] == "algo=ppo estimator=nstep"]
    for r in profile[::10]:
        assert float(r["fraction_above"]) == pytest.approx(np.mean(normalised("ppo") > float(r["tau"])), abs=1e-12)
    assert_png(out / "profiles.png")
    printed = capsys.readouterr().out
    assert "IQM [95% CI]" in printed and "algo=a2c estimator=nstep  4 x 2" in printed


def test_the_intervals_are_reproducible(tmp_path):
    sweep, anchors = scored_sweep(tmp_path)
    for out in ("one", "two"):
        assert main([str(sweep), f"normalize_by={anchors}", f"out={tmp_path / out}"]) == 0
    for name in ("aggregates.csv", "profiles.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_default_anchors_score_the_reference_one_and_random_zero(tmp_path):
    """conf/scores.yaml: CartPole-v1's reference 500 scores 1, its random return 23.68 scores 0."""
    make_run(tmp_path / "run", {i: [(100, 1.0)] for i in range(4)}, final=[500.0, 500.0, 23.68, 23.68])
    assert main([str(tmp_path / "run"), f"out={tmp_path / 'out'}"]) == 0
    rows = {r["metric"]: float(r["value"]) for r in read_csv(tmp_path / "out" / "aggregates.csv")}
    assert rows["mean"] == pytest.approx(0.5) and rows["iqm"] == pytest.approx(0.5)
    assert rows["optimality_gap"] == pytest.approx(0.5)


def test_aggregates_need_anchors_for_every_env(tmp_path, capsys):
    make_run(tmp_path / "run", {0: [(100, 1.0)]}, final=[1.0], env="LunarLander-v3")
    assert main([str(tmp_path / "run"), f"out={tmp_path / 'auto'}"]) == 0
    assert "note: no IQM or performance profiles: LunarLander-v3 has no random and reference return" in capsys.readouterr().out
    assert not (tmp_path / "auto" / "aggregates.csv").exists()
    assert main([str(tmp_path / "run"), "aggregates=true", f"out={tmp_path / 'true'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aggregates=true cannot be met: LunarLander-v3 has no random" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("LunarLander-v3: {random: 1.0}\n")
    assert main([str(tmp_path / "run"), f"normalize_by={bad}", f"out={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"normalize_by={bad}: LunarLander-v3=" in err and "reference != random" in err
    assert not (tmp_path / "true").exists() and not (tmp_path / "bad").exists()
