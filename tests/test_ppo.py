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


# a 5-step rollout of one env with an episode boundary inside: terminated after t=1, truncated
# after t=2, so the episodes start at t = 0, 2, 3 and gamma^(t - t0) = 1, g, 1, 1, g
GAMMA = 0.5
WEIGHTS = np.array([1.0, GAMMA, 1.0, 1.0, GAMMA])
TERMINATED = np.array([0, 1, 0, 0, 0], bool)
TRUNCATED = np.array([0, 0, 1, 0, 0], bool)
REWARDS = np.array([1.0, -1.0, 2.0, 0.5, -2.0], np.float32)
ACTIONS = np.array([0, 1, 1, 0, 1])


def zero_params_batch(learner, old_log_prob):
    """The learner with every parameter 0 (pi(a|s) = 1/2 for CartPole's two actions, V = 0, so
    the TD advantage is the reward) and the fixed rollout as a [5, 1] batch."""
    learner = learner._replace(params=jax.tree.map(jnp.zeros_like, learner.params))
    obs = np.random.default_rng(0).normal(size=(6, 1, 4)).astype(np.float32)
    col = lambda x: jnp.asarray(x)[:, None]  # noqa: E731
    return learner, Batch(obs[:-1], col(ACTIONS), col(REWARDS), col(TERMINATED), col(TRUNCATED),
                          col(old_log_prob.astype(np.float32)), col(np.zeros(5, np.float32)), obs[1:])


@pytest.mark.parametrize("discount,normalize", [(False, True), (True, True), (True, False)])
def test_discounted_surrogate_hand_computed(discount, normalize):
    """algo.discount_surrogate (000 eq. 3.3.2): the policy loss of one epoch of one minibatch
    is -mean w_t min(rho_t A_t, clip(rho_t) A_t) with w_t = gamma^(t - t0) applied after the
    advantages are standardised (w_t = 1 without the option), computed here in NumPy."""
    from rlcli import config

    cfg = compose(["algo=ppo", "env=CartPole-v1", "estimator=td", "num_envs=1", "algo.num_steps=5",
                   "algo.num_minibatches=1", "algo.update_epochs=1", f"algo.gamma={GAMMA}",
                   f"algo.discount_surrogate={str(discount).lower()}",
                   f"algo.normalize_advantages={str(normalize).lower()}"])
    config.validate(cfg)
    algo = algos.make("ppo", envs.make_spec("CartPole-v1", "jax"), config.typed(cfg), 10)
    ratio = np.array([0.5, 1.0, 1.5, 1.1, 0.9])
    learner, batch = zero_params_batch(algo.init(jax.random.PRNGKey(0)), np.log(0.5) - np.log(ratio))
    _, metrics = jax.jit(algo.update)(learner, batch, jax.random.PRNGKey(1))

    adv = REWARDS.astype(np.float64)  # r_t + gamma (1 - terminated) V(s') - V(s) with V = 0
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    weights = WEIGHTS if discount else np.ones(5)
    expected = -np.mean(weights * np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv))
    np.testing.assert_allclose(float(metrics["loss/policy"]), expected, rtol=1e-5)
    unweighted = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv))
    assert discount == (abs(expected - unweighted) > 1e-3)  # the case tells the two apart


def test_ppo_on_mujoco_halfcheetah_gymnasium_backend(tmp_path):
    """The MuJoCo extra: PPO with both normalisations runs a few updates of HalfCheetah-v5 on
    the gymnasium backend (6-D Box actions clipped to [-1, 1]) with finite losses."""
    summary, records = train(tmp_path, ["algo=ppo", "env=HalfCheetah-v5", "num_envs=2", "algo.num_steps=64",
                                        "algo.num_minibatches=2", "total_steps=256", "log_interval=128",
                                        "eval_episodes=1", "normalize.obs=true", "normalize.reward=true"])
    assert summary["backend"] == "gymnasium" and summary["total_steps"] == 256
    assert len(records) == 2 and all(math.isfinite(r["loss/total"]) for r in records)
    assert math.isfinite(summary["final_eval_return_mean"])
