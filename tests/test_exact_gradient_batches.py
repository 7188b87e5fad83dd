"""REINFORCE's and is_pg's real batching against the exact gradient, with episodes of variable length.

A 3-state, 2-action MDP whose actions can end the episode (a terminal state) and a time limit
L = 4 (truncation): episodes last 1 to 4 steps. J(theta) = E[sum_{t<L} r_t] (gamma = 1, the
seed's finite-horizon objective) and grad J by exact dynamic programming and jax.grad. Batches
are collected as the jax loop collects them for reinforce and is_pg: N columns of T = 2L steps,
each starting a fresh episode at t = 0 and resetting after every episode; the used steps are
`reinforce.episode_mask`'s, Phi the production estimators with the batch baselines of
`reinforce.subtract_baseline`, the estimate the gradient of the production surrogate
`losses.policy_gradient_loss` (times T x N: the sum over the used steps).

The number of used episodes N_b of a batch is random, but whether an episode is used is decided
before it starts, so (Wald's identity) E[X_b] = E[N_b] g for the per-episode expectation g: the
test checks that Y_b = X_b - N_b g has mean 0 within 5 standard errors per component, over
independent batches. For is_pg the batches come from a behaviour policy theta_b and estimate
grad J(theta): trajectory (000 eq. 3.2.7) and per_decision (3.2.8) weights are unbiased;
first_order (3.2.9) and step (3.3.2) are not, and their expectations are the ones the seed's
derivation gives: with W_t the ratios up to t, E_b[W_t grad log pi(a_t|s_t) G_t] is
sum_s d^theta_t(s) sum_a pi grad log pi Q^b_t(s, a) (the state reached under theta, the future
under the behaviour); with rho_t alone, the state distribution is the behaviour's too, d^b_t.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlcli import estimators, losses
from rlcli.algos import is_pg, reinforce
from rlcli.types import Batch

S, A, L = 3, 2, 4
T, N = 2 * L, 4  # rollout length, columns per batch
NUM_BATCHES = 40_000
Z = 5.0

_rng = np.random.default_rng(11)
P = jnp.asarray(_rng.dirichlet(np.ones(S + 1) * 0.8, size=(S, A)), jnp.float32)  # [s, a, s'], s' = S: terminal
R = jnp.asarray([[1.0, 0.0], [3.0, 1.5], [6.0, 4.0]], jnp.float32)
RHO0 = jnp.asarray([0.6, 0.3, 0.1], jnp.float32)
THETA = jnp.asarray(_rng.normal(scale=0.5, size=(S, A)), jnp.float32)
THETA_B = THETA + jnp.asarray(_rng.normal(scale=0.4, size=(S, A)), jnp.float32)  # is_pg's behaviour


def values(theta):
    """V_j(s), Q_j(s, a) for the in-episode step j < L (finite horizon, no discount)."""
    pi = jax.nn.softmax(theta, axis=-1)
    v, vs, qs = jnp.zeros(S), [], []
    for _ in range(L):
        q = R + P[:, :, :S] @ v  # the terminal state is worth 0
        v = jnp.sum(pi * q, axis=-1)
        vs.insert(0, v)
        qs.insert(0, q)
    return jnp.stack(vs), jnp.stack(qs)


def objective(theta):
    return RHO0 @ values(theta)[0][0]


def state_distribution(theta):
    """d_j(s): probability that the episode is in s (not ended) at its step j."""
    pi = jax.nn.softmax(theta, axis=-1)
    d, ds = RHO0, []
    for _ in range(L):
        ds.append(d)
        d = jnp.einsum("s,sa,sat->t", d, pi, P[:, :, :S])
    return jnp.stack(ds)


def expected_score_q(theta, d, q):
    """sum_j sum_s d_j(s) sum_a pi(a|s) grad log pi(a|s) Q_j(s, a), pi = softmax(theta)."""
    pi = jax.nn.softmax(theta, axis=-1)
    weight = jnp.einsum("js,jsa->sa", d, q)  # sum_j d_j(s) Q_j(s, a)
    return pi * weight - pi * jnp.sum(pi * weight, axis=-1, keepdims=True)


GRAD_J = jax.grad(objective)(THETA)


@jax.jit
def collect(key, theta):
    """[B] batches of N columns x T steps from fresh episodes: states, actions, rewards,
    terminated, truncated, in-episode step [B, T, N]."""
    def column(key):
        k0, key = jax.random.split(key)
        s0 = jax.random.categorical(k0, jnp.log(RHO0))

        def step(carry, key):
            s, j = carry
            k_a, k_s, k_r = jax.random.split(key, 3)
            a = jax.random.categorical(k_a, theta[s])
            nxt = jax.random.categorical(k_s, jnp.log(P[s, a]))
            terminated = nxt == S
            truncated = jnp.logical_and(~terminated, j == L - 1)
            done = terminated | truncated
            reset = jax.random.categorical(k_r, jnp.log(RHO0))
            return (jnp.where(done, reset, nxt), jnp.where(done, 0, j + 1)), (s, a, R[s, a], terminated, truncated, j)

        return jax.lax.scan(step, (s0, 0), jax.random.split(key, T))[1]

    out = jax.vmap(jax.vmap(column))(jax.random.split(key, NUM_BATCHES * N).reshape(NUM_BATCHES, N, 2))
    return tuple(jnp.swapaxes(x, 1, 2) for x in out)  # [B, N, T] -> [B, T, N]


def log_prob(theta, s, a):
    return jnp.take_along_axis(jax.nn.log_softmax(theta[s], axis=-1), a[..., None], axis=-1)[..., 0]


def phi_of(name, baseline, s, a, r, term, trunc, j, mask, v):
    """Phi of the production estimator and batch baselines, zero on unused steps."""
    fn = estimators.batched(estimators.make(name, 1.0, discounting="option1", baseline=baseline))
    value = v[j, s] if baseline == "value" else jnp.zeros_like(r)
    phi = fn(r, value, jnp.zeros_like(r), term, trunc)[0]
    batch = Batch(None, None, None, term, trunc, None, None, None)
    return reinforce.subtract_baseline(phi, batch, mask, name, baseline) * mask


def surrogate_sum(theta, s, a, phi, weights=1.0):
    """The sum over the batch's used steps of w grad log pi Phi: minus T x N x the gradient of
    the production surrogate (phi is zero on unused steps)."""
    return -phi.size * jax.grad(lambda th: losses.policy_gradient_loss(log_prob(th, s, a), weights * phi))(theta)


def zero_mean_z(samples):
    samples = np.asarray(samples, np.float64)
    return samples.mean(axis=0) / np.maximum(samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0]), 1e-9)


@pytest.fixture(scope="module")
def on_policy():
    s, a, r, term, trunc, j = collect(jax.random.PRNGKey(0), THETA)
    mask = jax.vmap(lambda te, tr: reinforce.episode_mask(te, tr, T - L))(term, trunc).astype(jnp.float32)
    starts = jnp.concatenate([jnp.ones_like(term[:, :1]), (term | trunc)[:, :-1]], axis=1)
    episodes = jnp.sum(starts * mask, axis=(1, 2))  # N_b
    return s, a, r, term, trunc, j, mask, episodes


def test_episodes_have_variable_length_and_the_mask_keeps_whole_ones(on_policy):
    s, a, r, term, trunc, j, mask, episodes = on_policy
    done = np.asarray(term | trunc)
    lengths = np.asarray(j)[done] + 1
    assert set(np.unique(lengths)) == {1, 2, 3, 4} and np.asarray(term).any() and np.asarray(trunc).any()
    # every used episode ends inside the rollout, and more than one per column is used on average
    assert float(np.mean(episodes)) > N * 1.2


@pytest.mark.parametrize("name,baseline", [(n, b) for n in ("total_return", "reward_to_go")
                                           for b in ("none", "leave_one_out", "value")])
def test_reinforce_batches_are_unbiased(on_policy, name, baseline):
    s, a, r, term, trunc, j, mask, episodes = on_policy
    v = values(THETA)[0]
    x = jax.jit(jax.vmap(lambda *b: surrogate_sum(THETA, b[0], b[1], phi_of(name, baseline, *b, v))))(
        s, a, r, term, trunc, j, mask)
    z = zero_mean_z(x - episodes[:, None, None] * GRAD_J)
    assert np.all(np.abs(z) < Z), (name, baseline, z)


def test_plain_mean_baseline_is_biased_and_leave_one_out_is_not(on_policy):
    """With few episodes per batch the mean that includes the episode itself shrinks the
    gradient (the (1 - 1/N) effect, N random here): detected; its leave-one-out form is not."""
    s, a, r, term, trunc, j, mask, episodes = on_policy
    v = values(THETA)[0]
    x = jax.jit(jax.vmap(lambda *b: surrogate_sum(THETA, b[0], b[1], phi_of("total_return", "mean", *b, v))))(
        s, a, r, term, trunc, j, mask)
    assert np.max(np.abs(zero_mean_z(x - episodes[:, None, None] * GRAD_J))) > Z


def test_optimal_baseline_is_unbiased(on_policy):
    """000 eq. 3.1.17, leave-one-out per component, from the per-episode scores of the batch
    (`reinforce.episode_slots`, `reinforce.episode_scores`, `estimators.optimal_baseline_gradient`)."""
    s, a, r, term, trunc, j, mask, episodes = on_policy

    def one(s, a, r, term, trunc, mask):
        slots = reinforce.episode_slots(term, trunc).reshape(-1)
        scores = reinforce.episode_scores(lambda th, s1, a1: log_prob(th, s1, a1), THETA, s.reshape(-1),
                                          a.reshape(-1), mask.reshape(-1), slots, T * N)
        steps = jax.ops.segment_sum(mask.reshape(-1), slots, num_segments=T * N)
        returns = jax.ops.segment_sum((r * mask).reshape(-1), slots, num_segments=T * N)
        return estimators.optimal_baseline_gradient(scores, returns, steps > 0)

    x = jax.jit(jax.vmap(one))(s, a, r, term, trunc, mask)
    z = zero_mean_z(x - episodes[:, None, None] * GRAD_J)
    assert np.all(np.abs(z) < Z), z


def test_q_control_variate_is_unbiased(on_policy):
    """000 eq. 4.2.6 with the exact Q_j(s, a) of the finite horizon, through the production
    `estimators.control_variate_loss` (times minus the number of used steps: its sum)."""
    s, a, r, term, trunc, j, mask, episodes = on_policy
    q = values(THETA)[1]

    def one(s, a, r, term, trunc, j, mask):
        G = phi_of("reward_to_go", "none", s, a, r, term, trunc, j, mask, None)
        q_all = q[j, s]  # [T, N, A]
        q_taken = jnp.take_along_axis(q_all, a[..., None], axis=-1)[..., 0]

        def loss(th):
            return estimators.control_variate_loss(log_prob(th, s, a), estimators.expected_q_discrete(th[s], q_all),
                                                   G, q_taken, jnp.ones_like(G), mask)
        return -jnp.sum(mask) * jax.grad(loss)(THETA)

    x = jax.jit(jax.vmap(one))(s, a, r, term, trunc, j, mask)
    z = zero_mean_z(x - episodes[:, None, None] * GRAD_J)
    assert np.all(np.abs(z) < Z), z


@pytest.fixture(scope="module")
def behaviour():
    s, a, r, term, trunc, j = collect(jax.random.PRNGKey(1), THETA_B)
    mask = jax.vmap(lambda te, tr: reinforce.episode_mask(te, tr, T - L))(term, trunc).astype(jnp.float32)
    starts = jnp.concatenate([jnp.ones_like(term[:, :1]), (term | trunc)[:, :-1]], axis=1)
    return s, a, r, term, trunc, j, mask, jnp.sum(starts * mask, axis=(1, 2))


def _is_pg_estimates(data, ratio):
    s, a, r, term, trunc, j, mask, _ = data
    name = "total_return" if ratio == "trajectory" else "reward_to_go"

    def one(s, a, r, term, trunc, j, mask):
        log_ratio = log_prob(THETA, s, a) - log_prob(THETA_B, s, a)
        w = is_pg.importance_weights(log_ratio, term, trunc, mask, ratio, None)
        if ratio == "per_decision":  # 3.2.8: the weights go on the rewards of Phi
            return surrogate_sum(THETA, s, a, phi_of(name, "none", s, a, r * w, term, trunc, j, mask, None))
        return surrogate_sum(THETA, s, a, phi_of(name, "none", s, a, r, term, trunc, j, mask, None), w)

    return jax.jit(jax.vmap(one))(s, a, r, term, trunc, j, mask)


def test_is_pg_ratios_as_the_seed_derives_them(behaviour):
    episodes = behaviour[-1]
    q_b = values(THETA_B)[1]
    targets = {"trajectory": GRAD_J, "per_decision": GRAD_J,
               "first_order": expected_score_q(THETA, state_distribution(THETA), q_b),
               "step": expected_score_q(THETA, state_distribution(THETA_B), q_b)}
    for ratio, target in targets.items():
        x = _is_pg_estimates(behaviour, ratio)
        z = zero_mean_z(x - episodes[:, None, None] * target)
        assert np.all(np.abs(z) < Z), (ratio, z)
    # the biased two are measurably away from grad J (and the targets differ from it)
    for ratio in ("first_order", "step"):
        x = _is_pg_estimates(behaviour, ratio)
        assert np.max(np.abs(zero_mean_z(x - episodes[:, None, None] * GRAD_J))) > Z, ratio
