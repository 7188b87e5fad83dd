"""The Monte-Carlo policy-gradient estimators against the exact gradient of a tabular MDP.

A 3-state, 2-action MDP with a horizon of H steps and a softmax tabular policy pi(a|s) =
softmax(theta[s]): J(theta) = E[sum_t gamma^t r_t] by exact backward dynamic programming, so
jax.grad(J) is the true policy gradient (000 eq. 3.1.5). Episodes are sampled with jax; each
estimator is the production one (`rlcli.estimators`, `rlcli.losses`) on the time-major [H, N]
batch, its per-episode (or per-batch) gradient taken with jax.grad of the production surrogate.

Unbiased estimators must match the exact gradient within 5 standard errors per component
(the standard error from the sample variance of the independent per-episode or per-batch
estimates). The batch-mean baseline (000 eq. 3.1.11) is biased by O(1/N): its expectation is
derived exactly and checked (E = (1 - 1/N) grad J, for total_return with the mean of R(tau)
over the N episodes and for reward_to_go with b_t the mean of G_t over them); the uncorrected
target is rejected, which shows the tolerance can fail.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcli import estimators, losses

S, A, H = 3, 2, 4
NUM_EPISODES = 200_000
BATCH = 4  # episodes per batch for the batch baselines (mean, optimal)
Z = 5.0  # standard errors per component


def _mdp():
    rng = np.random.default_rng(7)
    P = rng.dirichlet(np.ones(S) * 0.7, size=(S, A))  # P[s, a, s']
    r = np.array([[1.0, 0.0], [3.0, 1.5], [6.0, 4.0]])  # positive rewards: returns far from 0
    rho0 = np.array([0.6, 0.3, 0.1])
    theta = rng.normal(scale=0.5, size=(S, A))
    return (jnp.asarray(P, jnp.float32), jnp.asarray(r, jnp.float32), jnp.asarray(rho0, jnp.float32),
            jnp.asarray(theta, jnp.float32))


P, R, RHO0, THETA = _mdp()


def exact(theta, gamma, weights=None):
    """(J, V [H, S], Q [H, S, A]) by backward DP: Q_t = w_t r + gamma P V_{t+1}, V_t = sum_a pi Q_t,
    J = rho0 . V_0; w_t = 1 unless `weights` [H] are given."""
    pi = jax.nn.softmax(theta, axis=-1)
    v = jnp.zeros(S)
    vs, qs = [], []
    for t in reversed(range(H)):
        w = 1.0 if weights is None else weights[t]
        q = w * R + gamma * P @ v
        v = jnp.sum(pi * q, axis=-1)
        vs.insert(0, v)
        qs.insert(0, q)
    return RHO0 @ v, jnp.stack(vs), jnp.stack(qs)


@partial(jax.jit, static_argnums=1)
def sample(key, num):
    """num episodes of H steps: states, actions, rewards [H, num] (time-major)."""
    k0, key = jax.random.split(key)
    s = jax.random.categorical(k0, jnp.log(RHO0), shape=(num,))

    def step(carry, key):
        s = carry
        ka, ks = jax.random.split(key)
        a = jax.random.categorical(ka, THETA[s])
        s_next = jax.random.categorical(ks, jnp.log(P[s, a]))
        return s_next, (s, a, R[s, a])

    _, (states, actions, rewards) = jax.lax.scan(step, s, jax.random.split(key, H))
    return states, actions, rewards


def flags(num):
    terminated = jnp.zeros((H, num), bool).at[-1].set(True)  # the horizon ends every episode
    return terminated, jnp.zeros((H, num), bool)


def phi_of(name, gamma, discounting, baseline, rewards, values):
    fn = estimators.batched(estimators.make(name, gamma, discounting=discounting, baseline=baseline))
    term, trunc = flags(rewards.shape[1])
    return fn(rewards, values, jnp.zeros_like(values), term, trunc)[0]


def log_prob(theta, states, actions):
    return jax.nn.log_softmax(theta[states], axis=-1)[jnp.arange(states.shape[0]), actions]


@jax.jit
def episode_grads(states, actions, phi):
    """[num, S, A]: per episode sum_t grad log pi(a_t|s_t) Phi_t, the gradient of minus H x the
    production surrogate `losses.policy_gradient_loss` over the episode's H steps."""
    def one(s, a, p):
        return -H * jax.grad(lambda th: losses.policy_gradient_loss(log_prob(th, s, a), p))(THETA)
    return jax.vmap(one, in_axes=1)(states, actions, phi)


@jax.jit
def control_variate_grads(states, actions, G, Q):
    """Per episode, 000 eq. 4.2.6 with the exact Q_t(s, a): minus H x the gradient of
    `estimators.control_variate_loss` with the exact sum over actions `expected_q_discrete`."""
    steps = jnp.arange(H)

    def one(s, a, g):
        q_all = Q[steps, s]  # [H, A]

        def loss(th):
            return estimators.control_variate_loss(log_prob(th, s, a), estimators.expected_q_discrete(th[s], q_all),
                                                   g, q_all[steps, a], jnp.ones(H))
        return -H * jax.grad(loss)(THETA)
    return jax.vmap(one, in_axes=1)(states, actions, G)


def batches(x):
    """[num, ...] -> [num // BATCH, BATCH, ...]."""
    return x[: x.shape[0] // BATCH * BATCH].reshape((-1, BATCH) + x.shape[1:])


def z_scores(samples, target):
    """Per component (mean - target) / standard error over independent samples [n, S, A]."""
    samples = np.asarray(samples, np.float64)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return (samples.mean(axis=0) - np.asarray(target)) / np.maximum(se, 1e-9)


def trace_cov(samples):
    samples = np.asarray(samples, np.float64).reshape(samples.shape[0], -1)
    return float(samples.var(axis=0, ddof=1).sum())


@pytest.fixture(scope="module")
def estimates():
    # one program: op by op, its operations each compiled alone (about 180 programs, 11 s)
    return {k: np.asarray(v) for k, v in jax.jit(_estimates)().items()}


def _estimates():
    states, actions, rewards = sample(jax.random.PRNGKey(0), NUM_EPISODES)
    steps = jnp.arange(H)[:, None]
    _, V1, Q1 = exact(THETA, 1.0)
    values = V1[steps, states]  # exact V_t(s_t), undiscounted
    out = {}
    for name in ("total_return", "reward_to_go"):
        for baseline in ("none", "value"):
            phi = phi_of(name, 1.0, "option1", baseline, rewards, values if baseline == "value" else jnp.zeros_like(values))
            out[f"{name}/{baseline}"] = episode_grads(states, actions, phi)
        for gamma_ in (0.8,):
            phi = phi_of(name, gamma_, "option2", "none", rewards, jnp.zeros_like(values))
            out[f"{name}/option2"] = episode_grads(states, actions, phi)
    # reward_to_go option1 with gamma < 1: the gradient of no objective (000 §4.1.4), biased
    out["reward_to_go/option1_gamma0.8"] = episode_grads(
        states, actions, phi_of("reward_to_go", 0.8, "option1", "none", rewards, jnp.zeros_like(values)))
    # batch baselines: N = BATCH episodes per batch
    mask = jnp.ones((H, BATCH))
    bs, ba, br = (jnp.swapaxes(batches(jnp.swapaxes(x, 0, 1)), 1, 2) for x in (states, actions, rewards))  # [B, H, N]
    for name in ("total_return", "reward_to_go"):
        term, trunc = flags(BATCH)
        phi = jax.vmap(lambda r: estimators.subtract_mean_baseline(
            phi_of(name, 1.0, "option1", "mean", r, jnp.zeros((H, BATCH))), term, trunc, mask,
            per_step=name == "reward_to_go"))(br)
        per_episode = jax.vmap(episode_grads)(bs, ba, phi)  # [B, N, S, A]
        out[f"{name}/mean"] = per_episode.mean(axis=1)
    # optimal baseline (000 eq. 3.1.17), per component, leave-one-out within each batch
    scores = episode_grads(states, actions, jnp.ones((H, NUM_EPISODES)))  # g(tau_i)
    returns = rewards.sum(axis=0)
    out["total_return/optimal"] = jax.vmap(
        lambda g, R: estimators.optimal_baseline_gradient(g, R, jnp.ones(BATCH)) / BATCH)(batches(scores), batches(returns))
    # for the variance comparison: batches of 64, and per episode with b from all the others
    big = lambda x: x[: NUM_EPISODES // 64 * 64].reshape((-1, 64) + x.shape[1:])  # noqa: E731
    out["total_return/optimal_64"] = jax.vmap(
        lambda g, R: estimators.optimal_baseline_gradient(g, R, jnp.ones(64)) / 64)(big(scores), big(returns))
    out["total_return/mean_64"] = jax.vmap(lambda g, R: jnp.mean(
        g * (R - jnp.mean(R))[:, None, None], axis=0))(big(scores), big(returns))
    b_all = estimators.optimal_baseline(scores, returns, jnp.ones(NUM_EPISODES))
    out["total_return/optimal_population"] = scores * (returns[:, None, None] - b_all)
    loo_mean = (jnp.sum(returns) - returns) / (NUM_EPISODES - 1)
    out["total_return/mean_population"] = scores * (returns - loo_mean)[:, None, None]
    G = phi_of("reward_to_go", 1.0, "option1", "none", rewards, jnp.zeros_like(values))
    out["reward_to_go/q_control_variate"] = control_variate_grads(states, actions, G, Q1)
    return out


GRAD_J = jax.grad(lambda th: exact(th, 1.0)[0])(THETA)
GRAD_J_DISCOUNTED = jax.grad(lambda th: exact(th, 0.8)[0])(THETA)


@pytest.mark.parametrize("key", ["total_return/none", "reward_to_go/none", "total_return/value",
                                 "reward_to_go/value", "total_return/optimal", "reward_to_go/q_control_variate"])
def test_unbiased_estimators_match_the_exact_gradient(estimates, key):
    z = z_scores(estimates[key], GRAD_J)
    assert np.all(np.abs(z) < Z), (key, z, estimates[key].mean(0), GRAD_J)


@pytest.mark.parametrize("name", ["total_return", "reward_to_go"])
def test_option2_matches_the_gradient_of_the_discounted_objective(estimates, name):
    """Option 2 (000 eq. 4.1.7/4.1.8) is unbiased for grad E[sum_t gamma^t r_t]."""
    z = z_scores(estimates[f"{name}/option2"], GRAD_J_DISCOUNTED)
    assert np.all(np.abs(z) < Z), (name, z)


def test_mean_baseline_bias_is_the_derived_one(estimates):
    # total_return: E[(1/N) sum_i g_i (R_i - mean_j R_j)] = grad J - (1/N^2) sum_i E[g_i R_i] = (1 - 1/N) grad J
    z = z_scores(estimates["total_return/mean"], (1.0 - 1.0 / BATCH) * GRAD_J)
    assert np.all(np.abs(z) < Z), z
    # reward_to_go, b_t = the mean over the N episodes of G_t: each term loses its own share,
    # E = sum_t E[grad log pi_t G_t] (1 - 1/N) = (1 - 1/N) grad J as well
    z = z_scores(estimates["reward_to_go/mean"], (1.0 - 1.0 / BATCH) * GRAD_J)
    assert np.all(np.abs(z) < Z), z
    # the tolerance is tight enough to see the O(1/N) bias and a wrong discount
    assert np.max(np.abs(z_scores(estimates["total_return/mean"], GRAD_J))) > Z
    assert np.max(np.abs(z_scores(estimates["reward_to_go/option1_gamma0.8"], GRAD_J))) > Z
    assert np.max(np.abs(z_scores(estimates["reward_to_go/option1_gamma0.8"], GRAD_J_DISCOUNTED))) > Z


def test_variance_ordering(estimates):
    """Causality lowers the variance (000 §3.1.3); the optimal baseline (3.1.17) has at most
    the variance of the mean one (3.1.11): per episode with both baselines estimated from all
    the other 200k episodes, and per batch of 64 episodes. (With 4-episode batches the
    leave-one-out per-component b is itself so noisy that the estimate's variance is about
    twice the batch mean's: 45 vs 21 per episode-equivalent, measured with this MDP.)"""
    var = {k: trace_cov(v) for k, v in estimates.items()}
    print({k: round(v, 3) for k, v in var.items()})
    assert var["reward_to_go/none"] < var["total_return/none"]
    assert var["total_return/optimal_population"] <= var["total_return/mean_population"]
    assert var["total_return/optimal_64"] <= var["total_return/mean_64"]
    assert np.all(np.abs(z_scores(estimates["total_return/optimal_64"], GRAD_J)) < Z)
    # the exact critics: a state (or state-action) baseline lowers it further
    assert var["reward_to_go/value"] < var["reward_to_go/none"]
    assert var["reward_to_go/q_control_variate"] < var["reward_to_go/none"]
