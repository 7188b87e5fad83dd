"""REINFORCE and the Monte-Carlo estimators (total_return, reward_to_go)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from conftest import compose, train
from rlcli import config, estimators
from rlcli.algos import reinforce

# one segment: an episode terminated at t=1, one truncated at t=3, one cut by the segment's end
R = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
V = jnp.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
NV = jnp.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
TERM = jnp.array([0, 1, 0, 0, 0, 0], bool)
TRUNC = jnp.array([0, 0, 0, 1, 0, 0], bool)


def _phi(name, discounting, baseline, bootstrap=False):
    fn = estimators.make(name, 0.5, discounting=discounting, baseline=baseline, bootstrap_truncation=bootstrap)
    return [np.asarray(x) for x in fn(R, V, NV, TERM, TRUNC)]


@pytest.mark.parametrize("name,discounting,baseline,bootstrap,expected", [
    # G_t, gamma 0.5, no bootstrap: [1+.5*2, 2, 3+.5*4, 4, 5+.5*6, 6]
    ("reward_to_go", "option1", "none", False, [2, 2, 5, 4, 8, 6]),
    # x gamma^(t-t0): w = [1, .5, 1, .5, 1, .5]
    ("reward_to_go", "option2", "none", False, [2, 1, 5, 2, 8, 3]),
    ("reward_to_go", "option1", "mean", False, [2, 2, 5, 4, 8, 6]),  # the mean is the algorithm's
    # the value baseline alone changes no return: G minus V = [2-.5, 2-1, 5-1.5, 4-2, 8-2.5, 6-3]
    ("reward_to_go", "option1", "value", False, [1.5, 1, 3.5, 2, 5.5, 3]),
    ("reward_to_go", "option2", "value", False, [1.5, 0.5, 3.5, 1, 5.5, 1.5]),  # w G - w V
    # bootstrap at the truncation (4 + .5*40 = 24) and the segment end (6 + .5*60 = 36), not
    # at the termination: G = [2, 2, 15, 24, 23, 36]
    ("reward_to_go", "option1", "none", True, [2, 2, 15, 24, 23, 36]),
    ("reward_to_go", "option1", "value", True, [1.5, 1, 13.5, 22, 20.5, 33]),
    ("reward_to_go", "option2", "value", True, [1.5, 0.5, 13.5, 11, 20.5, 16.5]),
    ("total_return", "option1", "none", False, [3, 3, 7, 7, 11, 11]),  # undiscounted R(tau)
    ("total_return", "option2", "none", False, [2, 2, 5, 5, 8, 8]),  # sum gamma^(t-t0) r_t
    ("total_return", "option1", "value", False, [2.5, 2, 5.5, 5, 8.5, 8]),  # R(tau) - V
    ("total_return", "option2", "value", False, [1.5, 1.5, 3.5, 4, 5.5, 6.5]),  # minus gamma^(t-t0) V
    # R(tau) + V(s') (weight 1) where it bootstraps: [3, 3+4+40, 5+6+60] (minus V)
    ("total_return", "option1", "none", True, [3, 3, 47, 47, 71, 71]),
    ("total_return", "option1", "value", True, [2.5, 2, 45.5, 45, 68.5, 68]),
    # [2, 15, 23] minus gamma^(t-t0) V
    ("total_return", "option2", "value", True, [1.5, 1.5, 13.5, 14, 20.5, 21.5]),
])
def test_monte_carlo_hand_computed(name, discounting, baseline, bootstrap, expected):
    phi, targets = _phi(name, discounting, baseline, bootstrap)
    np.testing.assert_allclose(phi, expected, rtol=1e-6)
    # the critic's target G_t bootstraps whenever a critic is fitted (a value baseline or a bootstrap)
    bootstrapped = [2, 2, 15, 24, 23, 36] if baseline == "value" or bootstrap else [2, 2, 5, 4, 8, 6]
    np.testing.assert_allclose(targets, bootstrapped, rtol=1e-6)


def test_a_baseline_changes_only_the_variance():
    """The issue's case: a 3-step truncated episode with V(final obs) = 50 and V = 0 elsewhere
    gets Phi = [3, 3, 3] (rewards 1 each, total return) with every baseline but value, which
    subtracts V(s_t) = 0: the same; 53 only with bootstrap_truncation."""
    r, v, nv = jnp.ones(3), jnp.zeros(3), jnp.array([0.0, 0.0, 50.0])
    term, trunc = jnp.zeros(3, bool), jnp.array([False, False, True])
    for baseline in ("none", "mean", "leave_one_out", "value", "optimal"):
        phi, _ = estimators.total_return(r, v, nv, term, trunc, gamma=1.0, baseline=baseline)
        np.testing.assert_allclose(phi, [3, 3, 3])
    phi, _ = estimators.total_return(r, v, nv, term, trunc, gamma=1.0, baseline="none", bootstrap_truncation=True)
    np.testing.assert_allclose(phi, [53, 53, 53])


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
    # bootstrapped, with the value baseline it is the n-step return to the end of the segment (A3C)
    adv, targets = estimators.reward_to_go(r, v, nv, term, trunc, gamma=gamma, baseline="value",
                                           bootstrap_truncation=True)
    adv_n, targets_n = estimators.nstep(r, v, nv, term, trunc, gamma=gamma)
    np.testing.assert_allclose(adv, adv_n, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, targets_n, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_reinforce_with_gae_lambda_1_is_reward_to_go_minus_value(tmp_path):
    """estimator=gae with lambda=1 is the Monte-Carlo return minus V (000 eq. 4.2.7), bootstrapped
    at truncation, so one REINFORCE update with it gives the parameters of reward_to_go with the
    value baseline and bootstrap_truncation."""
    import jax

    from rlcli import train as training

    def one_update(overrides):
        cfg = compose(["algo=reinforce", "env=CartPole-v1", "env.backend=jax", "num_envs=2",
                       "total_steps=2000", *overrides])
        parts = training.setup(cfg)
        backend = training.make_loop(parts)
        state, _ = backend.chunk(backend.init(), 1)
        return jax.tree.leaves(state.learner.params)

    for a, b in zip(one_update(["estimator=gae", "estimator.lambda=1.0"]),
                    one_update(["estimator=reward_to_go", "estimator.baseline=value",
                                "estimator.bootstrap_truncation=true"])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_mean_baseline_is_a_mean_over_episodes():
    """The issue's case: one column, a 1-step episode (R = 1) then a 3-step one (R = 3): the mean
    of eq. 3.1.11 over the batch's episodes is b = 2 (a mean over the 4 steps would give 2.5)."""
    term = jnp.array([[1], [0], [0], [1]], bool)
    trunc = jnp.zeros_like(term)
    phi = jnp.array([[1.0], [3.0], [3.0], [3.0]])  # R(tau) on every step of its episode
    got = estimators.subtract_mean_baseline(phi, term, trunc, jnp.ones((4, 1)), per_step=False)
    np.testing.assert_allclose(got[:, 0], [1 - 2, 3 - 2, 3 - 2, 3 - 2])
    # leave-one-out: each episode's b is the other's return
    got = estimators.subtract_mean_baseline(phi, term, trunc, jnp.ones((4, 1)), per_step=False, leave_one_out=True)
    np.testing.assert_allclose(got[:, 0], [1 - 3, 3 - 1, 3 - 1, 3 - 1])


def test_reward_to_go_mean_baseline_is_per_step_of_the_episode():
    """b_t is the mean over the used episodes of their reward-to-go at the same step j of the
    episode, over the episodes still running at j. Column 0: episodes of 2 and 3 steps; column
    1: one of 4 steps, then a masked step. Reward-to-go G per step: col 0 [5, 2 | 9, 4, 1],
    col 1 [7, 6, 3, 1, 8(masked)]."""
    term = jnp.array([[0, 0], [1, 0], [0, 0], [0, 1], [1, 0]], bool)
    G = jnp.array([[5.0, 7.0], [2.0, 6.0], [9.0, 3.0], [4.0, 1.0], [1.0, 8.0]])
    mask = jnp.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]], jnp.float32)
    got = np.asarray(estimators.subtract_mean_baseline(G, term, jnp.zeros_like(term), mask, per_step=True))
    # j = 0: episodes' G 5, 9, 7 -> 7; j = 1: 2, 4, 6 -> 4; j = 2: 1, 3 -> 2; j = 3: 1 -> 1
    expected = [[5 - 7, 7 - 7], [2 - 4, 6 - 4], [9 - 7, 3 - 2], [4 - 4, 1 - 1], [1 - 2, None]]
    for t in range(5):
        for n in range(2):
            if expected[t][n] is not None:
                assert got[t, n] == pytest.approx(expected[t][n]), (t, n)
    loo = np.asarray(estimators.subtract_mean_baseline(G, term, jnp.zeros_like(term), mask, per_step=True,
                                                       leave_one_out=True))
    # j = 0 for col 0's first episode: (9 + 7) / 2 = 8; j = 3 has one episode: b = 0
    assert loo[0, 0] == pytest.approx(5 - 8) and loo[3, 1] == pytest.approx(1 - 0)
    assert loo[4, 0] == pytest.approx(1 - 3)  # j = 2 of col 0's second episode: the other is 3


def test_episode_mask_hand_computed():
    """Columns start fresh at t = 0; with T = 8 and a time limit L = 5, the episodes starting at
    t0 <= 3 are used. Column 0: episodes [0-1], [2-4], [5-7]: the third starts at 5, not used.
    Column 1: [0-3], [4-5], [6-7]: only the first. Column 2: [0-4] then an unfinished one."""
    done = np.zeros((8, 3), bool)
    done[[1, 4, 7], 0] = True
    done[[3, 5, 7], 1] = True
    done[4, 2] = True
    mask = reinforce.episode_mask(jnp.asarray(done), jnp.zeros((8, 3), bool), 8 - 5)
    np.testing.assert_array_equal(np.asarray(mask, int).T, [[1, 1, 1, 1, 1, 0, 0, 0],
                                                            [1, 1, 1, 1, 0, 0, 0, 0],
                                                            [1, 1, 1, 1, 1, 0, 0, 0]])


def test_episode_batches_have_no_length_bias():
    """Synthetic episodes of 500 steps (probability 0.8) and 100 steps (0.2), i.i.d., fill
    2,048 columns that start fresh at t = 0 (T = 1000, time limit 500). The share of short
    episodes among the used ones is the i.i.d. share 0.2 within 3 standard errors. The rule it
    replaces (columns going on from one rollout to the next, T = 500, an episode used when it
    starts and ends inside one rollout) gives about 0.5, far outside."""
    rng = np.random.default_rng(0)
    T, L, columns = 1000, 500, 2048
    done = np.zeros((T, columns), bool)
    short_start = np.zeros((T, columns), bool)  # the episode starting here is a short one
    for n in range(columns):
        t = 0
        while t < T:
            length = 100 if rng.random() < 0.2 else 500
            short_start[t, n] = length == 100
            if t + length - 1 < T:
                done[t + length - 1, n] = True
            t += length
    mask = np.asarray(reinforce.episode_mask(jnp.asarray(done), jnp.zeros_like(done), T - L))
    starts = np.concatenate([np.ones((1, columns), bool), done[:-1]], axis=0)
    used = starts & mask
    share = short_start[used].mean()
    se = np.sqrt(0.2 * 0.8 / used.sum())
    assert abs(share - 0.2) < 3 * se, (share, se, used.sum())
    # the old rule, on a stream of episodes per column cut into rollouts of 500 steps
    old_short = old_all = 0
    for n in range(256):
        start = 0
        while start < 20 * 500:
            length = 100 if rng.random() < 0.2 else 500
            if start // 500 == (start + length - 1) // 500:
                old_all, old_short = old_all + 1, old_short + (length == 100)
            start += length
    assert old_short / old_all - 0.2 > 10 * np.sqrt(0.2 * 0.8 / old_all), old_short / old_all


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
        "estimator.baseline='bogus' is not allowed (allowed: one of none, mean, leave_one_out, value, optimal, "
        "q_control_variate)")
    assert _error(["algo=reinforce", "estimator=reward_to_go", "estimator.baseline=optimal"]) == (
        "estimator.baseline=optimal does not fit estimator=reward_to_go (allowed with estimator.baseline=optimal: "
        "estimator=total_return; 000 eq. 3.1.17 is defined for the whole-trajectory return)")
    message = _error(["algo=reinforce", "estimator=total_return", "estimator.baseline=q_control_variate"])
    assert message.startswith("estimator.baseline=q_control_variate does not fit estimator=total_return "
                              "(allowed with estimator.baseline=q_control_variate: estimator=reward_to_go")
    assert _error(["algo=is_pg", "estimator=total_return", "estimator.baseline=optimal"]) == (
        "estimator.baseline=optimal does not fit algo=is_pg (allowed with algo=is_pg: estimator.baseline=none, mean, "
        "leave_one_out, value)")
    assert "estimator.discounting='option3'" in _error(["algo=reinforce", "estimator.discounting=option3"])
    assert "algo.num_steps=200 is not allowed" in _error(["algo=reinforce", "algo.num_steps=200"])


def test_bad_input_cli_one_line(tmp_path, cli):
    result = cli(["train", "algo=ppo", "estimator=reward_to_go"], tmp_path)
    assert result.returncode == 2 and list(tmp_path.iterdir()) == []
    assert result.stderr.strip() == (
        "rlcli train: error: estimator=reward_to_go does not fit algo=ppo "
        "(allowed with algo=ppo: estimator=td, nstep, gae)")


@pytest.mark.extended
def test_reinforce_runs_and_masks(tmp_path):
    """Two updates of 4 fresh columns x 1000 steps on CartPole-v1 (time limit 500): a random-ish
    policy ends episodes in ~20 steps, and the episodes starting at t <= 500 are used: about
    half the steps, some 25 episodes per column."""
    summary, records = train(tmp_path, ["algo=reinforce", "num_envs=4", "algo.num_steps=1000", "total_steps=8000",
                                        "log_interval=4000", "eval_episodes=2",
                                        "estimator=total_return", "estimator.baseline=mean"])
    assert summary["total_steps"] == 8000 and len(records) == 2
    first = records[0]
    assert 0.45 < first["train/used_fraction"] < 0.6
    assert first["train/episodes"] >= 4 * 500 / 50
    assert all(math.isfinite(r["loss/total"]) for r in records)


# ---- the optimal baseline (000 eq. 3.1.17) and the Q control variate (000 eq. 4.2.6) ----------


def test_optimal_baseline_leave_one_out_hand_computed():
    # three episodes (the fourth slot is padding), a 2-component gradient
    g = jnp.array([[1.0, 2.0], [2.0, 0.0], [1.0, 1.0], [9.0, 9.0]])
    R = jnp.array([3.0, 1.0, 2.0, 100.0])
    valid = jnp.array([1, 1, 1, 0])
    b = np.asarray(estimators.optimal_baseline(g, R, valid))
    # b_{k,-i} = sum_{j!=i} g_jk^2 R_j / sum_{j!=i} g_jk^2 over the valid j
    np.testing.assert_allclose(b[0], [(4 * 1 + 1 * 2) / 5, (0 + 1 * 2) / 1], rtol=1e-6)
    np.testing.assert_allclose(b[1], [(1 * 3 + 1 * 2) / 2, (4 * 3 + 1 * 2) / 5], rtol=1e-6)
    np.testing.assert_allclose(b[2], [(1 * 3 + 4 * 1) / 5, (4 * 3) / 4], rtol=1e-6)
    total = np.asarray(estimators.optimal_baseline_gradient(g, R, valid))
    expected = sum(np.asarray(g[i]) * (float(R[i]) - b[i]) for i in range(3))
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    # a component that only episode 0 moves: no other episode to estimate b_{-0} from, b = 0
    lonely = np.asarray(estimators.optimal_baseline(jnp.array([[1.0], [0.0]]), jnp.array([5.0, 7.0]),
                                                   jnp.array([1, 1])))
    np.testing.assert_allclose(lonely, [[0.0], [5.0]])


def test_episode_scores_sum_per_step_gradients_per_episode():
    # log pi = w0 * obs + w1 * action: grad = (obs, action) per step
    log_prob_fn = lambda w, obs, action: w[0] * obs + w[1] * action  # noqa: E731
    # [T=4, N=2]: column 0 ends an episode at t=1 and one at t=3; column 1 one at t=2
    done = jnp.array([[0, 0], [1, 0], [0, 1], [1, 0]], bool)
    obs = jnp.arange(8.0).reshape(4, 2)
    action = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    mask = jnp.array([[1, 1], [1, 1], [1, 1], [1, 0]], jnp.float32)  # column 1's last step cut
    slots = reinforce.episode_slots(done, jnp.zeros_like(done))
    np.testing.assert_array_equal(slots, [[0, 4], [0, 4], [1, 4], [1, 5]])
    scores = np.asarray(reinforce.episode_scores(log_prob_fn, jnp.zeros(2), obs.reshape(-1), action.reshape(-1),
                                                 mask.reshape(-1), slots.reshape(-1), 8))
    np.testing.assert_allclose(scores[0], [0 + 2, 1 + 0])
    np.testing.assert_allclose(scores[1], [4 + 6, 1 + 1])
    np.testing.assert_allclose(scores[4], [1 + 3 + 5, 0 + 1 + 1])
    np.testing.assert_allclose(scores[[2, 3, 5, 6, 7]], 0.0)


def test_control_variate_loss_gradient_hand_computed():
    """One state, 3 actions, softmax logits theta: grad of the 4.2.6 surrogate is
    (onehot(a) - pi) (Phi - Q(a)) + sum_b dpi(b)/dtheta Q(b), dpi(b)/dtheta_c = pi_b (1[b=c] - pi_c)."""
    import jax

    theta = jnp.array([0.3, -0.2, 0.5])
    q = jnp.array([1.0, 4.0, -2.0])
    a, phi, w = 1, 6.0, 0.5

    def loss(th):
        log_prob = jax.nn.log_softmax(th)[a]
        return estimators.control_variate_loss(log_prob, estimators.expected_q_discrete(th, q), jnp.float32(w * phi),
                                               q[a], jnp.float32(w))

    pi = np.asarray(jax.nn.softmax(theta))
    onehot = np.eye(3)[a]
    jac = np.diag(pi) - np.outer(pi, pi)  # dpi_b / dtheta_c
    expected = (onehot - pi) * (w * phi - w * float(q[a])) + w * jac @ np.asarray(q)
    np.testing.assert_allclose(-np.asarray(jax.grad(loss)(theta)), expected, rtol=1e-5)
    # the correction term alone is the exact gradient of E_pi[Q] (the Q critic held constant)
    np.testing.assert_allclose(jax.grad(lambda th: estimators.expected_q_discrete(th, q))(theta), jac @ np.asarray(q),
                               rtol=1e-5)


def _synthetic(overrides, T=6, seed=0):
    """reinforce.make on CartPole's spec (small net, SGD with lr 1, no clipping) and a synthetic
    [T, 2] batch with a termination in each column and a partial episode at the end."""
    import jax

    from rlcli import envs
    from rlcli.algos import Batch

    cfg = compose(["algo=reinforce", "num_envs=2", "network.hidden_sizes=[8]", "algo.optimizer=sgd",
                   "algo.learning_rate=1.0", "algo.max_grad_norm=1e9", "algo.normalize_advantages=false",
                   *overrides])
    spec = envs.make_spec("CartPole-v1", "jax")
    algo = reinforce.make(spec, cfg, 10)
    rng = np.random.default_rng(seed)
    term = np.zeros((T, 2), bool)
    term[[1, 3], 0] = True
    term[2, 1] = True
    batch = Batch(obs=jnp.asarray(rng.normal(size=(T, 2, 4)), jnp.float32),
                  action=jnp.asarray(rng.integers(0, 2, (T, 2)), jnp.int32),
                  reward=jnp.asarray(rng.normal(size=(T, 2)) + 1.0, jnp.float32),
                  terminated=jnp.asarray(term), truncated=jnp.zeros((T, 2), bool),
                  log_prob=jnp.zeros((T, 2)), value=jnp.zeros((T, 2)),
                  next_obs=jnp.asarray(rng.normal(size=(T, 2, 4)), jnp.float32))
    # jitted: op by op, the update's few hundred operations each compiled alone (about 15 s)
    learner = jax.jit(algo.init)(jax.random.PRNGKey(seed))
    new, metrics = jax.jit(algo.update)(learner, batch, jax.random.PRNGKey(1))
    # SGD with lr 1: the update is minus the gradient
    grads = jax.tree.map(lambda a, b: a - b, learner.params, new.params)
    return cfg, spec, learner.params, batch, grads, metrics


@pytest.mark.slow
def test_reinforce_optimal_baseline_update_matches_per_episode_reference():
    """The update with estimator.baseline=optimal is -(1/(T N)) sum_i g_i (R_i - b_{-i}), g_i
    from a per-episode jax.grad of sum_t log pi (a loop over the batch's whole episodes),
    R_i the undiscounted return, b_{-i} leave-one-out per component (numpy)."""
    import jax

    from rlcli import distributions, networks

    cfg, spec, params, batch, grads, metrics = _synthetic(["estimator=total_return", "estimator.baseline=optimal"])
    network, dist = networks.make(cfg.network, spec), distributions.for_action_space(True)
    # whole episodes: column 0 steps 0-1 and 2-3 (4-5 cut), column 1 steps 0-2 (3-5 cut)
    episodes = [(0, [0, 1]), (0, [2, 3]), (1, [0, 1, 2])]
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    g, R = [], []
    for col, steps in episodes:
        obs, act = batch.obs[jnp.array(steps), col], batch.action[jnp.array(steps), col]
        g.append(flat(jax.grad(lambda p: jnp.sum(dist.log_prob(network.apply(p, obs)[0], act)))(params)))
        R.append(float(jnp.sum(batch.reward[jnp.array(steps), col])))
    g, R = np.array(g, np.float64), np.array(R)
    expected = np.zeros_like(g[0])
    for i in range(3):
        others = [j for j in range(3) if j != i]
        num, den = (g[others] ** 2 * R[others, None]).sum(0), (g[others] ** 2).sum(0)
        b = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
        expected += g[i] * (R[i] - b)
    expected = -expected / 12  # the sum over the used steps / (T x N) = 6 x 2
    np.testing.assert_allclose(flat(grads), expected, rtol=2e-3, atol=1e-6)
    assert np.abs(expected).max() > 1e-3 and math.isfinite(metrics["train/optimal_baseline"])


def test_reinforce_q_control_variate_update_matches_hand_formula():
    """Discrete actions: the policy gradient of estimator.baseline=q_control_variate is
    (1/(T N)) sum over the used steps t of [grad log pi(a_t|s_t) (G_t - Q(s_t, a_t))
    + sum_a grad pi(a|s_t) Q(s_t, a)] (000 eq. 4.2.6) and Q's gradient that of
    vf_coef/2 mean (Q(s_t, a_t) - G_t)^2."""
    import jax

    from rlcli import networks

    cfg, spec, params, batch, grads, _ = _synthetic(["estimator=reward_to_go", "estimator.baseline=q_control_variate",
                                                     "algo.gamma=0.9", "algo.vf_coef=0.5"])
    network = networks.make(cfg.network, spec)
    q_net = networks.QNetwork(2, True, (8,), cfg.network.activation)
    mask = reinforce.episode_mask(batch.terminated, batch.truncated, 1000 - 500)
    G = estimators.batched(estimators.make("reward_to_go", 0.9))(batch.reward, batch.value, batch.value,
                                                                  batch.terminated, batch.truncated)[0]
    used = [(t, n) for t in range(6) for n in range(2) if mask[t, n]]
    q_all = q_net.apply(params["q"], batch.obs)

    def surrogate(ac):  # sum of the per-step terms, Q and G constant
        total = 0.0
        for t, n in used:
            pi = jax.nn.softmax(network.apply(ac, batch.obs[t, n])[0])
            a = int(batch.action[t, n])
            total += jnp.log(pi[a]) * float(G[t, n] - q_all[t, n, a]) + jnp.sum(pi * q_all[t, n])
        return total / mask.size  # the sum over the used steps / (T x N)

    def q_loss(qp):
        q = q_net.apply(qp, batch.obs)
        return 0.5 * sum((q[t, n, int(batch.action[t, n])] - G[t, n]) ** 2 for t, n in used) / len(used)

    expected_ac = jax.tree.map(lambda x: -x, jax.grad(surrogate)(params["actor_critic"]))
    expected_q = jax.tree.map(lambda x: 0.5 * x, jax.grad(q_loss)(params["q"]))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves({"actor_critic": expected_ac, "q": expected_q})):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)


@pytest.mark.extended
@pytest.mark.parametrize("overrides", [
    ["estimator=total_return", "estimator.baseline=optimal"],
    ["estimator=reward_to_go", "estimator.baseline=q_control_variate"],
    ["env=Pendulum-v1", "algo.num_steps=200", "estimator=reward_to_go", "estimator.baseline=q_control_variate",
     "estimator.discounting=option2"],
])
def test_new_baselines_train_smoke(tmp_path, overrides, capsys):
    """Two short updates with each new baseline (discrete and Gaussian Q control variate):
    finite losses, used episodes, and a checkpoint that `rlcli eval` restores and plays: its
    deterministic evaluation repeats the run's final one."""
    import json

    from omegaconf import OmegaConf

    from rlcli.commands import evaluate

    run_overrides = ["algo=reinforce", "env.backend=jax", "num_envs=2", "eval_episodes=2", "network.hidden_sizes=[16]",
                     *overrides, "total_steps=4000" if "env=Pendulum-v1" not in overrides else "total_steps=800",
                     "log_interval=1"]
    summary, records = train(tmp_path, run_overrides)
    assert len(records) == 2 and all(math.isfinite(r["loss/total"]) for r in records)
    assert all(r["train/episodes"] >= 2 for r in records)
    assert math.isfinite(summary["final_eval_return_mean"])

    run = tmp_path / "run"  # the run directory as `rlcli train` leaves it: its config beside the rest
    (run / ".hydra").mkdir()
    OmegaConf.save(compose(["logger=quiet", *run_overrides]), run / ".hydra" / "config.yaml")
    assert evaluate.main([f"run={run}"]) == 0
    assert "rlcli eval: reinforce on" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["checkpoint"] == summary["total_steps"] and result["deterministic"] is True
    assert [s["return_mean"] for s in result["seeds"]] == pytest.approx(summary["final_eval"]["return_mean"], rel=1e-6)
