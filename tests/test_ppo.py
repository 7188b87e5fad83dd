"""PPO: the clipped surrogate, the clipped value loss and the KL estimate against hand-computed
numbers; target-KL early stopping; learning thresholds (5 seeds, jax backend)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compose, train
from rlcli import algos, envs, losses
from rlcli.algos import Batch


def test_clipped_surrogate_hand_computed():
    # ratios 0.5, 1.0, 1.5, 1.1 with advantages 1, -1, 1, -2 and eps = 0.2:
    # min(rho A, clip(rho) A) = min(0.5, 0.8) = 0.5; -1; min(1.5, 1.2) = 1.2; min(-2.2, -2.2) = -2.2
    ratio = np.array([0.5, 1.0, 1.5, 1.1], np.float32)
    old = np.array([-1.0, -0.3, -2.0, -0.7], np.float32)
    advantages = jnp.array([1.0, -1.0, 1.0, -2.0])
    log_prob = jnp.asarray(old + np.log(ratio))
    loss, clip_fraction = losses.clipped_surrogate_loss(log_prob, old, advantages, 0.2)
    np.testing.assert_allclose(loss, -(0.5 - 1.0 + 1.2 - 2.2) / 4, rtol=1e-6)
    np.testing.assert_allclose(clip_fraction, 0.5)  # samples 1 and 3 are outside [0.8, 1.2]
    # d loss / d log pi = -rho A / 4 where the unclipped term is the minimum, 0 where the clip is
    grad = jax.grad(lambda lp: losses.clipped_surrogate_loss(lp, old, advantages, 0.2)[0])(log_prob)
    np.testing.assert_allclose(grad, [-0.5 / 4, 1.0 / 4, 0.0, 2.2 / 4], rtol=1e-5)


def test_clipped_value_loss_hand_computed():
    values = jnp.array([1.5, 0.0, 2.0])
    old = jnp.array([1.0, 0.5, 2.0])
    targets = jnp.array([2.0, 0.0, 3.0])
    # clipped values (clip 0.2): 1.2, 0.3, 2.0; squared errors max((0.25, 0.64), (0, 0.09), (1, 1))
    expected = 0.5 * (0.64 + 0.09 + 1.0) / 3
    np.testing.assert_allclose(losses.clipped_value_loss(values, old, targets, 0.2), expected, rtol=1e-6)


def test_approx_kl_is_exact_on_samples_in_proportion():
    # samples of p = (1/2, 1/4, 1/4) in exact proportion: the sample mean of (rho - 1) - log rho
    # equals the expectation under p, which is KL(p || q) since E_p[rho - 1] = 0
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.2, 0.5, 0.3])
    actions = np.array([0, 0, 1, 2])
    kl = losses.approx_kl(jnp.log(q[actions]), jnp.log(p[actions]))
    np.testing.assert_allclose(kl, np.sum(p * np.log(p / q)), rtol=1e-5)


def _ppo(overrides):
    cfg = compose(["algo=ppo", "num_envs=4", "algo.num_steps=8", *overrides])
    spec = envs.make_spec("CartPole-v1", "jax")
    return algos.make("ppo", spec, cfg, 10)


def _batch(algo, learner, key):
    k_obs, k_act = jax.random.split(key)
    obs = jax.random.normal(k_obs, (8, 4, 4))
    action, info = algo.act(learner, obs, k_act)
    zeros = jnp.zeros((8, 4))
    return Batch(obs, action, jnp.ones((8, 4)), zeros.astype(bool), zeros.astype(bool), info.log_prob,
                 info.value, obs + 0.1)


def test_target_kl_stops_after_the_first_minibatch_that_moves_the_policy():
    """With a tiny target_kl the first minibatch step is applied (its KL to the rollout policy is
    exactly 0) and every later one is refused: 1 of epochs x minibatches steps applied."""
    algo = _ppo(["algo.update_epochs=3", "algo.num_minibatches=4", "algo.target_kl=1e-12"])
    learner = algo.init(jax.random.PRNGKey(0))
    batch = _batch(algo, learner, jax.random.PRNGKey(1))
    new, metrics = jax.jit(algo.update)(learner, batch, jax.random.PRNGKey(2))
    assert float(metrics["train/minibatches_applied"]) == pytest.approx(1 / 12)
    # exactly one optimizer step was taken
    assert int(new.opt_state[1][0].count) == 1
    free, free_metrics = jax.jit(_ppo(["algo.update_epochs=3", "algo.num_minibatches=4"]).update)(
        learner, batch, jax.random.PRNGKey(2))
    assert float(free_metrics["train/minibatches_applied"]) == 1.0
    assert int(free.opt_state[1][0].count) == 12


def _final_mean(summary):
    returns = summary["final_eval"]["return_mean"]
    print("final deterministic evaluation return per seed:", [round(r, 1) for r in returns])
    return float(np.mean(returns))


@pytest.mark.slow
def test_ppo_solves_cartpole_within_100k(tmp_path):
    """Shipped PPO CartPole-v1 settings, 5 seeds: mean final deterministic return >= 475 at
    100k env steps (RL Baselines3 Zoo: 500)."""
    summary, _ = train(tmp_path, ["algo=ppo", "env=CartPole-v1", "num_seeds=5"])
    assert summary["total_steps"] <= 100_000 + 8 * 32
    assert _final_mean(summary) >= 475


@pytest.mark.slow
def test_ppo_pendulum_within_200k(tmp_path):
    """Shipped PPO Pendulum-v1 settings, 5 seeds: mean final deterministic return >= -250 at
    200k env steps (RL Baselines3 Zoo: -172 at 100k with gSDE)."""
    summary, _ = train(tmp_path, ["algo=ppo", "env=Pendulum-v1", "num_seeds=5"])
    assert summary["total_steps"] <= 200_000 + 8 * 256
    mean = _final_mean(summary)
    assert math.isfinite(mean) and mean >= -250


def test_ppo_on_mujoco_halfcheetah_gymnasium_backend(tmp_path):
    """The MuJoCo extra: PPO with both normalisations runs a few updates of HalfCheetah-v5 on
    the gymnasium backend (6-D Box actions clipped to [-1, 1]) with finite losses."""
    summary, records = train(tmp_path, ["algo=ppo", "env=HalfCheetah-v5", "num_envs=2", "algo.num_steps=64",
                                        "algo.num_minibatches=2", "total_steps=256", "log_interval=128",
                                        "eval_episodes=1", "normalize.obs=true", "normalize.reward=true"])
    assert summary["backend"] == "gymnasium" and summary["total_steps"] == 256
    assert len(records) == 2 and all(math.isfinite(r["loss/total"]) for r in records)
    assert math.isfinite(summary["final_eval_return_mean"])
