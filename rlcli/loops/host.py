"""The host loop (gymnasium backend): Python steps gymnasium's vector envs, calling a jitted
policy per env step and a jitted update per rollout, both vmapped over seeds; the
evaluation is rlcli.rollout.host_evaluate."""

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlcli import config, faults, normalize, rollout, xla
from rlcli.envs import gymnasium_backend
from rlcli.types import Algorithm, Batch, ChunkOut, EpisodeStats, LearnerState, Loop


class HostState(NamedTuple):
    learner: LearnerState  # [S]
    key: jax.Array  # [S, 2]
    obs: np.ndarray  # [S, N, ...]
    episodes: EpisodeStats  # numpy, [S, N] / [S]
    norm: normalize.NormState  # [S]


def make(cfg, spec, algo: Algorithm, sizes: config.Sizes, fresh: bool = False) -> Loop:
    """`fresh`: every rollout starts with every env reset (a fresh episode at t = 0), the
    episodes in flight abandoned (`rlcli.loops.fresh_episodes`); the envs' generators go on."""
    num_seeds, num_envs, num_steps = cfg.num_seeds, cfg.num_envs, cfg.algo.num_steps
    num_eval, deterministic = cfg.eval_episodes, cfg.eval_deterministic
    seeds = [cfg.seed + i for i in range(num_seeds)]
    # env seeds: each learner seeds its N envs from its own seed (far apart from eval envs)
    train_envs = [gymnasium_backend.make(spec.id, num_envs, rollout.train_env_seed(seed), cfg.env.vectorization)
                  for seed in seeds]
    eval_envs: list = []
    max_eval_steps = spec.max_episode_steps or 100_000

    normalizer = normalize.make(cfg)

    def policy_one(learner, norm, obs, key):
        key, k_act = jax.random.split(key)
        action, info = algo.act(learner, normalizer.obs(norm, obs), k_act)
        return action, jnp.stack([info.log_prob, info.value]), key

    def update_one(learner, norm, batch, key):
        norm, batch = normalizer.prepare(norm, batch)
        learner, metrics = algo.update(learner, batch, key)
        return learner, norm, metrics

    def update_all(learner, norm, stats, batch, key):
        """One update of every seed from the host's rollout; the rollout's episodes are added
        to `stats` here too (one program per update, not array operations per env step)."""
        # the log-probs and values stayed on the device: `log_prob` holds the policy's
        # [S, 2, N] output of each step
        log_prob_value = jnp.stack(batch.log_prob)  # [T, S, 2, N]
        batch = batch._replace(log_prob=log_prob_value[:, :, 0], value=log_prob_value[:, :, 1])
        if fresh:
            stats = rollout.restart_running(stats)
        stats, _ = jax.lax.scan(lambda stats, step: (rollout.track_episodes(stats, *step), None), stats,
                                (batch.reward, batch.terminated, batch.truncated))
        keys = jax.vmap(jax.random.split)(key)
        learner, norm, metrics = jax.vmap(update_one, in_axes=(0, 0, 1, 0))(learner, norm, batch, keys[:, 1])
        # the metrics as one [S, M] array: the chunk fetches one array per update, not M
        metric_names[:] = list(metrics)  # (known once traced, in compile_programs)
        return learner, norm, stats, jnp.stack(list(metrics.values()), axis=-1), keys[:, 0]

    # The calls made per env step and per update take (learner, norm, episode stats) packed
    # into one array per dtype (`xla.tree_packer`): each array passed costs dispatch time.
    packer: list = []  # [pack, unpack], made from the first state seen

    def pack_state(state: HostState, stats=None):
        if not packer:
            packer.extend(xla.tree_packer((state.learner, state.norm, state.episodes)))
        return pack_fn((state.learner, state.norm, state.episodes if stats is None else stats))

    def policy_packed(packed, obs, key):
        learner, norm, _ = packer[1](packed)
        return jax.vmap(policy_one)(learner, norm, obs, key)

    def update_packed(packed, batch, key):
        learner, norm, stats, metrics, key = update_all(*packer[1](packed), batch, key)
        return packer[0]((learner, norm, stats)), metrics, key

    eval_one = rollout.host_eval_act(algo, normalizer, deterministic)

    def eval_act_packed(packed, obs, key):
        """The evaluation policy's actions for `obs` [S, E, ...], and the next keys."""
        learner, norm, _ = packer[1](packed)
        return jax.vmap(eval_one)(learner, norm, obs, key)

    nan_check = cfg.debug.nan_check
    policy_fn, update_fn = policy_packed, update_packed
    if nan_check:
        policy_fn, update_fn = faults.checked(policy_fn), faults.checked(update_fn)
    policy_fn = jax.jit(policy_fn)
    update_jit = jax.jit(update_fn, donate_argnums=0)
    unwrap = faults.raise_checked if nan_check else (lambda result: result)
    pack_fn = jax.jit(lambda tree: packer[0](tree))
    unpack_fn = jax.jit(lambda packed: packer[1](packed))
    eval_act = jax.jit(eval_act_packed)
    compiled: dict[str, Any] = {}
    metric_names: list[str] = []

    def init(prepare: bool = False):  # the programs compile in compile_programs either way
        # the same key split as the jax backend (params, env, run): same seed, same initial params
        keys = jax.vmap(lambda key: jnp.stack(rollout.split_seed_key(key)))(rollout.seed_keys(cfg))
        learner = jax.jit(partial(rollout.init_seeds, algo.init))(keys[:, 0])
        obs = np.stack([env.reset() for env in train_envs])
        stats = EpisodeStats(*(np.zeros((num_seeds,) + s.shape, np.float32)
                               for s in rollout.empty_stats(num_envs, np)))
        norm = jax.vmap(lambda _: normalize.init(spec.obs_shape, num_envs))(keys[:, 0])
        return HostState(learner, keys[:, 2], obs, stats, norm)

    obs_shape = spec.obs_shape
    act_shape = () if spec.discrete else (spec.num_actions,)
    act_dtype = np.int32 if spec.discrete else np.float32

    def compile_programs(state) -> float:
        start = time.perf_counter()
        state_packed = pack_state(state)
        jax.block_until_ready((policy_fn(state_packed, state.obs, state.key), unpack_fn(state_packed)))
        log_prob_value = tuple(np.zeros((num_seeds, 2, num_envs), np.float32) for _ in range(num_steps))
        compiled["update"] = update_jit.lower(state_packed, empty_batch()._replace(log_prob=log_prob_value),
                                              state.key).compile()
        jax.block_until_ready(eval_act(state_packed, state.obs[:, :1].repeat(num_eval, 1), state.key))
        jax.block_until_ready((faults.all_params_finite(state.learner.params), rollout.eval_keys(cfg, 0)))
        return time.perf_counter() - start

    def empty_batch() -> Batch:
        """The host's part of a rollout, [T, S, N, ...]; the policy's log-prob and value
        outputs are added by `chunk` (see `update_all`)."""
        lead = (num_steps, num_seeds, num_envs)
        return Batch(np.zeros(lead + obs_shape, np.float32), np.zeros(lead + act_shape, act_dtype),
                     np.zeros(lead, np.float32), np.zeros(lead, bool), np.zeros(lead, bool),
                     None, None, np.zeros(lead + obs_shape, np.float32))

    def chunk(state: HostState, num_updates: int):
        key, obs = state.key, state.obs
        carry = pack_state(state, rollout.reset_totals(state.episodes))
        per_update: list = []  # [S, M] metrics of each update, on the device
        for _ in range(num_updates):
            if fresh:
                obs = np.stack([env.restart() for env in train_envs])
            batch, obs, key = rollout.host_collect(lambda obs, key, carry=carry: unwrap(policy_fn(carry, obs, key)),
                                                   train_envs, empty_batch(), obs, key)
            carry, metrics, key = unwrap(compiled["update"](carry, batch, key))
            per_update.append(metrics)  # fetched with the chunk's others: no wait per update
        # a diverged update goes on to the chunk's end, as on the jax backend; train() reports
        # the first one that is not finite
        learner, norm, stats = unpack_fn(carry)
        per_update, stats = jax.device_get((per_update, stats))
        stacked = np.stack(per_update, axis=-1)  # [S, M, U]
        stacked = {name: stacked[:, i].T for i, name in enumerate(metric_names)}  # name -> [U, S]
        return HostState(learner, key, obs, stats, norm), ChunkOut(
            {name: v.mean(axis=0) for name, v in stacked.items()}, stats,
            faults.first_nonfinite(stacked, np), np.asarray(faults.all_params_finite(learner.params)))

    def evaluate(state: HostState, index: int):
        if not eval_envs:
            # one env per episode, env k seeded eval_env_seed + k, so that `rlcli eval` can
            # replay each with a single env: never the `vector` env (one generator for all)
            mode = cfg.env.vectorization if cfg.env.vectorization == "async" else "sync"
            eval_envs.extend(gymnasium_backend.make(spec.id, num_eval, rollout.eval_env_seed(seed, 0), mode)
                             for seed in seeds)
        carry = pack_state(state)
        return rollout.host_evaluate(lambda obs, key: eval_act(carry, obs, key), rollout.eval_keys(cfg, index),
                                     eval_envs, seeds, index, max_eval_steps)

    def checkpoint_state(state: HostState):
        return {"learner": state.learner, "key": state.key, "norm": state.norm}

    def restore(state: HostState, saved, meta) -> HostState:
        """Learner and RNG key come back; the episodes in flight restart, from env seeds
        shifted by the update count so that they are not the run's first episodes again."""
        obs = np.stack([env.reset(seed=rollout.resume_env_seed(env.seed, int(meta["update"]))) for env in train_envs])
        return HostState(saved["learner"], saved["key"], obs, state.episodes, saved["norm"])

    def close():
        for env in train_envs + eval_envs:
            env.close()

    return Loop(init, compile_programs, chunk, evaluate, checkpoint_state, restore, close)


