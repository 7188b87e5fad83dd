"""rlcli.losses against hand-computed numbers, and A2C's actor-critic loss against the formula
of its docstring written out here from the seeds (000 eq. 4.1.4, 4.1.5, 4.2.8; 001 "A2C",
"Policy Entropy Bonus"), value and gradient."""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcli import distributions, estimators, losses, networks
from rlcli.algos import Batch, a2c

# ---- small losses, hand values ------------------------------------------------------------------


def test_normalize_by_hand():
    # x = (1, 2, 3, 6): mean 3, deviations (-2, -1, 0, 3), population variance 14 / 4 = 3.5
    got = np.asarray(losses.normalize(jnp.float32([1.0, 2.0, 3.0, 6.0])))
    np.testing.assert_allclose(got, np.array([-2.0, -1.0, 0.0, 3.0]) / math.sqrt(3.5), rtol=1e-6)
    np.testing.assert_allclose([got.mean(), got.std()], [0.0, 1.0], atol=1e-6)
    # with a mask, the statistics of the counted samples (1, 2, 3): mean 2, variance 2/3;
    # the uncounted sample is standardised with them, (6 - 2) / sqrt(2/3)
    got = losses.normalize(jnp.float32([1.0, 2.0, 3.0, 6.0]), mask=jnp.float32([1, 1, 1, 0]))
    np.testing.assert_allclose(got, np.array([-1.0, 0.0, 1.0, 4.0]) / math.sqrt(2 / 3), rtol=1e-6)


def test_normalize_constant_array_is_zero_not_nan():
    # x - mean(x) = 0 exactly and the std is 0: 0 / (0 + eps) = 0 for every sample
    got = np.asarray(losses.normalize(jnp.full((5,), 3.25, jnp.float32)))
    np.testing.assert_array_equal(got, np.zeros(5))
    got = np.asarray(losses.normalize(jnp.full((3,), -2.0, jnp.float32), mask=jnp.float32([1, 0, 1])))
    np.testing.assert_array_equal(got, np.zeros(3))


def test_mean_with_mask_by_hand():
    x = jnp.float32([1.0, 2.0, 4.0, 8.0])
    assert float(losses.mean(x)) == pytest.approx(3.75)
    assert float(losses.mean(x, jnp.float32([1, 0, 1, 0]))) == pytest.approx(2.5)
    assert float(losses.mean(x, jnp.zeros(4))) == 0.0  # nothing counts: 0, not nan


def test_entropy_bonus_by_hand():
    # the mean over samples of the entropies of pi = (1/2, 1/2) and (1/4, 3/4):
    # log 2 and -(1/4 log 1/4 + 3/4 log 3/4)
    entropy = distributions.categorical_entropy(jnp.log(jnp.float32([[0.5, 0.5], [0.25, 0.75]])))
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(losses.entropy_bonus(entropy)) == pytest.approx((math.log(2) + h2) / 2, rel=1e-6)
    assert float(losses.entropy_bonus(entropy, jnp.float32([0, 1]))) == pytest.approx(h2, rel=1e-6)


def test_value_loss_and_policy_gradient_loss_by_hand():
    values, targets = jnp.float32([1.0, 2.0, 0.0]), jnp.float32([2.0, 0.0, 0.0])
    # 1/2 mean((V - y)^2) = 1/2 (1 + 4 + 0) / 3; dL/dV = (V - y) / 3
    assert float(losses.value_loss(values, targets)) == pytest.approx(5 / 6, rel=1e-6)
    np.testing.assert_allclose(jax.grad(losses.value_loss)(values, targets), [-1 / 3, 2 / 3, 0.0], rtol=1e-6)
    assert float(jax.grad(losses.value_loss, argnums=1)(values, targets).sum()) == 0.0  # targets held fixed
    # -mean(log pi A): log pi = (-1, -2), A = (3, -1): -(-3 + 2) / 2 = 0.5; d/d log pi = -A / 2
    log_prob, adv = jnp.float32([-1.0, -2.0]), jnp.float32([3.0, -1.0])
    assert float(losses.policy_gradient_loss(log_prob, adv)) == pytest.approx(0.5)
    np.testing.assert_allclose(jax.grad(losses.policy_gradient_loss)(log_prob, adv), [-1.5, 0.5])
    assert float(jnp.abs(jax.grad(losses.policy_gradient_loss, argnums=1)(log_prob, adv)).sum()) == 0.0


def test_explained_variance_by_hand():
    # y - V = (0, 0, 0, 1): variance 1/4 - 1/16 = 3/16; Var y = 35/16 (mean 11/4)
    values, targets = jnp.float32([1.0, 2.0, 3.0, 4.0]), jnp.float32([1.0, 2.0, 3.0, 5.0])
    assert float(losses.explained_variance(values, targets)) == pytest.approx(1 - 3 / 35, rel=1e-6)
    assert float(losses.explained_variance(targets, targets)) == pytest.approx(1.0)  # a perfect critic
    # predicting the mean of y everywhere: no better than a constant
    assert float(losses.explained_variance(jnp.full(4, 2.75), targets)) == pytest.approx(0.0, abs=1e-6)


def test_explained_variance_with_constant_targets():
    """Var y = 0: the formula's denominator is its eps 1e-8, so a perfect critic still scores 1,
    and any error is a very negative score, 1 - Var[y - V] / 1e-8 (here Var[(1, 0, -1)] = 2/3)."""
    y = jnp.full(3, 2.0)
    assert float(losses.explained_variance(y, y)) == 1.0
    got = float(losses.explained_variance(jnp.float32([1.0, 2.0, 3.0]), y))
    assert got == pytest.approx(1.0 - (2 / 3) / 1e-8, rel=1e-5)


# ---- A2C's loss against the formula ---------------------------------------------------------------

GAMMA = 0.9
T, N = 4, 2
# a rollout of 2 envs x 4 steps: env 0 terminates after t=1, env 1 is truncated after t=2
TERMINATED = np.array([[0, 0], [1, 0], [0, 0], [0, 0]], bool)
TRUNCATED = np.array([[0, 0], [0, 0], [0, 1], [0, 0]], bool)


def td_by_hand(r, v, v_next, term, trunc):
    """delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t), y_t = r_t + gamma (1 - terminated_t) V(s'_t)
    (000 eq. 4.1.4, 4.1.6)."""
    y = r + GAMMA * (1.0 - term) * v_next
    return y - v, y


def nstep_to_segment_end_by_hand(r, v, v_next, term, trunc):
    """000 eq. 4.2.8 with n = the rest of the segment (A3C's n-step returns, 001): per env,
    y_t = r_t + gamma y_{t+1}, except where the episode or segment ends after t, where
    y_t = r_t + gamma (1 - terminated_t) V(s'_t)."""
    y = np.zeros_like(r)
    for n in range(r.shape[1]):
        for t in reversed(range(r.shape[0])):
            if term[t, n] or trunc[t, n] or t == r.shape[0] - 1:
                y[t, n] = r[t, n] + GAMMA * (1.0 - term[t, n]) * v_next[t, n]
            else:
                y[t, n] = r[t, n] + GAMMA * y[t + 1, n]
    return y - v, y


def _rollout(discrete, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(T + 1, N, 3)).astype(np.float32)
    action = (rng.integers(0, 3, size=(T, N)) if discrete
              else rng.normal(size=(T, N, 2)).astype(np.float32))
    reward = rng.normal(size=(T, N)).astype(np.float32)
    zeros = np.zeros((T, N), np.float32)
    return Batch(jnp.asarray(obs[:-1]), jnp.asarray(action), jnp.asarray(reward), jnp.asarray(TERMINATED),
                 jnp.asarray(TRUNCATED), jnp.asarray(zeros), jnp.asarray(zeros), jnp.asarray(obs[1:]))


def _log_prob_and_entropy_by_hand(discrete, dist_params, action):
    """001: categorical log softmax; diagonal Gaussian -1/2 sum_k [log(2 pi sigma_k^2) + (a_k - mu_k)^2 / sigma_k^2],
    entropy sum_k [log sigma_k + 1/2 log(2 pi e)]."""
    if discrete:
        log_p = dist_params - jax.scipy.special.logsumexp(dist_params, axis=-1, keepdims=True)
        log_prob = jnp.take_along_axis(log_p, action[..., None], axis=-1)[..., 0]
        return log_prob, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
    mean, log_std = dist_params
    var = jnp.exp(2.0 * log_std)
    log_prob = jnp.sum(-0.5 * (jnp.log(2 * math.pi * var) + (action - mean) ** 2 / var), axis=-1)
    entropy = jnp.sum(jnp.broadcast_to(log_std, mean.shape) + 0.5 * math.log(2 * math.pi * math.e), axis=-1)
    return log_prob, entropy


@pytest.mark.parametrize("discrete,estimator,normalize,shared", [
    (True, "nstep", False, False), (True, "td", True, True), (False, "nstep", True, False)],
    ids=["discrete-nstep", "discrete-td-normalized-shared", "gaussian-nstep-normalized"])
def test_a2c_loss_and_gradient_against_the_formula(discrete, estimator, normalize, shared):
    """L = -mean(A_t log pi(a_t|s_t)) + vf_coef 1/2 mean (V(s_t) - y_t)^2 - ent_coef mean H(pi(.|s_t)),
    A_t and y_t computed here in NumPy from V's values (held constant: no gradient through them),
    A_t standardised over the batch when asked; `a2c.actor_critic_loss`'s value and gradient
    with respect to every parameter match it."""
    network = networks.ActorCritic(num_actions=3 if discrete else 2, discrete=discrete, hidden_sizes=(5,),
                                   shared=shared, log_std_init=-0.3)
    dist = distributions.for_action_space(discrete)
    batch = _rollout(discrete)
    params = network.init(jax.random.PRNGKey(1), batch.obs)
    # move the heads off their tiny initial scale, so that every term matters (in NumPy: no
    # compilation per leaf shape)
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda p: np.asarray(p) + np.float32(0.3) * rng.normal(size=p.shape).astype(np.float32),
                          params)
    hparams = {"vf_coef": jnp.float32(0.7), "ent_coef": jnp.float32(0.05)}
    est = estimators.batched(estimators.make(estimator, GAMMA, **({"n": None} if estimator == "nstep" else {})))

    def unroll(params, batch):  # a feed-forward policy's: the network on obs and on next_obs
        dist_params, values = network.apply(params, batch.obs)
        return dist_params, values, network.apply(params, batch.next_obs)[1]

    loss_fn = a2c.actor_critic_loss(unroll, dist, est, SimpleNamespace(normalize_advantages=normalize))

    apply = jax.jit(network.apply)
    _, v = apply(params, batch.obs)
    _, v_next = apply(params, batch.next_obs)
    by_hand = td_by_hand if estimator == "td" else nstep_to_segment_end_by_hand
    adv, y = by_hand(*(np.asarray(x, np.float64) for x in (batch.reward, v, v_next, TERMINATED, TRUNCATED)))
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    adv, y = jnp.float32(adv), jnp.float32(y)

    def formula(params):
        dist_params, values = network.apply(params, batch.obs)
        log_prob, entropy = _log_prob_and_entropy_by_hand(discrete, dist_params, batch.action)
        return (-jnp.mean(adv * log_prob) + 0.7 * 0.5 * jnp.mean((values - y) ** 2) - 0.05 * jnp.mean(entropy))

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch, hparams)
    np.testing.assert_allclose(float(loss), float(formula(params)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss/value"]), 0.5 * float(jnp.mean((v - y) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["train/advantage_mean"]), float(jnp.mean(adv)), atol=1e-6)
    expected = jax.jit(jax.grad(formula))(params)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # the gradient is not trivially small: a wrong coefficient would show
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected)) > 1e-2
