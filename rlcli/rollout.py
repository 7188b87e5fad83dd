"""The one rollout and the one evaluation of each loop kind, and the seeding rules.

* jax loops (loops/jax.py, loops/asynchronous.py): `jax_collect` steps the pure-JAX envs for
  T steps inside a `lax.scan` (one rollout, time-major `Batch [T, N]`); `jax_evaluate` plays
  `eval_episodes` episodes per seed inside one.
* host loop (loops/host.py): gymnasium's vector envs are stepped from Python, `host_collect`
  for a rollout (one jitted policy call per step) and `host_evaluate` for the evaluation.

The seeding rules live here once: a run's seed i uses `PRNGKey(seed + i)` split into
(params, envs, run) keys; evaluation number k folds the seed's key with `eval_fold(k)`; the
host envs of seed s are seeded `train_env_seed(s)` (and, after a resume at update u,
`resume_env_seed`), and its evaluation envs `eval_env_seed(s, k) + episode`. `rlcli eval`
repeats training's evaluation exactly because it calls the same functions.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlcli import normalize
from rlcli.types import Algorithm, Batch, EpisodeStats, Step


def empty_stats(num_envs: int, xp=jnp) -> EpisodeStats:
    zeros = xp.zeros((num_envs,), xp.float32)
    return EpisodeStats(zeros, zeros, xp.float32(0), xp.float32(0), xp.float32(0))


def track_episodes(stats: EpisodeStats, reward, terminated, truncated) -> EpisodeStats:
    """Add one step of rewards; episodes that end here are added to the totals. Plain array
    arithmetic, so it serves numpy (host loop) and jax (scan) alike."""
    done = (terminated | truncated).astype(np.float32)
    episode_return = stats.running_return + reward
    episode_length = stats.running_length + 1.0
    return EpisodeStats(
        episode_return * (1.0 - done),
        episode_length * (1.0 - done),
        stats.count + done.sum(axis=-1),
        stats.return_sum + (episode_return * done).sum(axis=-1),
        stats.length_sum + (episode_length * done).sum(axis=-1),
    )


def restart_running(stats: EpisodeStats) -> EpisodeStats:
    """The episodes in flight abandoned (every column restarts): running return and length 0."""
    return stats._replace(running_return=stats.running_return * 0, running_length=stats.running_length * 0)


def reset_totals(stats: EpisodeStats) -> EpisodeStats:
    zero = stats.count * 0
    return stats._replace(count=zero, return_sum=zero, length_sum=zero)


def per_seed(fn, num_seeds: int):
    """`jax.vmap(fn)` over the leading seed axis; for one seed, `fn` on the seed's slice."""
    if num_seeds > 1:
        return jax.vmap(fn)

    def one(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return one


def init_seeds(init_one, keys):
    """`init_one` for each seed's key, stacked on a leading seed axis. On the CPU a sequential
    `lax.map`, not `vmap`: batched, the QR factorisations of the orthogonal initialisers run as
    jaxlib's parallel LAPACK kernel, which can deadlock the 2-thread XLA pool of a 2-core
    machine (seen as a run that hangs after compiling, every thread waiting). On an
    accelerator `vmap`: one after the other, 1024 seeds' initialisations took seconds on a GPU."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(init_one, keys)
    return jax.vmap(init_one)(keys)


def seed_array(cfg) -> np.ndarray:
    """The seeds' `jax.random.PRNGKey` arguments, as PRNGKey takes a Python int (modulo 2^32)."""
    return (np.arange(cfg.num_seeds, dtype=np.uint64) + cfg.seed).astype(np.uint32)


def prng_keys(seeds, fold=None):
    """[S, 2]: `jax.random.PRNGKey(seed)` of each of `seeds`, folded with `fold` unless None."""
    keys = jax.vmap(jax.random.PRNGKey)(seeds)
    return keys if fold is None else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, fold)


_prng_keys = jax.jit(prng_keys)


def seed_keys(cfg) -> jax.Array:
    """[S, 2]: `jax.random.PRNGKey(seed + i)` for seed index i, in one call (per-seed eager
    calls cost a dispatch each: seconds for 1024 seeds on a GPU)."""
    return _prng_keys(seed_array(cfg))


def split_seed_key(key):
    """A seed's key -> (params key, envs' reset key, run key): the same split on every loop, so
    the same seed starts from the same parameters everywhere."""
    return tuple(jax.random.split(key, 3))


def eval_fold(index: int) -> np.uint32:
    """What the seeds' keys are folded with for evaluation number `index` (0 = the first)."""
    return np.uint32(1_000_003 + index)


def eval_keys(cfg, index: int) -> jax.Array:
    """Per seed, the key of evaluation number `index` (0 = the first of the run):
    `fold_in(PRNGKey(seed + i), 1_000_003 + index)`."""
    return _prng_keys(seed_array(cfg), eval_fold(index))


def eval_reset_keys(key: jax.Array, num_eval: int) -> jax.Array:
    """jax backend: the reset key of each episode of an evaluation with `key` (one seed)."""
    return jax.random.split(jax.random.split(key)[0], num_eval)


def eval_env_seed(seed: int, index: int) -> int:
    """gymnasium backend: the reset seed of the first eval env of seed `seed` at evaluation
    number `index`; eval env k resets with this + k (gymnasium's vector seeding)."""
    return seed * 10_007 + 1_000_003 + index


def train_env_seed(seed: int) -> int:
    """gymnasium backend: the reset seed of seed `seed`'s first train env (env k: + k), far
    apart from its evaluation envs."""
    return seed * 10_007


def resume_env_seed(env_seed: int, update: int) -> int:
    """gymnasium backend: a train env's reset seed after resuming at `update`, shifted so that
    the episodes in flight are not the run's first episodes again."""
    return env_seed + 7919 * update


# ---- jax loops ---------------------------------------------------------------------------------


class EnvCarry(NamedTuple):
    """The envs' part of a jax rollout, per seed: env states and observations [N, ...], the RNG
    key, running episode statistics; for a recurrent policy also its hidden state [N, ...] and
    which observations start an episode [N] (both None for a feed-forward policy)."""

    env_state: Any
    obs: jax.Array
    key: jax.Array
    episodes: EpisodeStats
    policy_state: Any = None
    episode_start: Any = None


def jax_collect(algo: Algorithm, env, normalizer: normalize.Normalizer, num_envs: int):
    """`collect(learner, norm, carry, num_steps) -> (carry, Batch [T, N])`: the jax loops' one
    rollout, `num_steps` steps of `num_envs` envs with the policy of `learner` (observations
    normalised with `norm`), inside one `lax.scan`. Each step splits the key into (next, act,
    env) keys.

    A recurrent policy (a carry with `policy_state`) is called as `algo.act(learner, obs, key,
    state=h, episode_start=s) -> (action, info, h')` and resets h itself where s is true; the
    rollout carries h' and s' (the step ended an episode) from step to step and records s in
    `Batch.episode_start` and h in `Batch.policy_state`."""

    def collect(learner, norm, carry: EnvCarry, num_steps: int):
        def step_fn(carry: EnvCarry, _):
            key, k_act, k_env = jax.random.split(carry.key, 3)
            obs = normalizer.obs(norm, carry.obs)
            if carry.policy_state is None:
                (action, info), policy_state = algo.act(learner, obs, k_act), None
            else:
                action, info, policy_state = algo.act(learner, obs, k_act, state=carry.policy_state,
                                                      episode_start=carry.episode_start)
            env_state, step = jax.vmap(env.step)(jax.random.split(k_env, num_envs), carry.env_state, action)
            transition = Batch(carry.obs, action, step.reward, step.terminated, step.truncated,
                               info.log_prob, info.value, step.next_obs, carry.episode_start, carry.policy_state)
            episodes = track_episodes(carry.episodes, step.reward, step.terminated, step.truncated)
            episode_start = None if carry.policy_state is None else step.terminated | step.truncated
            return EnvCarry(env_state, step.obs, key, episodes, policy_state, episode_start), transition

        return jax.lax.scan(step_fn, carry, None, num_steps)

    return collect


def first_episode_mask(terminated, truncated):
    """[T, N] float: 1 from t = 0 up to and including the step where column n's first episode
    ends, 0 after it."""
    done = (terminated | truncated).astype(jnp.float32)
    return (jnp.cumsum(done, axis=0) - done == 0).astype(jnp.float32)


def jax_fresh_episodes(algo: Algorithm, env, normalizer: normalize.Normalizer, learner, norm, key,
                       num_envs: int, num_steps: int):
    """A Monte-Carlo batch of i.i.d. episodes: every column starts a fresh episode at t = 0 and
    `jax_collect` runs it for `num_steps` steps (the env's time limit: every first episode then
    ends inside the batch). Returns (Batch [T, N], first_episode_mask [T, N]); an episode's own
    length never decides whether it is in the batch."""
    k_reset, k_run = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
    carry = EnvCarry(env_state, obs, k_run, empty_stats(num_envs))
    _, batch = jax_collect(algo, env, normalizer, num_envs)(learner, norm, carry, num_steps)
    return batch, first_episode_mask(batch.terminated, batch.truncated)


def jax_evaluate(cfg, spec, algo: Algorithm, env, normalizer: normalize.Normalizer, observe: Callable | None = None):
    """`evaluate_one(learner, norm, key) -> (returns [E], lengths [E])`: the jax backend's
    evaluation of one seed, `eval_episodes` episodes from the reset keys `eval_reset_keys(key)`
    (vmap it over seeds). The one evaluation of the jax loops (loops/jax.py,
    loops/asynchronous.py) and of `rlcli eval`. With `observe(final_state, step)`, a function of
    each step's pre-reset env states [E] and transition, evaluate_one also returns the reset
    states [E] and observe's outputs stacked over the steps [T, E, ...] (the video frames'
    states)."""
    num_eval, deterministic = cfg.eval_episodes, cfg.eval_deterministic
    max_eval_steps = int(spec.max_episode_steps)

    def evaluate_one(learner, norm, key):
        k_run = jax.random.split(key)[1]
        obs, env_state = jax.vmap(env.reset)(eval_reset_keys(key, num_eval))

        def body(carry, _):
            obs, env_state, key, ret, length, alive, h = carry
            key, k_act, k_env = jax.random.split(key, 3)
            if h is None:
                action, _ = algo.act(learner, normalizer.obs(norm, obs), k_act, deterministic=deterministic)
            else:  # one episode per env: the state starts at 0 and is never reset
                action, _, h = algo.act(learner, normalizer.obs(norm, obs), k_act, deterministic=deterministic,
                                        state=h, episode_start=jnp.zeros((num_eval,), bool))
            keys = jax.random.split(k_env, num_eval)
            if observe is None:
                env_state, step = jax.vmap(env.step)(keys, env_state, action)
                seen = None
            else:
                env_state, step, final_state = jax.vmap(env.step_final)(keys, env_state, action)
                seen = observe(final_state, step)
            ret = ret + step.reward * alive
            length = length + alive
            alive = alive * (1.0 - (step.terminated | step.truncated).astype(jnp.float32))
            return (step.obs, env_state, key, ret, length, alive, h), seen

        zeros = jnp.zeros((num_eval,), jnp.float32)
        h = None if algo.initial_state is None else algo.initial_state(num_eval)
        carry = (obs, env_state, k_run, zeros, zeros, jnp.ones_like(zeros), h)
        reset_state = env_state
        (_, _, _, ret, length, _, _), seen = jax.lax.scan(body, carry, None, max_eval_steps)
        return (ret, length) if observe is None else (ret, length, (reset_state, seen))

    return evaluate_one


# ---- host loop ---------------------------------------------------------------------------------


def host_collect(policy: Callable, vec_envs: list, batch: Batch, obs, key):
    """The host loop's one rollout: T steps (the length of `batch`, [T, S, N, ...] numpy
    arrays, filled in place) of seed i's vector env `vec_envs[i]` with `policy(obs [S, N, ...],
    key) -> (action, out, key)`, one jitted call per step. The policy's per-step outputs
    (log-prob and value, left on the device) go to `batch.log_prob` as a tuple over the steps.
    Returns (batch, the observations to act on next, the key)."""
    outputs = []
    for t in range(batch.reward.shape[0]):
        action, out, key = policy(obs, key)
        outputs.append(out)
        batch.obs[t] = obs
        batch.action[t] = action = np.asarray(action)
        next_obs = []
        for i, env in enumerate(vec_envs):
            step = env.step(action[i])
            batch.reward[t, i], batch.next_obs[t, i] = step.reward, step.next_obs
            batch.terminated[t, i], batch.truncated[t, i] = step.terminated, step.truncated
            next_obs.append(step.obs)
        obs = next_obs[0][None] if len(vec_envs) == 1 else np.stack(next_obs)
    return batch._replace(log_prob=tuple(outputs)), obs, key


def host_eval_act(algo: Algorithm, normalizer: normalize.Normalizer, deterministic: bool):
    """One seed's step of the host loop's evaluation: `act(learner, norm, obs [E, ...], key) ->
    (action, next key)`, the key split into (next, act)."""

    def act(learner, norm, obs, key):
        next_key, k_act = jax.random.split(key)
        action, _ = algo.act(learner, normalizer.obs(norm, obs), k_act, deterministic=deterministic)
        return action, next_key

    return act


def host_evaluate(act: Callable, key, vec_envs: list, seeds: list[int], index: int, max_steps: int,
                  observe: Callable | None = None):
    """The host loop's evaluation: seed i's vector env of E envs (one env per episode) reset
    with `eval_env_seed(seeds[i], index)` and played with `act(obs [S, E, ...], key) ->
    (action, key)` until every episode ended. Returns (returns, lengths), [S, E] float32. The
    one evaluation of the host loop and of `rlcli eval`: `observe(alive [S, E])` is called
    after the reset (every env alive) and after each step (the envs that took it), where a
    video draws its frames."""
    num_seeds, num_eval = len(seeds), vec_envs[0].num_envs
    obs = np.stack([env.reset(seed=eval_env_seed(seed, index)) for env, seed in zip(vec_envs, seeds)])
    ret = np.zeros((num_seeds, num_eval), np.float64)
    length = np.zeros((num_seeds, num_eval), np.int64)
    alive = np.ones((num_seeds, num_eval), bool)
    if observe is not None:
        observe(alive)
    for _ in range(max_steps):
        action, key = act(obs, key)
        step = step_all(vec_envs, np.asarray(action))
        obs = step.obs
        ret += step.reward * alive
        length += alive
        if observe is not None:
            observe(alive)
        alive &= ~(step.terminated | step.truncated)
        if not alive.any():
            break
    return ret.astype(np.float32), length.astype(np.float32)


def step_all(vec_envs: list, action) -> Step:
    """Step seed i's vector env with action[i]; fields stacked to [S, N, ...]."""
    steps = [env.step(action[i]) for i, env in enumerate(vec_envs)]
    return Step(*(np.stack(field) for field in zip(*steps)))
