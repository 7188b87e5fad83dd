"""REINFORCE and the Monte-Carlo estimators (total_return, reward_to_go)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from conftest import compose, run_cli, train
from rlcli import config, estimators
from rlcli.algos import reinforce

# one segment: an episode terminated at t=1, one truncated at t=3, one cut by the segment's end
R = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
V = jnp.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
NV = jnp.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
TERM = jnp.array([0, 1, 0, 0, 0, 0], bool)
TRUNC = jnp.array([0, 0, 0, 1, 0, 0], bool)


def _phi(name, discounting, baseline):
    fn = estimators.make(name, 0.5, discounting=discounting, baseline=baseline)
    return [np.asarray(x) for x in fn(R, V, NV, TERM, TRUNC)]


@pytest.mark.parametrize("name,discounting,baseline,expected", [
    # G_t, gamma 0.5, no bootstrap: [1+.5*2, 2, 3+.5*4, 4, 5+.5*6, 6]
    ("reward_to_go", "option1", "none", [2, 2, 5, 4, 8, 6]),
    # x gamma^(t-t0): w = [1, .5, 1, .5, 1, .5]
    ("reward_to_go", "option2", "none", [2, 1, 5, 2, 8, 3]),
    ("reward_to_go", "option1", "mean", [2, 2, 5, 4, 8, 6]),  # the mean is the algorithm's
    # bootstrap at the truncation (4 + .5*40 = 24) and the segment end (6 + .5*60 = 36), not
    # at the termination: G = [2, 2, 15, 24, 23, 36], minus V
    ("reward_to_go", "option1", "value", [1.5, 1, 13.5, 22, 20.5, 33]),
    ("reward_to_go", "option2", "value", [1.5, 0.5, 13.5, 11, 20.5, 16.5]),
    ("total_return", "option1", "none", [3, 3, 7, 7, 11, 11]),  # undiscounted R(tau)
    ("total_return", "option2", "none", [2, 2, 5, 5, 8, 8]),  # sum gamma^(t-t0) r_t
    # R(tau) + V(s') (weight 1) where it bootstraps: [3, 3+4+40, 5+6+60] minus V
    ("total_return", "option1", "value", [2.5, 2, 45.5, 45, 68.5, 68]),
    # [2, 15, 23] minus gamma^(t-t0) V
    ("total_return", "option2", "value", [1.5, 1.5, 13.5, 14, 20.5, 21.5]),
])
def test_monte_carlo_hand_computed(name, discounting, baseline, expected):
    phi, targets = _phi(name, discounting, baseline)
    np.testing.assert_allclose(phi, expected, rtol=1e-6)
    bootstrapped = [2, 2, 15, 24, 23, 36] if baseline == "value" else [2, 2, 5, 4, 8, 6]
    np.testing.assert_allclose(targets, bootstrapped, rtol=1e-6)  # the critic's target G_t


def test_reward_to_go_matches_rlax_and_nstep():
    rng = np.random.default_rng(3)
    T, gamma = 40, 0.9
    r = rng.normal(size=T).astype(np.float32)
    v, nv = (rng.normal(size=T).astype(np.float32) for _ in range(2))
    term, trunc = rng.random(T) < 0.1, rng.random(T) < 0.05
    done = term | trunc
    phi, _ = estimators.reward_to_go(r, v, nv, term, trunc, gamma=gamma)
    reference = rlax.discounted_returns(r, gamma * (1.0 - done.astype(np.float32)), 0.0)
    np.testing.assert_allclose(phi, reference, rtol=1e-5, atol=1e-5)
    # with the value baseline it is the n-step return to the end of the segment (A3C)
    adv, targets = estimators.reward_to_go(r, v, nv, term, trunc, gamma=gamma, baseline="value")
    adv_n, targets_n = estimators.nstep(r, v, nv, term, trunc, gamma=gamma)
    np.testing.assert_allclose(adv, adv_n, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, targets_n, rtol=1e-5, atol=1e-5)


def test_reinforce_with_gae_lambda_1_is_reward_to_go_minus_value(tmp_path):
    """estimator=gae with lambda=1 is the Monte-Carlo return minus V (000 eq. 4.2.7), so one
    REINFORCE update with it gives the parameters of reward_to_go with the value baseline."""
    import jax

    from rlcli import runner

    def one_update(overrides):
        cfg = compose(["algo=reinforce", "env=CartPole-v1", "env.backend=jax", "num_envs=2",
                       "total_steps=1000", *overrides])
        parts = runner.setup(cfg)
        backend = runner.make_backend(cfg, parts)
        state, _ = backend.chunk(backend.init(), 1)
        return jax.tree.leaves(state.learner.params)

    for a, b in zip(one_update(["estimator=gae", "estimator.lambda=1.0"]),
                    one_update(["estimator=reward_to_go", "estimator.baseline=value"])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_mean_baseline_over_used_steps():
    phi = jnp.array([[2.0, 10.0], [4.0, 99.0]])
    mask = jnp.array([[1, 1], [1, 0]])
    b = (2 + 10 + 4) / 3
    np.testing.assert_allclose(estimators.subtract_mean(phi, mask), phi - b, rtol=1e-6)


def test_episode_mask_hand_computed():
    # column 0 starts fresh: episode t0-1 used, t2-4 cut by the segment's end; column 1 starts
    # mid-episode: its rest (t0) is dropped, t1-3 used, t4 dropped
    done = jnp.array([[0, 1], [1, 0], [0, 0], [0, 1], [0, 0]], bool)
    mask, fresh = reinforce.episode_mask(done, jnp.zeros_like(done), jnp.array([True, False]))
    np.testing.assert_array_equal(mask, [[1, 0], [1, 1], [0, 1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(fresh, [False, False])


def test_episode_mask_uses_exactly_the_whole_episodes_of_each_segment():
    """A stream of episodes cut into segments of T steps with `fresh` carried: the used steps
    are exactly those of the episodes lying wholly inside one segment (a Python reference)."""
    rng = np.random.default_rng(0)
    T, num_segments = 12, 30
    lengths = rng.integers(1, T + 1, size=200)
    ends = np.cumsum(lengths) - 1
    ends = ends[ends < T * num_segments]
    done = np.zeros(T * num_segments, bool)
    done[ends] = True
    expected = np.zeros_like(done)
    start = 0
    for end in ends:
        if start // T == end // T:  # starts (at a reset) and ends in the same segment
            expected[start:end + 1] = True
        start = end + 1
    fresh = jnp.array([True])
    for s in range(num_segments):
        seg = jnp.asarray(done[s * T:(s + 1) * T, None])
        mask, fresh = reinforce.episode_mask(seg, jnp.zeros_like(seg), fresh)
        np.testing.assert_array_equal(mask[:, 0], expected[s * T:(s + 1) * T])
    assert expected.sum() > T * num_segments / 3


def _error(overrides):
    with pytest.raises(config.ConfigError) as info:
        config.validate(compose(overrides))
    return str(info.value)


def test_bad_input():
    message = _error(["algo=a2c", "estimator=total_return"])
    assert "estimator=total_return does not fit algo=a2c" in message and "td, nstep, gae" in message
    message = _error(["algo=sac", "estimator=gae"])
    assert "estimator=gae does not fit algo=sac" in message
    assert _error(["algo=reinforce", "estimator.baseline=bogus"]) == (
        "estimator.baseline='bogus' is not allowed (allowed: one of none, mean, value)")
    assert "estimator.discounting='option3'" in _error(["algo=reinforce", "estimator.discounting=option3"])
    assert "algo.num_steps=200 is not allowed" in _error(["algo=reinforce", "algo.num_steps=200"])


def test_bad_input_cli_one_line(tmp_path):
    result = run_cli(["train", "algo=ppo", "estimator=reward_to_go"], tmp_path)
    assert result.returncode == 2 and list(tmp_path.iterdir()) == []
    assert result.stderr.strip() == (
        "rlcli train: error: estimator=reward_to_go does not fit algo=ppo "
        "(allowed with algo=ppo: estimator=td, nstep, gae)")


def test_reinforce_runs_and_masks(tmp_path):
    """Two updates of 4 columns x 500 steps on CartPole-v1: the first column starts at a
    reset and a random-ish policy ends episodes in ~20 steps, so nearly every step is used."""
    summary, records = train(tmp_path, ["algo=reinforce", "num_envs=4", "total_steps=4000",
                                        "log_interval=2000", "eval_episodes=2",
                                        "estimator=total_return", "estimator.baseline=mean"])
    assert summary["total_steps"] == 4000 and len(records) == 2
    first = records[0]
    assert 0.9 < first["train/used_fraction"] < 1.0
    assert first["train/episodes"] >= 4 * 500 / 100
    assert all(math.isfinite(r["loss/total"]) for r in records)


@pytest.mark.slow
def test_reinforce_solves_cartpole_within_1m(tmp_path):
    """Shipped REINFORCE CartPole-v1 settings (reward-to-go minus a value network), jax
    backend, 5 seeds: mean final deterministic return >= 400 within 1M env steps."""
    summary, _ = train(tmp_path, ["algo=reinforce", "env=CartPole-v1", "env.backend=jax", "num_seeds=5"])
    assert summary["total_steps"] <= 1_000_000 + 8 * 500
    returns = summary["final_eval"]["return_mean"]
    print("final deterministic evaluation return per seed:", [round(r, 1) for r in returns])
    assert float(np.mean(returns)) >= 400, returns
