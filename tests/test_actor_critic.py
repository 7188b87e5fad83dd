"""The actor-critic variants of the seeds: batch_ac (000 Alg. 16/17), online_ac (Alg. 18) and
q_ac (001 "Q Actor Critic")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import compose
from rlcli import config, losses, train as training
from rlcli.algos import Batch, q_ac


def _parts(overrides):
    cfg = compose(["env=CartPole-v1", "env.backend=jax", "num_envs=4", "total_steps=100000", *overrides])
    config.validate(cfg)
    return cfg, training.setup(cfg)


def _batch(cfg, parts, seed=0):
    """A batch of the initial policy: one chunk of rollout collected by the jax backend."""
    backend = training.make_loop(parts)
    state = jax.tree.map(lambda x: x[0], backend.init())  # seed 0
    from rlcli.envs import jax_backend

    env = jax_backend.make(cfg.env.id)
    num_envs, num_steps = int(cfg.num_envs), int(cfg.algo.num_steps)

    def one_step(carry, _):
        obs, env_state, key = carry
        key, k_act, k_env = jax.random.split(key, 3)
        action, info = parts.algo.act(state.learner, obs, k_act)
        env_state, step = jax.vmap(env.step)(jax.random.split(k_env, num_envs), env_state, action)
        row = Batch(obs, action, step.reward, step.terminated, step.truncated, info.log_prob, info.value,
                    step.next_obs)
        return (step.obs, env_state, key), row

    @jax.jit  # one program for the rollout, not one per operation
    def rollout(reset_key, key):
        obs, env_state = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))
        return jax.lax.scan(one_step, (obs, env_state, key), None, num_steps)[1]

    return state.learner, rollout(jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1))


def test_sarsa_next_actions_hand_computed():
    # one column: the episode ends (terminated) at t=1 and (truncated) at t=3; the rollout ends at t=4
    actions = jnp.array([[1], [2], [3], [4], [5]])
    sampled = jnp.array([[10], [20], [30], [40], [50]])
    terminated = jnp.array([[0], [1], [0], [0], [0]], bool)
    truncated = jnp.array([[0], [0], [0], [1], [0]], bool)
    np.testing.assert_array_equal(q_ac.sarsa_next_actions(actions, sampled, terminated, truncated),
                                  [[2], [20], [4], [40], [50]])


@pytest.mark.slow
def test_online_ac_is_algorithm_18_step_by_step():
    """One online_ac update on a batch of N transitions against Alg. 18 written out with optax
    and the network: critic step to r + gamma V(s'), then the TD error of the *updated*
    critic weights the actor step (a2c would use the critic before its step)."""
    cfg, parts = _parts(["algo=online_ac"])
    learner, batch = _batch(cfg, parts)
    new, metrics = jax.jit(parts.algo.update)(learner, batch, jax.random.PRNGKey(0))

    from rlcli import distributions, networks
    from rlcli.algos import make_optimizer

    net = networks.make(cfg.network, parts.spec)
    dist = distributions.for_action_space(True)
    tx = make_optimizer(cfg.algo, parts.sizes.num_updates)
    gamma = float(cfg.algo.gamma)

    def v(params, x):
        return net.apply(params, x)[1]

    @jax.jit  # one program: op by op, its few hundred operations each compiled alone took 20 s
    def algorithm_18(learner, batch):
        obs, next_obs, r = batch.obs[0], batch.next_obs[0], batch.reward[0]
        alive = 1.0 - batch.terminated[0].astype(jnp.float32)
        # step 3: update V towards r + gamma V(s') (target fixed)
        target = r + gamma * alive * v(learner.params, next_obs)
        grads = jax.grad(lambda p: 0.5 * jnp.mean((v(p, obs) - target) ** 2))(learner.params)
        updates, _ = tx.update(grads, tx.init(learner.params), learner.params)
        params = optax.apply_updates(learner.params, updates)
        # steps 4-6: A with the updated critic, theta <- theta + alpha grad log pi(a|s) A
        advantage = r + gamma * alive * v(params, next_obs) - v(params, obs)
        grads = jax.grad(lambda p: -jnp.mean(dist.log_prob(net.apply(p, obs)[0], batch.action[0]) * advantage))(params)
        updates, _ = tx.update(grads, learner.opt_state, params)
        return optax.apply_updates(params, updates)

    params = algorithm_18(learner, batch)

    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(metrics["loss/value_fitted"]) == pytest.approx(float(metrics["loss/value"]))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["monte_carlo", pytest.param("bootstrap", marks=pytest.mark.extended)])
def test_batch_ac_fits_the_critic_before_the_actor_step(target):
    """Step 3 of Alg. 16/17, fitting the critic to the batch: with the Monte-Carlo target the
    targets are the sampled discounted reward sums (its loss at the first step is 1/2 mean
    (V - G)^2 with G the reward-to-go of the batch) and the loss falls over the steps; with
    the bootstrapped one the first loss is 1/2 mean (V - r - gamma V(s'))^2 and V rises."""
    from rlcli import estimators

    cfg, parts = _parts(["algo=batch_ac", f"algo.critic_target={target}", "algo.critic_steps=30",
                         "algo.num_steps=64", "algo.learning_rate=3e-3", "algo.max_grad_norm=10"])
    learner, batch = _batch(cfg, parts)
    _, metrics = jax.jit(parts.algo.update)(learner, batch, jax.random.PRNGKey(0))
    net_values = jax.vmap(lambda o: parts.algo.act(learner, o, jax.random.PRNGKey(0))[1].value)
    values, next_values = net_values(batch.obs), net_values(batch.next_obs)
    if target == "monte_carlo":
        reward_to_go = estimators.batched(estimators.make("reward_to_go", 0.99, baseline="value"))
        _, targets = reward_to_go(batch.reward, values, next_values, batch.terminated, batch.truncated)
    else:
        targets = batch.reward + 0.99 * (1.0 - batch.terminated) * next_values
    if target == "monte_carlo":  # a fixed regression target: the loss falls
        assert float(metrics["loss/value_fitted"]) < 0.75 * float(metrics["loss/value"])
    else:  # fitted value iteration on rewards of 1: V climbs from ~0 (its TD loss need not fall)
        assert float(metrics["train/value_mean"]) > float(jnp.mean(values)) + 1.0
    np.testing.assert_allclose(float(metrics["loss/value"]), float(losses.value_loss(values, targets)), rtol=1e-4)


@pytest.mark.slow
def test_q_ac_critic_is_sarsa():
    """q_ac's critic loss is 1/2 mean (Q(s,a) - r - gamma (1-term) Q(s', a'))^2 with a' the
    next action taken in the batch where the episode goes on, else a sample of pi(.|s')
    (the update's own sample, drawn from the first half of its key), written out in loops."""
    from rlcli import networks

    cfg, parts = _parts(["algo=q_ac", "algo.num_steps=16"])
    learner, batch = _batch(cfg, parts)
    key = jax.random.PRNGKey(3)
    _, metrics = jax.jit(parts.algo.update)(learner, batch, key)
    qnet = networks.QNetwork(2, True, (64, 64), "tanh")
    q_all = np.asarray(qnet.apply(learner.params.q, batch.obs))
    next_all = np.asarray(qnet.apply(learner.params.q, batch.next_obs))
    logits = networks.make(cfg.network, parts.spec).apply(learner.params.policy, batch.next_obs)[0]
    sampled = np.asarray(jax.random.categorical(jax.random.split(key)[0], logits, axis=-1))
    action, reward = np.asarray(batch.action), np.asarray(batch.reward)
    terminated, done = np.asarray(batch.terminated), np.asarray(batch.terminated | batch.truncated)
    T, N = reward.shape
    total, from_batch = 0.0, 0
    for t in range(T):
        for n in range(N):
            if t + 1 < T and not done[t, n]:
                a_next = action[t + 1, n]
                from_batch += 1
            else:
                a_next = sampled[t, n]
            y = reward[t, n] + 0.99 * (1.0 - terminated[t, n]) * next_all[t, n, a_next]
            total += (q_all[t, n, action[t, n]] - y) ** 2
    assert from_batch > 40
    assert float(metrics["loss/q"]) == pytest.approx(total / (T * N) / 2, rel=1e-4)


def _error(overrides):
    with pytest.raises(config.ConfigError) as info:
        config.validate(compose(overrides))
    return str(info.value)


def test_bad_input():
    assert _error(["algo=online_ac", "algo.num_steps=5"]) == (
        "algo.num_steps=5 is not allowed (allowed: 1: Alg. 18 updates after every transition "
        "(num_envs sets the batch))")
    assert "estimator=gae does not fit algo=online_ac" in _error(["algo=online_ac", "estimator=gae"])
    assert _error(["algo=batch_ac", "algo.critic_target=td"]) == (
        "algo.critic_target='td' is not allowed (allowed: one of monte_carlo, bootstrap)")
    assert "algo.critic_steps=0 is not allowed" in _error(["algo=batch_ac", "algo.critic_steps=0"])
    assert "estimator=td does not fit algo=q_ac" in _error(["algo=q_ac", "estimator=td"])
    assert _error(["algo=q_ac", "algo.weight=v"]) == "algo.weight='v' is not allowed (allowed: one of q, advantage)"

