"""`rlcli diagnose`: per-estimator gradient variance and accuracy for one policy."""

import csv
import json

import numpy as np
import pytest

from conftest import run_cli
from rlcli.commands import diagnose

TINY = ["env=CartPole-v1", "network.hidden_sizes=[16]", "batches=32", "batch_episodes=8",
        "reference_episodes=512"]


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose")
    opts = diagnose.parse([*TINY, f"out={out}"])
    result = diagnose.run(opts)
    diagnose.write(result, opts.out)
    return result, out


def test_rows_consistent(initial):
    result, out = initial
    rows = {r["estimator"].split(" ")[0]: r for r in result["rows"]}
    assert list(rows) == [*diagnose.estimator_names(1.0, has_q=False), "reference"]
    assert "td" in rows and "nstep" in rows and "total_return/leave_one_out" in rows
    ref = rows["reference"]
    assert ref["cos_mean"] == pytest.approx(1.0, abs=1e-9) and ref["rel_err_mean"] == pytest.approx(0.0, abs=1e-9)
    for name, r in rows.items():
        assert r["variance"] > 0 and -1.0 <= r["cos_single"] <= 1.0 and -1.0 <= r["cos_mean"] <= 1.0
        # the mean over 32 batches is closer to the reference than a single batch
        assert r["cos_mean"] >= r["cos_single"] and r["rel_err_mean"] <= r["rel_err_single"], name
    # the reference (reward_to_go minus the critic) on 512 episodes in chunks of 8 has the variance
    # per chunk of that estimator on the 32 batches of 8, up to sampling noise
    assert 0.5 < ref["variance"] / rows["reward_to_go/value"]["variance"] < 2.0
    assert result["reference_rel_se"] == pytest.approx(
        np.sqrt(ref["variance"] / (512 // 8)) / result["reference_norm"], rel=1e-6)
    # the files: csv rows = json rows, a png
    saved = json.loads((out / "diagnose.json").read_text())
    assert saved["rows"] == result["rows"]
    with open(out / "diagnose.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["estimator"] for r in table] == [r["estimator"] for r in result["rows"]]
    assert float(table[0]["variance"]) == pytest.approx(result["rows"][0]["variance"])
    assert (out / "diagnose.png").stat().st_size > 5000


def test_variance_ordering_predicted_by_the_seeds(initial):
    """CartPole-v1, the initial (near-uniform) policy, reward +1 per step: causality (000 eq.
    3.1.10) and a baseline (3.1.11, 3.1.17) lower the variance of the total-return estimate."""
    result, _ = initial
    var = {r["estimator"]: r["variance"] for r in result["rows"]}
    print(var)
    assert var["reward_to_go/none"] < 0.5 * var["total_return/none"]
    assert var["total_return/mean"] < var["total_return/none"]
    assert var["total_return/optimal"] < var["total_return/none"]
    # every Monte-Carlo estimate points the reference's way on average (td, nstep and gae lean on
    # the initial, untrained critic)
    for r in result["rows"]:
        if r["estimator"] not in diagnose.CRITIC_ESTIMATORS:
            assert r["cos_mean"] > 0.5, r


def test_unbiased_rows_agree_with_the_reference(initial):
    """Every unbiased row's mean over the 32 batches differs from the reference by no more than
    its noise: E||mean - ref||^2 = tr Cov_row / 32 + tr Cov_ref / 64 (independent episodes), so
    the ratio is about 1; 3 would take a bias of about the noise's size. The critic-based rows
    (td, nstep, gae) and the plain mean baseline's (1 - 1/N) factor are not held to it."""
    result, _ = initial
    rows = {r["estimator"].split(" ")[0]: r for r in result["rows"]}
    noise_ref = rows["reference"]["variance"] / (512 // 8)
    for name in ("total_return/none", "total_return/leave_one_out", "total_return/value", "total_return/optimal",
                 "reward_to_go/none", "reward_to_go/leave_one_out", "reward_to_go/value"):
        squared = (rows[name]["rel_err_mean"] * result["reference_norm"]) ** 2
        ratio = squared / (rows[name]["variance"] / 32 + noise_ref)
        assert ratio < 3.0, (name, ratio)


def test_option2_rows_with_gamma_below_one():
    names = diagnose.estimator_names(0.9, has_q=True)
    assert "reward_to_go/value/option2" in names and "total_return/none/option2" in names
    assert "reward_to_go/q_control_variate" in names and "total_return/optimal/option2" not in names
    assert "reward_to_go/value/option2" not in diagnose.estimator_names(1.0, has_q=False)


def test_bad_input_one_line(capsys):
    assert diagnose.main(["env=CartPole-v1", "batches=1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "rlcli diagnose: error: batches=1 is not allowed (allowed: an integer >= 2)")
    assert diagnose.main(["algo=sac", "env=Pendulum-v1"]) == 2
    assert "algo=sac is not supported by rlcli diagnose" in capsys.readouterr().err
    assert diagnose.main(["run=/nonexistent/run"]) == 2
    assert "run=/nonexistent/run does not exist" in capsys.readouterr().err


def test_diagnose_a_run_checkpoint(tmp_path, capsys):
    """run=<dir> restores the run's checkpoint (here reinforce with the Q control variate,
    whose parameters also hold the Q critic) and writes into <run>/diagnose."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "algo=reinforce", "env.backend=jax", "num_envs=2", "total_steps=2000",
                      "eval_episodes=1", "network.hidden_sizes=[16]", "estimator=reward_to_go",
                      "estimator.baseline=q_control_variate", "logger=quiet", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr
    code = diagnose.main([f"run={run_dir}", "batches=4", "batch_episodes=4", "reference_episodes=16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"policy {run_dir}" in out and "total_return/optimal" in out and "reward_to_go/q_control_variate" in out
    assert json.loads((run_dir / "diagnose" / "diagnose.json").read_text())["algo"] == "reinforce"
