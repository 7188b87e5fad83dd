"""The training loop: collect -> estimate -> update, in chunks of `updates_per_log` updates.

* `jax` backend: one chunk is ONE compiled program, `jit(vmap_seeds(scan_updates(scan_steps(
  act + env.step) + update)))`, so a chunk runs without returning to Python.
* `gymnasium` backend: a host loop steps the vector envs, calling a jitted `act` per step
  and a jitted `update` per rollout, both vmapped over seeds.

Both backends present the same `Backend` interface to `train`, which logs, evaluates,
checkpoints and writes the run directory.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlcli import algos, checkpoint, config, envs, normalize, xla
from rlcli.errors import EXIT_DIVERGED, EXIT_FAILED, Interrupted, RunError  # noqa: F401  (runner.RunError, ...)
from rlcli.algos import Batch

log = logging.getLogger("rlcli")


class EpisodeStats(NamedTuple):
    """Running return/length per env and totals over the episodes finished since the last
    record (only finished episodes count)."""

    running_return: Any  # [N]
    running_length: Any  # [N]
    count: Any  # []
    return_sum: Any  # []
    length_sum: Any  # []


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


def reset_totals(stats: EpisodeStats) -> EpisodeStats:
    zero = stats.count * 0
    return stats._replace(count=zero, return_sum=zero, length_sum=zero)


class ChunkOut(NamedTuple):
    metrics: dict  # name -> [S], mean over the chunk's updates
    episodes: EpisodeStats  # totals -> [S]
    first_nonfinite: dict  # name -> [S]: index in the chunk of the first update where it is not finite, or -1
    params_finite: Any  # [S] bool: every parameter finite after the chunk


def first_nonfinite(stacked: dict, xp=jnp) -> dict:
    """For metrics stacked over updates (axis 0), the index of the first non-finite value, or
    -1 (numpy on the host loop, jax inside the compiled chunk)."""
    out = {}
    for name, values in stacked.items():
        bad = ~xp.isfinite(values)
        out[name] = xp.where(bad.any(axis=0), xp.argmax(bad, axis=0), -1)
    return out


def all_finite(tree, xp=jnp):
    return xp.all(xp.stack([xp.all(xp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# host loops: [S] bool, every parameter of seed i finite (one program, not an eager op per leaf)
all_params_finite = jax.jit(jax.vmap(all_finite))


class Backend(NamedTuple):
    """What `train` needs from a backend; `state` has a leading seed axis."""

    init: Callable[..., Any]  # init(prepare=False): with prepare (training) it may start compiling the programs
    compile: Callable[[Any], float]  # compile chunk/eval programs; returns seconds
    chunk: Callable[[Any, int], tuple[Any, ChunkOut]]  # (state, num_updates)
    evaluate: Callable[[Any, int], tuple[np.ndarray, np.ndarray]]  # (state, eval index) -> [S, E] returns, lengths
    checkpoint_state: Callable[[Any], Any]  # the pytree that is saved
    restore: Callable[[Any, Any, dict], Any]  # (fresh state, restored pytree, meta) -> state
    close: Callable[[], None]
    programs: dict | None = None  # jax backend: compiled chunk programs by number of updates (to inspect)


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


def _seed_array(cfg) -> np.ndarray:
    """The seeds' `jax.random.PRNGKey` arguments, as PRNGKey takes a Python int (modulo 2^32)."""
    return (np.arange(int(cfg.num_seeds), dtype=np.uint64) + int(cfg.seed)).astype(np.uint32)


def prng_keys(seeds, fold=None):
    """[S, 2]: `jax.random.PRNGKey(seed)` of each of `seeds`, folded with `fold` unless None."""
    keys = jax.vmap(jax.random.PRNGKey)(seeds)
    return keys if fold is None else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, fold)


_prng_keys = jax.jit(prng_keys)


def seed_keys(cfg) -> jax.Array:
    """[S, 2]: `jax.random.PRNGKey(seed + i)` for seed index i, in one call (per-seed eager
    calls cost a dispatch each: seconds for 1024 seeds on a GPU)."""
    return _prng_keys(_seed_array(cfg))


def eval_fold(index: int) -> np.uint32:
    """What the seeds' keys are folded with for evaluation number `index` (0 = the first)."""
    return np.uint32(1_000_003 + index)


def eval_keys(cfg, index: int) -> jax.Array:
    """Per seed, the key of evaluation number `index` (0 = the first of the run):
    `fold_in(PRNGKey(seed + i), 1_000_003 + index)`."""
    return _prng_keys(_seed_array(cfg), eval_fold(index))


def eval_reset_keys(key: jax.Array, num_eval: int) -> jax.Array:
    """jax backend: the reset key of each episode of an evaluation with `key` (one seed)."""
    return jax.random.split(jax.random.split(key)[0], num_eval)


def eval_env_seed(seed: int, index: int) -> int:
    """gymnasium backend: the reset seed of the first eval env of seed `seed` at evaluation
    number `index`; eval env k resets with this + k (gymnasium's vector seeding)."""
    return seed * 10_007 + 1_000_003 + index


# ---- jax backend -----------------------------------------------------------------------------


class RunnerState(NamedTuple):
    learner: algos.LearnerState
    env_state: Any
    obs: jax.Array
    key: jax.Array
    episodes: EpisodeStats
    norm: normalize.NormState


def jax_evaluate_one(cfg, spec, algo: algos.Algorithm, env, normalizer: normalize.Normalizer):
    """`evaluate_one(learner, norm, key) -> (returns [E], lengths [E])`: the jax backend's
    evaluation of one seed, `eval_episodes` episodes from the reset keys `eval_reset_keys(key)`
    (vmap it over seeds). Also used by backends of their own (algos/a3c.py)."""
    num_eval, deterministic = int(cfg.eval_episodes), bool(cfg.eval_deterministic)
    max_eval_steps = int(spec.max_episode_steps)

    def evaluate_one(learner, norm, key):
        k_run = jax.random.split(key)[1]
        obs, env_state = jax.vmap(env.reset)(eval_reset_keys(key, num_eval))

        def body(carry, _):
            obs, env_state, key, ret, length, alive = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action, _ = algo.act(learner, normalizer.obs(norm, obs), k_act, deterministic=deterministic)
            env_state, step = jax.vmap(env.step)(jax.random.split(k_env, num_eval), env_state, action)
            ret = ret + step.reward * alive
            length = length + alive
            alive = alive * (1.0 - (step.terminated | step.truncated).astype(jnp.float32))
            return (step.obs, env_state, key, ret, length, alive), None

        zeros = jnp.zeros((num_eval,), jnp.float32)
        carry = (obs, env_state, k_run, zeros, zeros, jnp.ones_like(zeros))
        (_, _, _, ret, length, _), _ = jax.lax.scan(body, carry, None, max_eval_steps)
        return ret, length

    return evaluate_one


def make_jax_backend(cfg, spec, algo: algos.Algorithm, sizes: config.Sizes) -> Backend:
    from rlcli.envs import jax_backend

    env = jax_backend.make(spec.id)
    num_envs, num_steps = int(cfg.num_envs), int(cfg.algo.num_steps)
    nan_check = bool(cfg.debug.nan_check)
    normalizer = normalize.make(cfg)

    def init_one(key):
        k_params, k_env, k_run = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, num_envs))
        return RunnerState(algo.init(k_params), env_state, obs, k_run, empty_stats(num_envs),
                           normalize.init(spec.obs_shape, num_envs))

    def env_step(runner: RunnerState, _):
        key, k_act, k_env = jax.random.split(runner.key, 3)
        action, info = algo.act(runner.learner, normalizer.obs(runner.norm, runner.obs), k_act)
        env_state, step = jax.vmap(env.step)(jax.random.split(k_env, num_envs), runner.env_state, action)
        transition = Batch(runner.obs, action, step.reward, step.terminated, step.truncated,
                           info.log_prob, info.value, step.next_obs)
        episodes = track_episodes(runner.episodes, step.reward, step.terminated, step.truncated)
        return runner._replace(env_state=env_state, obs=step.obs, key=key, episodes=episodes), transition

    def update_step(runner: RunnerState, _):
        runner, batch = jax.lax.scan(env_step, runner, None, num_steps)
        key, k_update = jax.random.split(runner.key)
        norm, batch = normalizer.prepare(runner.norm, batch)
        learner, metrics = algo.update(runner.learner, batch, k_update)
        return runner._replace(learner=learner, key=key, norm=norm), metrics

    def chunk_one(runner: RunnerState, num_updates: int):
        runner = runner._replace(episodes=reset_totals(runner.episodes))
        runner, metrics = jax.lax.scan(update_step, runner, None, num_updates)
        return runner, ChunkOut(jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics), runner.episodes,
                                first_nonfinite(metrics), all_finite(runner.learner.params))

    evaluate_one = jax_evaluate_one(cfg, spec, algo, env, normalizer)

    # the init and evaluation programs make the seeds' keys themselves (`seed_keys`, `eval_keys`):
    # a jitted call of its own would be traced on every run, also when the programs come from the cache
    init_fn = jax.jit(lambda seeds: init_seeds(init_one, prng_keys(seeds)))
    chunk_fns: dict[int, Any] = {}
    eval_fn = jax.jit(lambda learner, norm, seeds, fold: jax.vmap(evaluate_one)(learner, norm, prng_keys(seeds, fold)))
    compiled: dict[str, Any] = {}
    pending: dict[Any, Any] = {}  # programs compiling: {number of updates or "eval": Future}
    deferred: dict[Any, Callable] = {}  # programs to lower and compile once training starts
    pool = ThreadPoolExecutor(4)  # compiles: init, two chunk programs and the evaluation at most

    def lower_chunk(state, num_updates):
        fn = per_seed(partial(chunk_one, num_updates=num_updates), int(cfg.num_seeds))
        if nan_check:
            return jax.jit(checked(fn), donate_argnums=0).lower(state)
        return xla.lower_cached(jax.jit(fn, donate_argnums=0), (state,), name=f"chunk{num_updates}", cfg=cfg,
                                donate_argnums=0)

    def chunk_program(state, num_updates):
        if num_updates not in chunk_fns:
            future = pending.pop(num_updates, None)
            chunk_fns[num_updates] = future.result() if future else lower_chunk(state, num_updates).compile()
        return chunk_fns[num_updates]

    def start_compiling(state) -> None:
        """Lower the chunk and evaluation programs for `state` (its arrays or their shapes) one
        after the other, and start compiling each in a thread of its own as soon as it is
        lowered (XLA's compiler releases the GIL: the programs compile side by side, and beside
        the tracing of the next ones). Where training leaves a core free (fewer seed devices
        than CPU devices, or an accelerator), the programs the first chunk does not need (a
        shorter last chunk; the evaluation when the first one comes after the second chunk or
        later) are lowered and compiled once the first chunk program is ready, beside training."""
        shapes = xla.seed_shapes(state, int(cfg.num_seeds))  # the arrays are donated to the first chunk
        pending[sizes.updates_per_log] = pool.submit(lower_chunk(shapes, sizes.updates_per_log).compile)
        chunks = sizes.num_chunks
        others = [("eval", partial(xla.lower_cached, eval_fn, (shapes.learner, shapes.norm, _seed_array(cfg),
                                                                eval_fold(0)), name="eval", cfg=cfg),
                   min(sizes.eval_every_chunks or chunks, chunks) >= 2)]  # (name, lower, needed after chunk 1)
        last = sizes.num_updates % sizes.updates_per_log  # a shorter last chunk is its own program
        if last:
            others.append((last, partial(lower_chunk, shapes, last), True))
        spare = jax.default_backend() != "cpu" or xla.seed_devices(int(cfg.num_seeds)) < jax.device_count()
        for name, lower, later in others:
            if spare and later:
                deferred[name] = lambda lower=lower: lower().compile()
            else:
                pending[name] = pool.submit(lower().compile)

    def compile_programs(state) -> float:
        """Wait for the first chunk program (compiling it and the others unless
        `init(prepare=True)` started them), then start the deferred ones. The evaluation and
        the last chunk are waited for when first used: they may compile while training runs.
        Returns the seconds this took."""
        start = time.perf_counter()
        if not pending:
            start_compiling(state)
        chunk_program(state, sizes.updates_per_log)
        pending.update({name: pool.submit(compile_) for name, compile_ in deferred.items()})
        deferred.clear()
        return time.perf_counter() - start

    def chunk(state, num_updates):
        return raise_checked(chunk_program(state, num_updates)(state))

    def evaluate(state, index):
        # compiled with the chunk programs when training; jitted on first use otherwise (rlcli eval)
        if "eval" in pending:
            compiled["eval"] = pending.pop("eval").result()
        ret, length = compiled.get("eval", eval_fn)(state.learner, state.norm, _seed_array(cfg), eval_fold(index))
        return np.asarray(ret), np.asarray(length)

    def restore(state, saved, meta):
        return RunnerState(**saved)

    def init(prepare: bool = False):
        """The seeds' initial state. With `prepare` (training), the chunk and evaluation programs
        are traced while the init program compiles, and start compiling themselves: on two or
        more cores tracing and compiling overlap (`compile_programs` waits for them)."""
        seeds = _seed_array(cfg)
        lowered = xla.lower_cached(init_fn, (seeds,), name="init", cfg=cfg)
        if not prepare:
            program = lowered.compile()
        else:
            init_future = pool.submit(lowered.compile)
            start_compiling(xla.seed_shapes(lowered.out_info, int(cfg.num_seeds)))
            program = init_future.result()
        return xla.shard_seeds(program(seeds), int(cfg.num_seeds))

    return Backend(init, compile_programs, chunk, evaluate, lambda state: state._asdict(), restore,
                   lambda: pool.shutdown(wait=False, cancel_futures=True), chunk_fns)


# ---- gymnasium backend -----------------------------------------------------------------------


class HostState(NamedTuple):
    learner: algos.LearnerState  # [S]
    key: jax.Array  # [S, 2]
    obs: np.ndarray  # [S, N, ...]
    episodes: EpisodeStats  # numpy, [S, N] / [S]
    norm: normalize.NormState  # [S]


def make_gymnasium_backend(cfg, spec, algo: algos.Algorithm, sizes: config.Sizes) -> Backend:
    from rlcli.envs import gymnasium_backend

    num_seeds, num_envs, num_steps = int(cfg.num_seeds), int(cfg.num_envs), int(cfg.algo.num_steps)
    num_eval, deterministic = int(cfg.eval_episodes), bool(cfg.eval_deterministic)
    seeds = [int(cfg.seed) + i for i in range(num_seeds)]
    # env seeds: each learner seeds its N envs from its own seed (far apart from eval envs)
    train_envs = [gymnasium_backend.make(spec.id, num_envs, seed * 10_007, cfg.env.vectorization)
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
        stats, _ = jax.lax.scan(lambda stats, step: (track_episodes(stats, *step), None), stats,
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

    def eval_act_packed(packed, obs, key):
        """The evaluation policy's actions for `obs` [S, E, ...], and the next key."""
        learner, norm, _ = packer[1](packed)
        keys = jax.vmap(jax.random.split)(key)
        action = jax.vmap(lambda learner, norm, obs, key: algo.act(
            learner, normalizer.obs(norm, obs), key, deterministic=deterministic)[0])(learner, norm, obs, keys[:, 1])
        return action, keys[:, 0]

    nan_check = bool(cfg.debug.nan_check)
    policy_fn, update_fn = policy_packed, update_packed
    if nan_check:
        policy_fn, update_fn = checked(policy_fn), checked(update_fn)
    policy_fn = jax.jit(policy_fn)
    update_jit = jax.jit(update_fn, donate_argnums=0)
    unwrap = raise_checked if nan_check else (lambda result: result)
    pack_fn = jax.jit(lambda tree: packer[0](tree))
    unpack_fn = jax.jit(lambda packed: packer[1](packed))
    eval_act = jax.jit(eval_act_packed)
    compiled: dict[str, Any] = {}
    metric_names: list[str] = []

    def init(prepare: bool = False):  # the programs compile in compile_programs either way
        # the same key split as the jax backend (params, env, run): same seed, same initial params
        keys = jax.vmap(lambda key: jax.random.split(key, 3))(seed_keys(cfg))
        learner = jax.jit(partial(init_seeds, algo.init))(keys[:, 0])
        obs = np.stack([env.reset() for env in train_envs])
        stats = EpisodeStats(*(np.zeros((num_seeds,) + s.shape, np.float32)
                               for s in empty_stats(num_envs, np)))
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
        jax.block_until_ready((all_params_finite(state.learner.params), eval_keys(cfg, 0)))
        return time.perf_counter() - start

    def empty_batch() -> Batch:
        """The host's part of a rollout, [T, S, N, ...]; the policy's log-prob and value
        outputs are added by `chunk` (see `update_all`)."""
        lead = (num_steps, num_seeds, num_envs)
        return Batch(np.zeros(lead + obs_shape, np.float32), np.zeros(lead + act_shape, act_dtype),
                     np.zeros(lead, np.float32), np.zeros(lead, bool), np.zeros(lead, bool),
                     None, None, np.zeros(lead + obs_shape, np.float32))

    def step_all(vec_envs, action) -> envs.Step:
        """Step seed i's vector env with action[i]; fields stacked to [S, N, ...]."""
        steps = [env.step(action[i]) for i, env in enumerate(vec_envs)]
        return envs.Step(*(np.stack(field) for field in zip(*steps)))

    def step_into(batch: Batch, t: int, action) -> np.ndarray:
        """Step seed i's train env with action[i], writing the transition into `batch` at step
        t; returns the observations to act on next, [S, N, ...]."""
        obs = []
        for i, env in enumerate(train_envs):
            step = env.step(action[i])
            batch.reward[t, i], batch.next_obs[t, i] = step.reward, step.next_obs
            batch.terminated[t, i], batch.truncated[t, i] = step.terminated, step.truncated
            obs.append(step.obs)
        return obs[0][None] if num_seeds == 1 else np.stack(obs)

    def chunk(state: HostState, num_updates: int):
        key, obs = state.key, state.obs
        carry = pack_state(state, reset_totals(state.episodes))
        per_update: list = []  # [S, M] metrics of each update, on the device
        for _ in range(num_updates):
            batch, log_prob_value = empty_batch(), []
            for t in range(num_steps):
                action, out, key = unwrap(policy_fn(carry, obs, key))
                log_prob_value.append(out)
                batch.obs[t] = obs
                batch.action[t] = action = np.asarray(action)
                obs = step_into(batch, t, action)
            batch = batch._replace(log_prob=tuple(log_prob_value))
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
            first_nonfinite(stacked, np), np.asarray(all_params_finite(learner.params)))

    def evaluate(state: HostState, index: int):
        if not eval_envs:
            # one env per episode, env k seeded eval_env_seed + k, so that `rlcli eval` can
            # replay each with a single env: never the `vector` env (one generator for all)
            mode = cfg.env.vectorization if cfg.env.vectorization == "async" else "sync"
            eval_envs.extend(gymnasium_backend.make(spec.id, num_eval, eval_env_seed(seed, 0), mode)
                             for seed in seeds)
        key, carry = eval_keys(cfg, index), pack_state(state)
        obs = np.stack([env.reset(seed=eval_env_seed(seed, index)) for env, seed in zip(eval_envs, seeds)])
        ret = np.zeros((num_seeds, num_eval), np.float64)
        length = np.zeros((num_seeds, num_eval), np.int64)
        alive = np.ones((num_seeds, num_eval), bool)
        for _ in range(max_eval_steps):
            action, key = eval_act(carry, obs, key)
            step = step_all(eval_envs, np.asarray(action))
            obs = step.obs
            ret += step.reward * alive
            length += alive
            alive &= ~(step.terminated | step.truncated)
            if not alive.any():
                break
        return ret.astype(np.float32), length.astype(np.float32)

    def checkpoint_state(state: HostState):
        return {"learner": state.learner, "key": state.key, "norm": state.norm}

    def restore(state: HostState, saved, meta) -> HostState:
        """Learner and RNG key come back; the episodes in flight restart, from env seeds
        shifted by the update count so that they are not the run's first episodes again."""
        obs = np.stack([env.reset(seed=env.seed + 7919 * int(meta["update"])) for env in train_envs])
        return HostState(saved["learner"], saved["key"], obs, state.episodes, saved["norm"])

    def close():
        for env in train_envs + eval_envs:
            env.close()

    return Backend(init, compile_programs, chunk, evaluate, checkpoint_state, restore, close)


# ---- faults --------------------------------------------------------------------------------


def checked(fn):
    """`debug.nan_check`: checkify `fn` so that the first primitive producing a NaN is reported
    with its source line (slower; only for debugging)."""
    from jax.experimental import checkify

    return checkify.checkify(fn, errors=checkify.nan_checks)


def raise_checked(result):
    """Unwrap the result of a `checked` function, raising RunError at a NaN; plain results pass."""
    from jax.experimental import checkify

    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], checkify.Error):
        error, result = result
        if error.get():
            raise RunError(f"debug.nan_check: {_describe_nan(error.get_exception())}", EXIT_DIVERGED)
    return result


def _describe_nan(exc) -> str:
    """'<primitive> at <file:line> (<function>)' for the innermost frame outside jax, plus the
    innermost rlcli frame when that is another one."""
    frames = [f for f in getattr(getattr(exc, "traceback_info", None), "frames", [])
              if "/jax/" not in f.file_name and "/jaxlib/" not in f.file_name]

    def where(frame) -> str:
        parts = Path(frame.file_name).parts
        short = "/".join(parts[-3:]) if "site-packages" in parts else str(Path(frame.file_name).name)
        if "rlcli" in parts:
            short = "/".join(parts[parts.index("rlcli"):])
        return f"{short}:{frame.line_num} ({frame.function_name})"

    text = f"the first NaN was produced by the primitive '{getattr(exc, 'prim', '?')}'"
    if frames:
        text += f" at {where(frames[0])}"
        ours = next((f for f in frames if "rlcli" in Path(f.file_name).parts), None)
        if ours is not None and ours is not frames[0]:
            text += f", called from {where(ours)}"
    return text


class StopSignals:
    """While training, the first SIGINT or SIGTERM asks the loop to stop after the current
    chunk and write a checkpoint; a second one interrupts at once. Only the main thread can
    own signal handlers, elsewhere this does nothing."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        sys.stderr.write(f"rlcli: {signal.Signals(signum).name} received: stopping after the "
                         "current chunk and writing a checkpoint (send it again to stop at once)\n")

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def _divergence(out: ChunkOut, seeds, updates_before: int, num_updates: int) -> tuple[int, str, int] | None:
    """(update, metrics, seed) of the first update in the chunk with a non-finite metric (all
    such metrics of that update, comma-separated), or None."""
    found: dict[tuple[int, int], list[str]] = {}
    for name, index in out.first_nonfinite.items():
        index = np.asarray(index)
        for i in np.flatnonzero(index >= 0):
            found.setdefault((updates_before + int(index[i]) + 1, seeds[i]), []).append(name)
    for i in np.flatnonzero(~np.asarray(out.params_finite)):
        found.setdefault((updates_before + num_updates, seeds[i]), []).append("params")
    if not found:
        return None
    update, seed = min(found)
    return update, ", ".join(sorted(found[update, seed])), seed


# ---- the run ---------------------------------------------------------------------------------


def versions() -> dict:
    return {"python": platform.python_version(), **xla.package_versions((
        "rlcli", "jax", "jaxlib", "flax", "optax", "gymnasium", "gymnax", "hydra-core", "numpy", "orbax-checkpoint"))}


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _seed_records(base: dict, num_seeds: int, per_seed: dict[str, np.ndarray], seeds) -> list[dict]:
    records = []
    for i in range(num_seeds):
        record = {"seed_index": i, "seed": seeds[i], **base}
        for name, values in per_seed.items():
            value = np.asarray(values)[i]
            if np.ndim(value) == 0 and np.isfinite(value):
                record[name] = float(value)
        records.append(record)
    return records


class Setup(NamedTuple):
    """What a run is made of, derived from its config."""

    sizes: config.Sizes
    backend_name: str  # "jax" | "gymnasium"
    spec: envs.EnvSpec
    algo: algos.Algorithm


def setup(cfg) -> Setup:
    """Validate the config (raises config.ConfigError), turn on the compilation cache, and make
    its env spec and algorithm."""
    from rlcli.sweep import use_compilation_cache

    sizes = config.validate(cfg)
    use_compilation_cache(cfg)
    xla.unroll_threefry()
    # jaxlib's LAPACK kernels (the QR of the orthogonal initialisers) import scipy's BLAS and
    # LAPACK bindings when first lowered; import them here, with the other modules, not while
    # the run's clock runs (about 0.3 s)
    importlib.import_module("scipy.linalg.cython_lapack")
    backend_name = envs.resolve_backend(cfg.env.id, cfg.env.backend)
    spec = envs.make_spec(cfg.env.id, backend_name)
    return Setup(sizes, backend_name, spec, algos.make(cfg.algo.name, spec, cfg, sizes.num_updates))


def make_backend(cfg, parts: Setup) -> Backend:
    own = getattr(algos.module(cfg.algo.name), "make_backend", None)
    if own is not None:  # an algorithm with a loop of its own (a3c's asynchronous workers)
        return own(cfg, parts.spec, parts.algo, parts.sizes)
    make = make_jax_backend if parts.backend_name == "jax" else make_gymnasium_backend
    return make(cfg, parts.spec, parts.algo, parts.sizes)


def restore_checkpoint(backend: Backend, ckpt_dir: str | Path, step: int | None = None) -> tuple[Any, dict]:
    """(state, meta) of checkpoint `step` (default: the latest) in ckpt_dir, restored into a
    fresh state of `backend`; raises checkpoint.CheckpointError."""
    state = backend.init()
    saved, meta = checkpoint.restore(ckpt_dir, backend.checkpoint_state(state), step=step)
    return backend.restore(state, saved, meta), meta


LEGS = "legs.json"


def config_container(cfg) -> dict:
    """The config as plain, resolved data (what legs.json keeps of each leg)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def read_legs(run_dir: str | Path) -> list[dict]:
    """legs.json of a run: [{"start_update", "config"}] in order; [] when it has none (a run
    written before rlcli kept it, or one that has not started)."""
    path = Path(run_dir) / LEGS
    try:
        return json.loads(path.read_text())["legs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_legs(run_dir: Path, legs: list[dict]) -> None:
    from rlcli.logger import write_atomic

    write_atomic(Path(run_dir) / LEGS, json.dumps({"legs": legs}, indent=1) + "\n")


def train(cfg, run_dir: str | Path, resume: bool = False, stop_at_update: int | None = None) -> dict | None:
    """Train as configured, writing metrics, checkpoints, curve.png and summary.json into
    run_dir. With `resume`, continue from run_dir's newest readable checkpoint: metrics
    recorded after it are dropped and written again, so the file has no duplicate or missing
    steps. Every start of training (a leg) is recorded in legs.json with its config and first
    update, so that `rlcli reproduce` can replay a resumed run leg by leg; `stop_at_update`
    (a replayed leg that was stopped there) ends training at that update with a checkpoint, as
    a signal would, and returns None. Otherwise returns the summary. Raises
    config.ConfigError / checkpoint.CheckpointError for bad input, RunError for a failure
    while running and Interrupted after SIGINT/SIGTERM."""
    from rlcli import plot
    from rlcli.logger import read_metrics, truncate_metrics, write_atomic

    run_dir = Path(run_dir)
    parts = setup(cfg)
    if cfg.logger.tensorboard:  # the metrics logger's import (about 0.15 s), before the clock starts
        importlib.import_module("tensorboardX")
    sizes, backend_name, spec = parts.sizes, parts.backend_name, parts.spec
    num_seeds = int(cfg.num_seeds)
    seeds = [int(cfg.seed) + i for i in range(num_seeds)]
    ckpt_dir = run_dir / "checkpoints"

    start = time.perf_counter()
    backend = make_backend(cfg, parts)
    # from here on a SIGINT/SIGTERM stops the run at the next chunk boundary, with a checkpoint
    with StopSignals() as signals, contextlib.closing(backend):
        state = backend.init(prepare=True)
        init_time = time.perf_counter() - start  # mostly compiling the init program: counted as compile time
        updates_done, eval_index, wall_before = 0, 0, 0.0
        if resume:
            saved, meta = checkpoint.restore(ckpt_dir, backend.checkpoint_state(state), notice=log.warning)
            updates_done, eval_index = int(meta["update"]), int(meta.get("eval_index", 0))
            wall_before = float(meta.get("wall_time", 0.0))
            if updates_done > sizes.num_updates:
                raise config.ConfigError(
                    f"total_steps={int(cfg.total_steps)} is less than the {int(meta['env_steps'])} env "
                    f"steps already trained (allowed: total_steps >= {int(meta['env_steps'])})")
            if updates_done == sizes.num_updates and (run_dir / "summary.json").is_file():
                log.info("the run is already complete at %d env steps (pass total_steps= to "
                         "extend it)", sizes.total_steps)
                return json.loads((run_dir / "summary.json").read_text())
            # damaged checkpoints newer than the one restored are renamed <step>.damaged, so
            # training writes those steps again
            checkpoint.set_aside_after(ckpt_dir, int(meta["env_steps"]))
            state = backend.restore(state, saved, meta)
            truncate_metrics(run_dir, updates_done)
            from omegaconf import OmegaConf

            write_atomic(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        write_legs(run_dir, [leg for leg in read_legs(run_dir) if leg["start_update"] < updates_done] + [
            {"start_update": updates_done, "config": config_container(cfg)}])
        log.info("rlcli %s: %s on %s (%s backend), %s estimator, %d seed(s), %d env steps each -> %s",
                 "resume" if resume else "train", cfg.algo.name, spec.id, backend_name,
                 cfg.estimator.name, num_seeds, sizes.total_steps, run_dir)
        if resume:
            log.info("resuming from the checkpoint at env step %d (update %d)",
                     updates_done * sizes.steps_per_update, updates_done)
        for note in config.rounding_notes(cfg, sizes):
            log.info("note: %s", note)
        compile_time = init_time + backend.compile(state)
        devices = xla.devices_of(state)
        log.info("compiled in %.1f s%s", compile_time,
                 f"; the seeds train on {devices} devices in parallel" if devices > 1 else "")
        end = sizes.num_updates if stop_at_update is None else min(stop_at_update, sizes.num_updates)
        last_eval = _loop(cfg, run_dir, backend, state, sizes, seeds, updates_done, eval_index,
                          wall_before - start, signals, end)
    if end < sizes.num_updates:
        log.info("stopped at update %d with a checkpoint, as the replayed run was", end)
        return None
    run_time = time.perf_counter() - start - compile_time
    wall_time = wall_before + time.perf_counter() - start
    plot.learning_curve(read_metrics(run_dir), run_dir / "curve.png",
                        f"{cfg.algo.name} on {spec.id} ({backend_name})")
    ret, length = last_eval
    trained_steps = (sizes.num_updates - updates_done) * sizes.steps_per_update
    summary = {
        "algo": cfg.algo.name,
        "env": spec.id,
        "backend": backend_name,
        "estimator": cfg.estimator.name,
        "seeds": seeds,
        "total_steps": sizes.total_steps,
        "num_updates": sizes.num_updates,
        "resumed_from_update": updates_done if resume else None,
        "final_eval": {
            "episodes": int(cfg.eval_episodes),
            "deterministic": bool(cfg.eval_deterministic),
            "return_mean": [float(x) for x in ret.mean(axis=1)],
            "return_std": [float(x) for x in ret.std(axis=1)],
            "length_mean": [float(x) for x in length.mean(axis=1)],
        },
        "final_eval_return_mean": float(ret.mean()),
        "wall_time_s": round(wall_time, 3),
        "compile_time_s": round(compile_time, 3),
        "run_time_s": round(run_time, 3),
        "steps_per_second": round(trained_steps * num_seeds / max(run_time, 1e-9), 1),
        "device": jax.devices()[0].platform,
        "seed_devices": devices,
        "versions": versions(),
        "git_commit": git_commit(),
    }
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("final evaluation return %s (mean over %d episodes per seed); %.1f s wall, %.0f steps/s",
             ", ".join(f"{x:.1f}" for x in summary["final_eval"]["return_mean"]),
             int(cfg.eval_episodes), wall_time, summary["steps_per_second"])
    return summary


def _loop(cfg, run_dir: Path, backend: Backend, state, sizes: config.Sizes, seeds, updates_done: int,
          eval_index: int, wall_offset: float, signals: StopSignals, end: int):
    """Chunks from update `updates_done` to update `end`: log, evaluate, checkpoint (always at
    `end`). Returns the last evaluation's (returns, lengths), or None if there was none."""
    from rlcli.logger import MetricsLogger, Progress

    num_seeds = len(seeds)
    ckpt_dir = run_dir / "checkpoints"
    metrics_log = MetricsLogger(run_dir, cfg.logger, num_seeds,
                                purge_step=updates_done * sizes.steps_per_update + 1 if updates_done else None)
    ckpt = checkpoint.manager(ckpt_dir, int(cfg.checkpoint_keep))
    progress = Progress(cfg.logger.progress, sizes.total_steps)
    saved_steps = set(checkpoint.steps(ckpt_dir))
    last_saved = max(saved_steps, default=None)
    last_eval = None
    loop_start = time.perf_counter()
    start_updates = updates_done

    def save(env_steps: int) -> None:
        nonlocal last_saved
        if env_steps in saved_steps:
            return
        meta = {"env_steps": env_steps, "update": updates_done, "eval_index": eval_index,
                "wall_time": wall_offset + time.perf_counter(), "seeds": seeds}
        try:
            checkpoint.save(ckpt, env_steps, backend.checkpoint_state(state), meta)
        except Exception as err:
            raise RunError(f"cannot write the checkpoint at env step {env_steps} to {ckpt_dir}: {_os_error(err)}; "
                           f"{_resume_hint(run_dir, last_saved)}") from None
        saved_steps.add(env_steps)
        last_saved = env_steps

    try:
        while updates_done < end:
            n = min(sizes.updates_per_log, end - updates_done)
            chunk_start = time.perf_counter()
            state, out = backend.chunk(state, n)
            bad = _divergence(out, seeds, updates_done, n)
            updates_done += n
            chunk_number = math.ceil(updates_done / sizes.updates_per_log)
            env_steps = updates_done * sizes.steps_per_update
            last = updates_done == sizes.num_updates
            count = np.asarray(out.episodes.count)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_seed = {
                    "episode/count": count,
                    "episode/return": np.where(count > 0, np.asarray(out.episodes.return_sum) / count, np.nan),
                    "episode/length": np.where(count > 0, np.asarray(out.episodes.length_sum) / count, np.nan),
                    **{k: np.asarray(v) for k, v in out.metrics.items()},
                }
            # env steps per second of this chunk, all seeds, evaluation excluded
            chunk_rate = n * sizes.steps_per_update * num_seeds / max(time.perf_counter() - chunk_start, 1e-9)
            if bad is None and (last or (sizes.eval_every_chunks and chunk_number % sizes.eval_every_chunks == 0)):
                ret, length = backend.evaluate(state, eval_index)
                eval_index += 1
                last_eval = (ret, length)
                per_seed["eval/return_mean"] = ret.mean(axis=1)
                per_seed["eval/return_std"] = ret.std(axis=1)
                per_seed["eval/length_mean"] = length.mean(axis=1)
            wall = wall_offset + time.perf_counter()
            try:
                metrics_log.write(_seed_records(
                    {"update": updates_done, "env_steps": env_steps, "wall_time": round(wall, 4),
                     "perf/steps_per_s": round(chunk_rate, 1)},
                    num_seeds, per_seed, seeds))
            except OSError as err:
                raise RunError(f"cannot write metrics to {run_dir}: {err}; "
                               f"{_resume_hint(run_dir, last_saved)}") from None
            if bad is not None:
                update, metric, seed = bad
                raise RunError(
                    f"training diverged: {metric} not finite at update {update} (env step "
                    f"{update * sizes.steps_per_update}, seed {seed}); {_resume_hint(run_dir, last_saved)}; "
                    "try a smaller algo.learning_rate, or debug.nan_check=true to find the "
                    "operation that first produced a NaN", EXIT_DIVERGED)
            if (last or updates_done == end or chunk_number % sizes.checkpoint_every_chunks == 0
                    or signals.received):
                save(env_steps)
            rate = (updates_done - start_updates) * sizes.steps_per_update * num_seeds / max(
                time.perf_counter() - loop_start, 1e-9)
            finite = per_seed["episode/return"][np.isfinite(per_seed["episode/return"])]
            progress.update(env_steps, rate, float(finite.mean()) if finite.size else None)
            if signals.received and not last:
                raise Interrupted(
                    f"stopped by {signal.Signals(signals.received).name} at env step {env_steps} "
                    f"(update {updates_done}); checkpoint written; continue with: "
                    f"rlcli resume run={run_dir}", signals.received)
    finally:
        progress.close()
        ckpt.close()
        metrics_log.close()
    return last_eval


def _os_error(err: Exception) -> str:
    """'[Errno N] reason' from an OSError or from the text of tensorstore's wrapped one."""
    import re

    if isinstance(err, OSError):
        return f"[Errno {err.errno}] {err.strerror}" if err.errno else str(err)
    match = re.search(r":\s*([^:\[\]]+?)\s*\[os_error_code='?(\d+)'?\]", str(err))
    if match:
        return f"[Errno {match.group(2)}] {match.group(1)}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _resume_hint(run_dir: Path, last_saved: int | None) -> str:
    if last_saved is None:
        return "no checkpoint was written"
    return f"the last good checkpoint is at env step {last_saved} (continue with: rlcli resume run={run_dir})"
