"""rlcli.rollout, the one rollout and evaluation of the jax loops: the seams that recurrent
policies, videos and Monte-Carlo batches of fresh episodes use, against hand-computed values."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compose
from rlcli import normalize, rollout
from rlcli.envs import jax_backend
from rlcli.types import ActInfo


class Policy(NamedTuple):
    act: Any


def test_first_episode_mask_by_hand():
    terminated = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], bool)
    truncated = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
    mask = rollout.first_episode_mask(jnp.asarray(terminated), jnp.asarray(truncated))
    # column 0 ends at t=1, column 1 at t=2 (truncated), column 2 at t=2
    np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 0]])


def test_a_recurrent_policy_state_is_carried_and_reset_at_episode_starts():
    """A counter as the hidden state: h <- (0 if the episode starts else h) + 1, reported as the
    value. The rollout must hand each step the previous step's h and the flag "this obs starts
    an episode" (true at t = 0 and after every terminated or truncated step), and record it."""
    env = jax_backend.make("CartPole-v1")

    def act(learner, obs, key, deterministic=False, state=None, episode_start=None):
        state = jnp.where(episode_start, 0, state) + 1
        action = jax.random.bernoulli(key, 0.5, obs.shape[:1]).astype(jnp.int32)
        return action, ActInfo(jnp.zeros(obs.shape[:1]), state.astype(jnp.float32)), state

    num_envs, steps = 3, 120
    obs, env_state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), num_envs))
    carry = rollout.EnvCarry(env_state, obs, jax.random.PRNGKey(1), rollout.empty_stats(num_envs),
                             policy_state=jnp.full((num_envs,), 7, jnp.int32),
                             episode_start=jnp.ones((num_envs,), bool))
    collect = rollout.jax_collect(Policy(act), env, normalize.make(compose()), num_envs)
    carry, batch = jax.jit(collect, static_argnums=3)(None, None, carry, steps)
    done = np.asarray(batch.terminated | batch.truncated)
    assert done.sum() >= 3  # random actions end CartPole episodes within 120 steps
    starts = np.asarray(batch.episode_start)
    np.testing.assert_array_equal(starts[0], True)
    np.testing.assert_array_equal(starts[1:], done[:-1])
    counter = np.zeros(num_envs)
    for t in range(steps):
        counter = np.where(starts[t], 0, counter) + 1
        np.testing.assert_array_equal(np.asarray(batch.value[t]), counter)
    np.testing.assert_array_equal(np.asarray(carry.policy_state), counter)
    np.testing.assert_array_equal(np.asarray(carry.episode_start), done[-1])


def test_a_feed_forward_rollout_records_no_episode_starts():
    env = jax_backend.make("CartPole-v1")

    def act(learner, obs, key, deterministic=False):
        zeros = jnp.zeros(obs.shape[:1])
        return jnp.zeros(obs.shape[:1], jnp.int32), ActInfo(zeros, zeros)

    obs, env_state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 2))
    carry = rollout.EnvCarry(env_state, obs, jax.random.PRNGKey(1), rollout.empty_stats(2))
    carry, batch = rollout.jax_collect(Policy(act), env, normalize.make(compose()), 2)(None, None, carry, 5)
    assert batch.episode_start is None and carry.policy_state is None and carry.episode_start is None


def test_fresh_episodes_start_every_column_at_t0_and_mask_the_first_episode():
    """Every column starts from a reset at t = 0, so the first episode of each column is in the
    batch whatever its length; the mask covers exactly its steps (sum = its length)."""
    env = jax_backend.make("CartPole-v1")

    def act(learner, obs, key, deterministic=False):
        zeros = jnp.zeros(obs.shape[:1])
        return jax.random.bernoulli(key, 0.5, obs.shape[:1]).astype(jnp.int32), ActInfo(zeros, zeros)

    batch, mask = rollout.jax_fresh_episodes(Policy(act), env, normalize.make(compose()), None, None,
                                             jax.random.PRNGKey(3), 16, env.spec.max_episode_steps)
    reset_obs, _ = jax.vmap(env.reset)(jax.random.split(jax.random.split(jax.random.PRNGKey(3))[0], 16))
    np.testing.assert_array_equal(np.asarray(batch.obs[0]), np.asarray(reset_obs))
    done = np.asarray(batch.terminated | batch.truncated)
    first_end = done.argmax(axis=0)
    assert done.any(axis=0).all()  # 500 steps: every first episode ended
    np.testing.assert_array_equal(np.asarray(mask).sum(axis=0), first_end + 1)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_an_observed_evaluation_plays_the_same_episodes(env_id):
    """`jax_evaluate` with an observer steps with `step_final` (gymnax's step with the pre-reset
    state kept): the returns and lengths are those of the evaluation without one, and the
    state observed at the last step of each episode is the terminal one, not a reset."""
    from rlcli import algos, config

    cfg = compose([f"env={env_id}", "algo=a2c", "eval_episodes=4", "eval_deterministic=false"])
    sizes = config.validate(cfg)
    env = jax_backend.make(env_id)
    algo = algos.make("a2c", env.spec, cfg, sizes.num_updates)
    learner = algo.init(jax.random.PRNGKey(0))
    norm = normalize.init(env.spec.obs_shape, 1)
    key = jax.random.PRNGKey(5)
    plain = rollout.jax_evaluate(cfg, env.spec, algo, env, normalize.make(cfg))(learner, norm, key)
    ret, length, (reset_state, finals) = rollout.jax_evaluate(
        cfg, env.spec, algo, env, normalize.make(cfg), observe=lambda final, step: final)(learner, norm, key)
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(ret))
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(length))
    steps = np.asarray(finals.time)  # gymnax's step counter of the state after each step
    for k in range(4):
        assert int(np.asarray(reset_state.time)[k]) == 0
        last = int(length[k]) - 1
        assert steps[last, k] == last + 1  # the terminal state, counted from the reset


@pytest.mark.extended
def test_traced_hyperparameters_carry_a_member_axis():
    """a2c's loss coefficients live in LearnerState.hparams: ONE update program vmapped over a
    member axis of (ent_coef, vf_coef) values gives each member the update of an algorithm built
    with its values as constants, and the members differ."""
    from rlcli import algos, config

    members = [(0.0, 0.5), (0.05, 0.25)]
    cfgs = [compose(["algo=a2c", "env=CartPole-v1", f"algo.ent_coef={e}", f"algo.vf_coef={v}"]) for e, v in members]
    env = jax_backend.make("CartPole-v1")
    built = [algos.make("a2c", env.spec, cfg, config.validate(cfg).num_updates) for cfg in cfgs]
    learners = [algo.init(jax.random.PRNGKey(0)) for algo in built]
    assert {k: float(v) for k, v in learners[1].hparams.items()} == {"ent_coef": float(np.float32(0.05)), "vf_coef": 0.25}
    obs, env_state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(1), 8))
    carry = rollout.EnvCarry(env_state, obs, jax.random.PRNGKey(2), rollout.empty_stats(8))
    collect = rollout.jax_collect(built[0], env, normalize.make(cfgs[0]), 8)
    _, batch = collect(learners[0], None, carry, 5)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *learners)
    together, _ = jax.jit(jax.vmap(built[0].update, in_axes=(0, None, None)))(stacked, batch, jax.random.PRNGKey(3))
    for m, (algo, learner) in enumerate(zip(built, learners)):
        alone, _ = jax.jit(algo.update)(learner, batch, jax.random.PRNGKey(3))
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(together.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[m]), rtol=1e-6, atol=1e-8)
    first, second = (jax.tree.leaves(jax.tree.map(lambda x: x[m], together.params)) for m in (0, 1))
    assert any(not np.allclose(a, b) for a, b in zip(first, second))
