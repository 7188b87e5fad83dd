"""`rlcli diagnose`: per-estimator gradient variance and accuracy for one policy.

The estimates of a run are checked against the policy gradient written out here from the
rollouts diagnose collected (the data captured from `diagnose.estimates`), the table's numbers
against NumPy from those estimates, and the reference's variance against the row of the same
estimator within its sampling error. (diagnose runs only on envs of the jax backend, so there
is no tabular MDP with an exact gradient here: tests/test_exact_gradient.py holds the
estimators to that.)"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import run_cli
from rlcli import networks
from rlcli.commands import diagnose

# enough batches and reference chunks that the variance comparison resolves a factor 2
BATCHES, BATCH_EPISODES, REFERENCE_EPISODES = 256, 32, 8192
TINY = ["env=CartPole-v1", "network.hidden_sizes=[16]", f"batches={BATCHES}", f"batch_episodes={BATCH_EPISODES}",
        f"reference_episodes={REFERENCE_EPISODES}"]
Z = 4.0  # standard errors


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """diagnose.run and write on the initial CartPole policy, with every call of
    `diagnose.estimates` (rows, then the reference) recorded: its arguments and its output."""
    out = tmp_path_factory.mktemp("diagnose")
    opts = diagnose.parse([*TINY, f"out={out}"])
    calls = []
    original = diagnose.estimates

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, np.asarray(result[0], np.float64)))
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diagnose, "estimates", recording)
        result = diagnose.run(opts)
    diagnose.write(result, opts.out)
    assert len(calls) == 2  # the rows' batches, then the reference's chunks
    return result, out, calls


def trace_cov(x):
    return float(np.asarray(x, np.float64).var(axis=0, ddof=1).sum())


def trace_cov_se(x):
    """Standard error of trace_cov(x) from the samples: trace_cov is the mean of
    ||x_i - mean||^2 (times n / (n - 1)), so its standard error is about their std / sqrt(n)."""
    x = np.asarray(x, np.float64)
    squared = np.sum((x - x.mean(axis=0)) ** 2, axis=1)
    return float(squared.std(ddof=1) / np.sqrt(len(x)) * len(x) / (len(x) - 1))


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_rows_are_the_statistics_of_the_estimates(initial):
    """Every row's variance (trace of the covariance, ddof 1), cosines and relative errors,
    recomputed in NumPy from the per-batch estimates and the reference chunks run produced."""
    result, _, calls = initial
    (args, _, batch_est), (_, _, ref_chunks) = calls
    names = args[7]
    assert list(names) == list(diagnose.estimator_names(1.0, has_q=False))
    assert batch_est.shape[:2] == (BATCHES, len(names)) and ref_chunks.shape[0] == REFERENCE_EPISODES // BATCH_EPISODES
    ref = ref_chunks[:, 0].mean(axis=0)
    assert result["reference_norm"] == pytest.approx(np.linalg.norm(ref), rel=1e-6)
    rows = result["rows"]
    assert [r["estimator"] for r in rows] == [*names, f"reference ({diagnose.REFERENCE})"]
    for row, est in zip(rows, [*np.moveaxis(batch_est, 1, 0), ref_chunks[:, 0]]):
        mean = est.mean(axis=0)
        expected = {"variance": trace_cov(est), "cos_mean": cos(mean, ref),
                    "rel_err_mean": np.linalg.norm(mean - ref) / np.linalg.norm(ref),
                    "cos_single": np.mean([cos(e, ref) for e in est]),
                    "rel_err_single": np.mean([np.linalg.norm(e - ref) / np.linalg.norm(ref) for e in est])}
        for field, value in expected.items():
            assert row[field] == pytest.approx(value, rel=1e-6, abs=1e-9), (row["estimator"], field)
    assert result["reference_rel_se"] == pytest.approx(
        np.sqrt(trace_cov(ref_chunks[:, 0]) / ref_chunks.shape[0]) / np.linalg.norm(ref), rel=1e-6)


def test_estimates_are_the_policy_gradient_written_out(initial):
    """Per batch of N episodes the estimate is (1/N) sum_i sum_t grad log pi(a_t|s_t) Phi_t (000
    eq. 3.1.10 and 4.2.2, gamma = 1) with Phi written here in NumPy from the recorded rollouts:
    the episode's return R(tau) (total_return), the reward-to-go G_t = sum_{t'>=t} r_t'
    (reward_to_go), each minus V(s_t) for the value baseline; log pi the log-softmax of the
    policy's logits. The reference's chunks are reward_to_go/value on its own episodes."""
    _, _, calls = initial
    (args, _, batch_est), (ref_args, _, ref_chunks) = calls
    cfg, spec, params, data = args[:4]
    names = list(args[7])
    network = networks.make(cfg.network, spec)
    flat, unravel = ravel_pytree(params)

    @jax.jit
    @jax.vmap
    def gradient(o, a, p, m):  # one batch [T, N]: (1/N) sum_i sum_t m grad log pi(a|s) Phi
        def surrogate(f):
            log_p = jax.nn.log_softmax(network.apply(unravel(f), o)[0], axis=-1)
            log_prob = jnp.take_along_axis(log_p, a[..., None], axis=-1)[..., 0]
            return jnp.sum(m * log_prob * p) / BATCH_EPISODES
        return jax.grad(surrogate)(flat)

    def by_hand(data, batches, name):
        obs, action, reward, *_, mask = (np.asarray(x) for x in data)
        mask = mask.astype(np.float64)
        r = reward * mask
        g = np.cumsum(r[::-1], axis=0)[::-1]  # reward-to-go within each column (episode)
        phi = g if name.startswith("reward_to_go") else np.broadcast_to(g[0], g.shape)
        if name.endswith("/value"):
            phi = phi - np.asarray(network.apply(params, obs)[1], np.float64)
        split = lambda x: jnp.moveaxis(jnp.reshape(x, (x.shape[0], batches, BATCH_EPISODES) + x.shape[2:]), 1, 0)  # noqa: E731
        return np.asarray(gradient(split(obs), split(action), split(jnp.float32(phi * mask)), split(jnp.float32(mask))))

    scale = np.abs(batch_est).max()
    for name in ("total_return/none", "reward_to_go/none", "total_return/value", "reward_to_go/value"):
        np.testing.assert_allclose(batch_est[:, names.index(name)], by_hand(data, BATCHES, name), rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=name)
    ref_data = ref_args[3]
    np.testing.assert_allclose(ref_chunks[:, 0], by_hand(ref_data, ref_chunks.shape[0], "reward_to_go/value"),
                               rtol=1e-4, atol=1e-5 * np.abs(ref_chunks).max())
    assert not np.allclose(np.asarray(data[0])[:, :8], np.asarray(ref_data[0])[:, :8])  # other episodes


def test_summarize_by_hand():
    """Two batches (1, 0) and (0, 1) against the reference (1, 1): variance 1/2 + 1/2 = 1; mean
    (1/2, 1/2): cosine 1, relative error |(-1/2, -1/2)| / sqrt 2 = 1/2; singles: cosine 1/sqrt 2,
    relative error |(0, -1)| / sqrt 2 = 1/sqrt 2."""
    est = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # [batches, estimators, P]
    ref = np.array([1.0, 1.0])
    row, reference = diagnose.summarize(["x"], est, ref, np.array([[1.0, 1.0], [1.0, 1.0]]))
    assert row == pytest.approx({"estimator": "x", "variance": 1.0, "cos_mean": 1.0, "rel_err_mean": 0.5,
                                 "cos_single": 2 ** -0.5, "rel_err_single": 2 ** -0.5})
    assert reference["variance"] == 0.0 and reference["rel_err_mean"] == 0.0


def test_files_hold_the_rows(initial):
    result, out, _ = initial
    saved = json.loads((out / "diagnose.json").read_text())
    assert saved["rows"] == result["rows"]
    with open(out / "diagnose.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["estimator"] for r in table] == [r["estimator"] for r in result["rows"]]
    for got, want in zip(table, result["rows"]):
        assert float(got["variance"]) == pytest.approx(want["variance"]) and float(got["cos_mean"]) == pytest.approx(
            want["cos_mean"])
    assert (out / "diagnose.png").stat().st_size > 5000


def test_reference_variance_is_per_chunk_of_a_batch(initial):
    """With gamma = 1 the reference (reward_to_go/value/option2, on chunks of batch_episodes
    episodes) is the reward_to_go/value estimator on other episodes of the same policy: its
    variance per chunk equals that row's per batch within Z standard errors (each from its
    samples, `trace_cov_se`); a factor 2 either way is outside."""
    _, _, calls = initial
    (args, _, batch_est), (_, _, ref_chunks) = calls
    row = batch_est[:, list(args[7]).index("reward_to_go/value")]
    ref = ref_chunks[:, 0]
    v_row, v_ref, se_row, se_ref = trace_cov(row), trace_cov(ref), trace_cov_se(row), trace_cov_se(ref)
    z = (v_ref - v_row) / np.hypot(se_row, se_ref)
    print(f"variance per batch {v_row:.4g} +- {se_row:.2g}, reference per chunk {v_ref:.4g} +- {se_ref:.2g}, z {z:.2f}")
    assert abs(z) < Z
    for factor in (2.0, 0.5):  # the bound resolves a factor 2
        assert abs(v_ref - factor * v_row) / np.hypot(factor * se_row, se_ref) > Z, factor


def test_variance_ordering_predicted_by_the_seeds(initial):
    """CartPole-v1, the initial (near-uniform) policy, reward +1 per step: causality (000 eq.
    3.1.10) and a baseline (3.1.11, 3.1.17) lower the variance of the total-return estimate."""
    result, *_ = initial
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
    """Every unbiased row's mean over the B batches differs from the reference by no more than
    its noise: E||mean - ref||^2 = tr Cov_row / B + tr Cov_ref / C (C reference chunks,
    independent episodes), so
    the ratio is about 1; 3 would take a bias of about the noise's size. The critic-based rows
    (td, nstep, gae) and the plain mean baseline's (1 - 1/N) factor are not held to it."""
    result, *_ = initial
    rows = {r["estimator"].split(" ")[0]: r for r in result["rows"]}
    noise_ref = rows["reference"]["variance"] / (REFERENCE_EPISODES // BATCH_EPISODES)
    for name in ("total_return/none", "total_return/leave_one_out", "total_return/value", "total_return/optimal",
                 "reward_to_go/none", "reward_to_go/leave_one_out", "reward_to_go/value"):
        squared = (rows[name]["rel_err_mean"] * result["reference_norm"]) ** 2
        ratio = squared / (rows[name]["variance"] / BATCHES + noise_ref)
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
    # fewer than two reference chunks of a batch's size: one line, not a traceback (0 chunks) or a
    # nan variance (1 chunk)
    for reference in (2, 7):
        assert diagnose.main(["env=CartPole-v1", "batch_episodes=4", f"reference_episodes={reference}"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"rlcli diagnose: error: reference_episodes={reference} is less than two chunks of batch_episodes=4 "
            "(allowed: reference_episodes >= 2 x batch_episodes = 8)")
    assert diagnose.main(["run=/nonexistent/run"]) == 2
    assert "run=/nonexistent/run does not exist" in capsys.readouterr().err


@pytest.mark.extended
def test_diagnose_a_run_checkpoint(tmp_path, capsys, cli):
    """run=<dir> restores the run's checkpoint (here reinforce with the Q control variate,
    whose parameters also hold the Q critic) and writes into <run>/diagnose."""
    run_dir = tmp_path / "run"
    result = cli(["train", "algo=reinforce", "env.backend=jax", "num_envs=2", "total_steps=2000",
                      "eval_episodes=1", "network.hidden_sizes=[16]", "estimator=reward_to_go",
                      "estimator.baseline=q_control_variate", "logger=quiet", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr
    code = diagnose.main([f"run={run_dir}", "batches=4", "batch_episodes=4", "reference_episodes=16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"policy {run_dir}" in out and "total_return/optimal" in out and "reward_to_go/q_control_variate" in out
    assert json.loads((run_dir / "diagnose" / "diagnose.json").read_text())["algo"] == "reinforce"


@pytest.mark.extended
def test_diagnose_command_line(tmp_path):
    """`rlcli diagnose` as a user runs it, with the smallest budget it takes (2 batches of 2
    episodes, 4 reference episodes, a 4-unit network): exit code 0, the table's header and one
    row per estimator and the reference, with finite numbers in every column, and the files."""
    out = tmp_path / "d"
    result = run_cli(["diagnose", "env=CartPole-v1", "network.hidden_sizes=[4]", "batches=2", "batch_episodes=2",
                      "reference_episodes=4", f"out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("rlcli diagnose: a2c on CartPole-v1, policy initial (seed 0); 2 batches x 2 episodes")
    header = lines.index(next(line for line in lines if line.startswith("estimator")))
    assert lines[header].split() == list(diagnose.FIELDS)
    names = [*diagnose.estimator_names(1.0, has_q=False), "reference"]
    table = lines[header + 1: header + 1 + len(names)]
    assert [line.split()[0] for line in table] == names
    for line in table:
        numbers = line.split()[-5:]
        assert len(numbers) == 5 and all(np.isfinite(float(x)) for x in numbers), line
    assert lines[header + 1 + len(names)] == f"wrote {out / 'diagnose.csv'}, diagnose.json, diagnose.png"
    assert {p.name for p in out.iterdir()} == {"diagnose.csv", "diagnose.json", "diagnose.png"}
