"""The jax loop: one chunk of updates is ONE compiled program, `jit(vmap_seeds(scan_updates(
collect + update)))` with the rollout of rlcli.rollout.jax_collect, so a chunk runs without
returning to Python; the seeds' state is split over the host's CPU devices (rlcli.xla)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlcli import config, faults, normalize, rollout, xla
from rlcli.envs import jax_backend
from rlcli.rollout import EnvCarry
from rlcli.types import Algorithm, ChunkOut, EpisodeStats, LearnerState, Loop


class RunnerState(NamedTuple):
    learner: LearnerState
    env_state: Any
    obs: jax.Array
    key: jax.Array
    episodes: EpisodeStats
    norm: normalize.NormState
    # a recurrent policy's hidden state [N, H] and episode starts [N] (rlcli.rollout.EnvCarry);
    # None for a feed-forward one, and then not in the checkpoint
    policy_state: Any = None
    episode_start: Any = None


def make(cfg, spec, algo: Algorithm, sizes: config.Sizes, fresh: bool = False) -> Loop:
    """`fresh`: every rollout starts with every column reset (a fresh episode at t = 0), the
    episodes in flight abandoned (`rlcli.loops.fresh_episodes`)."""
    env = jax_backend.make(spec.id, spec.observed)
    num_envs, num_steps = cfg.num_envs, cfg.algo.num_steps
    nan_check = cfg.debug.nan_check
    normalizer = normalize.make(cfg)

    def init_one(key):
        k_params, k_env, k_run = rollout.split_seed_key(key)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, num_envs))
        recurrent = {} if algo.initial_state is None else {
            "policy_state": algo.initial_state(num_envs), "episode_start": jnp.ones((num_envs,), bool)}
        return RunnerState(algo.init(k_params), env_state, obs, k_run, rollout.empty_stats(num_envs),
                           normalize.init(spec.obs_shape, num_envs), **recurrent)

    collect = rollout.jax_collect(algo, env, normalizer, num_envs)

    def update_step(runner: RunnerState, _):
        if fresh:
            key, k_reset = jax.random.split(runner.key)
            obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
            runner = runner._replace(env_state=env_state, obs=obs, key=key,
                                     episodes=rollout.restart_running(runner.episodes))
        carry = EnvCarry(runner.env_state, runner.obs, runner.key, runner.episodes, runner.policy_state,
                         runner.episode_start)
        carry, batch = collect(runner.learner, runner.norm, carry, num_steps)
        runner = runner._replace(env_state=carry.env_state, obs=carry.obs, key=carry.key, episodes=carry.episodes,
                                 policy_state=carry.policy_state, episode_start=carry.episode_start)
        key, k_update = jax.random.split(runner.key)
        norm, batch = normalizer.prepare(runner.norm, batch)
        learner, metrics = algo.update(runner.learner, batch, k_update)
        return runner._replace(learner=learner, key=key, norm=norm), metrics

    def chunk_one(runner: RunnerState, num_updates: int):
        runner = runner._replace(episodes=rollout.reset_totals(runner.episodes))
        runner, metrics = jax.lax.scan(update_step, runner, None, num_updates)
        return runner, ChunkOut(jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics), runner.episodes,
                                faults.first_nonfinite(metrics), faults.all_finite(runner.learner.params))

    evaluate_one = rollout.jax_evaluate(cfg, spec, algo, env, normalizer)

    # the init and evaluation programs make the seeds' keys themselves (`seed_keys`, `eval_keys`):
    # a jitted call of its own would be traced on every run, also when the programs come from the cache
    init_fn = jax.jit(lambda seeds: rollout.init_seeds(init_one, rollout.prng_keys(seeds)))
    eval_fn = jax.jit(lambda learner, norm, seeds, fold: jax.vmap(evaluate_one)(learner, norm, rollout.prng_keys(seeds, fold)))
    compiler = xla.Compiler()  # programs by number of updates (chunks), "init" and "eval"

    def lower_chunk(state, num_updates):
        fn = rollout.per_seed(partial(chunk_one, num_updates=num_updates), cfg.num_seeds)
        if nan_check:
            return jax.jit(faults.checked(fn), donate_argnums=0).lower(state)
        return xla.lower_cached(jax.jit(fn, donate_argnums=0), (state,), name=f"chunk{num_updates}", cfg=cfg,
                                donate_argnums=0)

    def start_compiling(state) -> None:
        """Lower the chunk and evaluation programs for `state` (its arrays or their shapes) one
        after the other, each compiling in a thread as soon as it is lowered. Where training
        leaves a core free (fewer seed devices than CPU devices, or an accelerator), the
        programs the first chunk does not need (a shorter last chunk; the evaluation when the
        first one comes after the second chunk or later) wait until the first chunk program is
        ready and then compile beside training."""
        shapes = xla.seed_shapes(state, cfg.num_seeds)  # the arrays are donated to the first chunk
        compiler.submit(sizes.updates_per_log, partial(lower_chunk, shapes, sizes.updates_per_log))
        chunks = sizes.num_chunks
        others = [("eval", partial(xla.lower_cached, eval_fn, (shapes.learner, shapes.norm, rollout.seed_array(cfg),
                                                                rollout.eval_fold(0)), name="eval", cfg=cfg),
                   min(sizes.eval_every_chunks or chunks, chunks) >= 2)]  # (name, lower, needed after chunk 1)
        last = sizes.num_updates % sizes.updates_per_log  # a shorter last chunk is its own program
        if last:
            others.append((last, partial(lower_chunk, shapes, last), True))
        spare = jax.default_backend() != "cpu" or xla.seed_devices(cfg.num_seeds) < jax.device_count()
        for name, lower, later in others:
            (compiler.defer if spare and later else compiler.submit)(name, lower)

    def compile_programs(state) -> float:
        """Wait for the first chunk program (compiling it and the others unless
        `init(prepare=True)` started them), then let the deferred ones compile beside training.
        The evaluation and the last chunk are waited for when first used. Returns the seconds
        this took."""
        start = time.perf_counter()
        if not compiler.started():
            start_compiling(state)
        compiler.get(sizes.updates_per_log)
        compiler.release()
        return time.perf_counter() - start

    def chunk(state, num_updates):
        program = compiler.get(num_updates, partial(lower_chunk, state, num_updates))
        return faults.raise_checked(program(state))

    def evaluate(state, index):
        # compiled with the chunk programs when training; jitted on first use otherwise (rlcli eval)
        program = compiler.get("eval") or eval_fn
        ret, length = program(state.learner, state.norm, rollout.seed_array(cfg), rollout.eval_fold(index))
        return np.asarray(ret), np.asarray(length)

    def restore(state, saved, meta):
        return RunnerState(**saved)

    def init(prepare: bool = False):
        """The seeds' initial state. With `prepare` (training), the chunk and evaluation programs
        are traced while the init program compiles, and start compiling themselves
        (`compile_programs` waits for them)."""
        seeds = rollout.seed_array(cfg)
        lowered = xla.lower_cached(init_fn, (seeds,), name="init", cfg=cfg)
        if not prepare:
            program = lowered.compile()
        else:
            compiler.submit("init", lambda: lowered)
            start_compiling(xla.seed_shapes(lowered.out_info, cfg.num_seeds))
            program = compiler.get("init")
        return xla.shard_seeds(program(seeds), cfg.num_seeds)

    def checkpoint_state(state):
        return {name: value for name, value in state._asdict().items() if value is not None}

    return Loop(init, compile_programs, chunk, evaluate, checkpoint_state, restore, compiler.close,
                compiler.programs)


