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


@pytest.mark.slow
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


@pytest.mark.extended
def test_ppo_on_mujoco_halfcheetah_gymnasium_backend(tmp_path):
    """The MuJoCo extra: PPO with both normalisations runs a few updates of HalfCheetah-v5 on
    the gymnasium backend (6-D Box actions clipped to [-1, 1]) with finite losses."""
    summary, records = train(tmp_path, ["algo=ppo", "env=HalfCheetah-v5", "num_envs=2", "algo.num_steps=64",
                                        "algo.num_minibatches=2", "total_steps=256", "log_interval=128",
                                        "eval_episodes=1", "normalize.obs=true", "normalize.reward=true"])
    assert summary["backend"] == "gymnasium" and summary["total_steps"] == 256
    assert len(records) == 2 and all(math.isfinite(r["loss/total"]) for r in records)
    assert math.isfinite(summary["final_eval_return_mean"])


# ---- one whole update on a fixed batch, written out ----------------------------------------------

FIXED_T, FIXED_N, FIXED_GAMMA, FIXED_LAM = 4, 2, 0.9, 0.8
FIXED_EPOCHS, FIXED_MINIBATCHES, FIXED_UPDATES = 2, 2, 3
FIXED_LR, FIXED_EPS, FIXED_MAX_NORM, FIXED_CLIP, FIXED_VF, FIXED_ENT = 0.03, 1e-5, 0.5, 0.05, 0.5, 0.02


def _gae_by_hand(r, v, v_next, term, trunc):
    """000 eq. 4.2.10 per env column: delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t),
    A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}; y_t = A_t + V(s_t)."""
    adv = np.zeros_like(r)
    for n in range(r.shape[1]):
        carry = 0.0
        for t in reversed(range(r.shape[0])):
            delta = r[t, n] + FIXED_GAMMA * (1.0 - term[t, n]) * v_next[t, n] - v[t, n]
            carry = delta + FIXED_GAMMA * FIXED_LAM * (1.0 - (term[t, n] or trunc[t, n])) * carry
            adv[t, n] = carry
    return adv, adv + v


def _ppo_by_hand(network, discrete, params, batch, key, clip_value, normalize="minibatch"):
    """PPO's update (Schulman et al. 2017) written out: GAE once with the rollout's parameters,
    then per epoch a permutation of the T x N samples (time-major flattening) into minibatches,
    and per minibatch the loss -mean min(rho A, clip(rho, 1 +- eps) A) + vf_coef L_V - ent_coef
    mean H with A standardised over the minibatch (`normalize="batch"`: over the whole batch, to
    show the test tells them apart), L_V = 1/2 mean (V - y)^2 or its clipped form
    1/2 mean max((V - y)^2, (V_old + clip(V - V_old, +-eps) - y)^2); gradient clipped to global
    norm max_norm, then Adam (b1 0.9, b2 0.999, bias-corrected) with the learning rate annealed
    linearly over updates x epochs x minibatches optimizer steps, all in NumPy."""
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    _, v = network.apply(params, batch.obs)
    _, v_next = network.apply(params, batch.next_obs)
    adv, y = _gae_by_hand(f64(batch.reward), f64(v), f64(v_next), np.asarray(batch.terminated),
                          np.asarray(batch.truncated))
    size = FIXED_T * FIXED_N
    flat = lambda x: np.asarray(x).reshape((size,) + np.shape(x)[2:])  # noqa: E731
    obs, action, old_log_prob, old_v, adv, y = map(flat, (batch.obs, batch.action, batch.log_prob, v, adv, y))
    if normalize == "batch":
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    obs, action, old_log_prob, old_v, adv, y = map(jnp.asarray, (obs, action, old_log_prob, old_v, adv, y))

    def loss(p, idx):
        dist_params, values = network.apply(p, obs[idx])
        if discrete:
            log_p = jax.nn.log_softmax(dist_params, axis=-1)
            log_prob = log_p[jnp.arange(len(idx)), action[idx]]
            entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
        else:
            mean, log_std = dist_params
            var = jnp.exp(2 * log_std)
            log_prob = jnp.sum(-0.5 * (jnp.log(2 * np.pi * var) + (action[idx] - mean) ** 2 / var), axis=-1)
            entropy = jnp.sum(log_std + 0.5 * np.log(2 * np.pi * np.e)) * jnp.ones(len(idx))
        a = adv[idx]
        if normalize == "minibatch":
            a = (a - a.mean()) / (a.std() + 1e-8)
        rho = jnp.exp(log_prob - old_log_prob[idx])
        surrogate = -jnp.mean(jnp.minimum(rho * a, jnp.clip(rho, 1 - FIXED_CLIP, 1 + FIXED_CLIP) * a))
        if clip_value:
            clipped = old_v[idx] + jnp.clip(values - old_v[idx], -FIXED_CLIP, FIXED_CLIP)
            value_loss = 0.5 * jnp.mean(jnp.maximum((values - y[idx]) ** 2, (clipped - y[idx]) ** 2))
        else:
            value_loss = 0.5 * jnp.mean((values - y[idx]) ** 2)
        return surrogate + FIXED_VF * value_loss - FIXED_ENT * jnp.mean(entropy)

    grad = jax.jit(jax.grad(loss))
    leaves, tree = jax.tree.flatten(params)
    p = [f64(x) for x in leaves]
    m = [np.zeros_like(x) for x in p]
    s = [np.zeros_like(x) for x in p]
    total_steps = FIXED_UPDATES * FIXED_EPOCHS * FIXED_MINIBATCHES
    step = 0
    for k in jax.random.split(key, FIXED_EPOCHS):
        order = np.asarray(jax.random.permutation(k, size)).reshape(FIXED_MINIBATCHES, -1)
        for idx in order:
            g = [f64(x) for x in jax.tree.leaves(grad(jax.tree.unflatten(tree, [np.float32(x) for x in p]), idx))]
            norm = np.sqrt(sum(np.sum(x ** 2) for x in g))
            g = [x * min(1.0, FIXED_MAX_NORM / norm) for x in g]
            lr = FIXED_LR * (1.0 - step / total_steps)
            step += 1
            for i, gi in enumerate(g):
                m[i] = 0.9 * m[i] + 0.1 * gi
                s[i] = 0.999 * s[i] + 0.001 * gi ** 2
                m_hat, s_hat = m[i] / (1 - 0.9 ** step), s[i] / (1 - 0.999 ** step)
                p[i] = p[i] - lr * m_hat / (np.sqrt(s_hat) + FIXED_EPS)
    return jax.tree.unflatten(tree, p)


@pytest.mark.slow
@pytest.mark.parametrize("env,clip_value", [("CartPole-v1", True), ("Pendulum-v1", False)])
def test_whole_update_on_a_fixed_batch_matches_the_written_out_update(env, clip_value):
    """algo.update on a fixed 4 x 2 batch (an episode that terminates and one cut by the time
    limit inside it; old log-probs off the current policy so that some ratios are clipped) gives
    the parameters of `_ppo_by_hand` to 1e-6, for both action spaces and both value losses; the
    same update with the advantages standardised over the whole batch instead of per minibatch,
    or without the value clip, lands elsewhere (the check resolves the differences)."""
    from rlcli import config

    cfg = compose(["algo=ppo", f"env={env}", "estimator=gae", f"estimator.lambda={FIXED_LAM}",
                   f"num_envs={FIXED_N}", f"algo.num_steps={FIXED_T}", f"algo.gamma={FIXED_GAMMA}",
                   f"algo.update_epochs={FIXED_EPOCHS}", f"algo.num_minibatches={FIXED_MINIBATCHES}",
                   f"algo.learning_rate={FIXED_LR}", "algo.anneal_lr=true", "algo.optimizer=adam",
                   f"algo.eps={FIXED_EPS}", f"algo.max_grad_norm={FIXED_MAX_NORM}", f"algo.clip_coef={FIXED_CLIP}",
                   f"algo.clip_value_loss={str(clip_value).lower()}", "algo.target_kl=null",
                   f"algo.vf_coef={FIXED_VF}", f"algo.ent_coef={FIXED_ENT}", "algo.normalize_advantages=true",
                   "algo.discount_surrogate=false", "network.hidden_sizes=[6]", "network.shared=false",
                   "network.log_std_init=-0.5"])
    config.validate(cfg)
    spec = envs.make_spec(env, "jax")
    algo = algos.make("ppo", spec, config.typed(cfg), FIXED_UPDATES)
    learner = algo.init(jax.random.PRNGKey(0))
    network = algos.actor_critic_policy(spec, config.typed(cfg), None).network
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(FIXED_T + 1, FIXED_N) + spec.obs_shape).astype(np.float32)
    action, info = algo.act(learner, jnp.asarray(obs[:-1]), jax.random.PRNGKey(3))
    old_log_prob = info.log_prob + jnp.asarray(rng.normal(scale=0.3, size=(FIXED_T, FIXED_N)), jnp.float32)
    terminated = np.zeros((FIXED_T, FIXED_N), bool)
    truncated = np.zeros((FIXED_T, FIXED_N), bool)
    terminated[1, 0] = truncated[2, 1] = True
    batch = Batch(jnp.asarray(obs[:-1]), action, jnp.asarray(rng.normal(size=(FIXED_T, FIXED_N)), jnp.float32),
                  jnp.asarray(terminated), jnp.asarray(truncated), old_log_prob, info.value, jnp.asarray(obs[1:]))
    key = jax.random.PRNGKey(4)
    new, metrics = jax.jit(algo.update)(learner, batch, key)
    assert float(metrics["policy/clip_fraction"]) > 0  # the clip is active on some samples

    expected = _ppo_by_hand(network, spec.discrete, learner.params, batch, key, clip_value)
    moved = 0.0
    for (path, got), want, before in zip(jax.tree_util.tree_leaves_with_path(new.params), jax.tree.leaves(expected),
                                         jax.tree.leaves(learner.params)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
        moved = max(moved, float(np.abs(np.asarray(want) - np.asarray(before)).max()))
    assert moved > 0.03  # four Adam steps of 0.03 (annealed) moved the parameters
    # the check resolves per-minibatch from whole-batch standardisation, and (where configured)
    # the clipped value loss from the plain one: the clip is active after the first step
    variants = [{"normalize": "batch"}] + ([{"clip_value": False}] if clip_value else [])
    for variant in variants:
        other = _ppo_by_hand(network, spec.discrete, learner.params, batch, key, **{"clip_value": clip_value,
                                                                                   **variant})
        assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                   for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(expected))) > 1e-4, variant
