"""The training loop: collect -> estimate -> update, in chunks of `updates_per_log` updates.

* `jax` backend: one chunk is ONE compiled program, `jit(vmap_seeds(scan_updates(scan_steps(
  act + env.step) + update)))`, so a chunk runs without returning to Python.
* `gymnasium` backend: a host loop steps the vector envs, calling a jitted `act` per step
  and a jitted `update` per rollout, both vmapped over seeds.

Both backends present the same `Backend` interface to `train`, which logs, evaluates,
checkpoints and writes the run directory.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
import time
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlcli import algos, checkpoint, config, envs
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


class Backend(NamedTuple):
    """What `train` needs from a backend; `state` has a leading seed axis."""

    init: Callable[[], Any]
    compile: Callable[[Any], float]  # compile chunk/eval programs; returns seconds
    chunk: Callable[[Any, int], tuple[Any, ChunkOut]]  # (state, num_updates)
    evaluate: Callable[[Any, int], tuple[np.ndarray, np.ndarray]]  # (state, eval index) -> [S, E] returns, lengths
    checkpoint_state: Callable[[Any], Any]  # the pytree that is saved
    close: Callable[[], None]


def seed_keys(cfg) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(int(cfg.seed) + i) for i in range(int(cfg.num_seeds))])


def _eval_keys(cfg, index: int) -> jax.Array:
    return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed) + i), 1_000_003 + index)
                      for i in range(int(cfg.num_seeds))])


# ---- jax backend -----------------------------------------------------------------------------


class RunnerState(NamedTuple):
    learner: algos.LearnerState
    env_state: Any
    obs: jax.Array
    key: jax.Array
    episodes: EpisodeStats


def make_jax_backend(cfg, spec, algo: algos.Algorithm, sizes: config.Sizes) -> Backend:
    from rlcli.envs import jax_backend

    env = jax_backend.make(spec.id)
    num_envs, num_steps = int(cfg.num_envs), int(cfg.algo.num_steps)
    num_eval, deterministic = int(cfg.eval_episodes), bool(cfg.eval_deterministic)
    max_eval_steps = int(spec.max_episode_steps)

    def init_one(key):
        k_params, k_env, k_run = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, num_envs))
        return RunnerState(algo.init(k_params), env_state, obs, k_run, empty_stats(num_envs))

    def env_step(runner: RunnerState, _):
        key, k_act, k_env = jax.random.split(runner.key, 3)
        action, info = algo.act(runner.learner, runner.obs, k_act)
        env_state, step = jax.vmap(env.step)(jax.random.split(k_env, num_envs), runner.env_state, action)
        transition = Batch(runner.obs, action, step.reward, step.terminated, step.truncated,
                           info.log_prob, info.value, step.next_obs)
        episodes = track_episodes(runner.episodes, step.reward, step.terminated, step.truncated)
        return RunnerState(runner.learner, env_state, step.obs, key, episodes), transition

    def update_step(runner: RunnerState, _):
        runner, batch = jax.lax.scan(env_step, runner, None, num_steps)
        key, k_update = jax.random.split(runner.key)
        learner, metrics = algo.update(runner.learner, batch, k_update)
        return runner._replace(learner=learner, key=key), metrics

    def chunk_one(runner: RunnerState, num_updates: int):
        runner = runner._replace(episodes=reset_totals(runner.episodes))
        runner, metrics = jax.lax.scan(update_step, runner, None, num_updates)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        return runner, ChunkOut(metrics, runner.episodes)

    def evaluate_one(learner, key):
        k_reset, k_run = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_eval))

        def body(carry, _):
            obs, env_state, key, ret, length, alive = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action, _ = algo.act(learner, obs, k_act, deterministic=deterministic)
            env_state, step = jax.vmap(env.step)(jax.random.split(k_env, num_eval), env_state, action)
            ret = ret + step.reward * alive
            length = length + alive
            alive = alive * (1.0 - (step.terminated | step.truncated).astype(jnp.float32))
            return (step.obs, env_state, key, ret, length, alive), None

        zeros = jnp.zeros((num_eval,), jnp.float32)
        carry = (obs, env_state, k_run, zeros, zeros, jnp.ones_like(zeros))
        (_, _, _, ret, length, _), _ = jax.lax.scan(body, carry, None, max_eval_steps)
        return ret, length

    init_fn = jax.jit(jax.vmap(init_one))
    chunk_fns: dict[int, Any] = {}
    eval_fn = jax.jit(jax.vmap(evaluate_one))
    compiled: dict[str, Any] = {}

    def chunk_program(state, num_updates):
        if num_updates not in chunk_fns:
            fn = jax.jit(jax.vmap(partial(chunk_one, num_updates=num_updates)), donate_argnums=0)
            chunk_fns[num_updates] = fn.lower(state).compile()
        return chunk_fns[num_updates]

    def compile_programs(state) -> float:
        start = time.perf_counter()
        chunk_program(state, sizes.updates_per_log)
        if sizes.num_updates % sizes.updates_per_log:  # a shorter last chunk is its own program
            chunk_program(state, sizes.num_updates % sizes.updates_per_log)
        compiled["eval"] = eval_fn.lower(state.learner, _eval_keys(cfg, 0)).compile()
        return time.perf_counter() - start

    def chunk(state, num_updates):
        return chunk_program(state, num_updates)(state)

    def evaluate(state, index):
        ret, length = compiled["eval"](state.learner, _eval_keys(cfg, index))
        return np.asarray(ret), np.asarray(length)

    return Backend(lambda: init_fn(seed_keys(cfg)), compile_programs, chunk, evaluate,
                   lambda state: state._asdict(), lambda: None)


# ---- gymnasium backend -----------------------------------------------------------------------


class HostState(NamedTuple):
    learner: algos.LearnerState  # [S]
    key: jax.Array  # [S, 2]
    obs: np.ndarray  # [S, N, ...]
    episodes: EpisodeStats  # numpy, [S, N] / [S]


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

    def policy_one(learner, obs, key):
        key, k_act = jax.random.split(key)
        action, info = algo.act(learner, obs, k_act)
        return action, info.log_prob, info.value, key

    policy_fn = jax.jit(jax.vmap(policy_one))
    update_jit = jax.jit(jax.vmap(algo.update, in_axes=(0, 1, 0)), donate_argnums=0)
    compiled: dict[str, Any] = {}
    act_det = jax.jit(jax.vmap(lambda learner, obs, key: algo.act(learner, obs, key, deterministic=deterministic)[0]))

    def init():
        # the same key split as the jax backend (params, env, run): same seed, same initial params
        keys = jax.vmap(lambda key: jax.random.split(key, 3))(seed_keys(cfg))
        learner = jax.vmap(algo.init)(keys[:, 0])
        obs = np.stack([env.reset() for env in train_envs])
        stats = EpisodeStats(*(np.zeros((num_seeds,) + s.shape, np.float32)
                               for s in empty_stats(num_envs, np)))
        return HostState(learner, keys[:, 2], obs, stats)

    @jax.jit
    def split_keys(key):
        keys = jax.vmap(jax.random.split)(key)
        return keys[:, 0], keys[:, 1]

    obs_shape = spec.obs_shape
    act_shape = () if spec.discrete else (spec.num_actions,)
    act_dtype = np.int32 if spec.discrete else np.float32

    def compile_programs(state) -> float:
        start = time.perf_counter()
        jax.block_until_ready(policy_fn(state.learner, state.obs, state.key))
        compiled["update"] = update_jit.lower(state.learner, empty_batch(), state.key).compile()
        jax.block_until_ready(act_det(state.learner, state.obs[:, :1].repeat(num_eval, 1), state.key))
        jax.block_until_ready(split_keys(state.key))
        return time.perf_counter() - start

    def empty_batch() -> Batch:
        lead = (num_steps, num_seeds, num_envs)
        return Batch(np.zeros(lead + obs_shape, np.float32), np.zeros(lead + act_shape, act_dtype),
                     np.zeros(lead, np.float32), np.zeros(lead, bool), np.zeros(lead, bool),
                     np.zeros(lead, np.float32), np.zeros(lead, np.float32),
                     np.zeros(lead + obs_shape, np.float32))

    def step_all(vec_envs, action) -> envs.Step:
        """Step seed i's vector env with action[i]; fields stacked to [S, N, ...]."""
        steps = [env.step(action[i]) for i, env in enumerate(vec_envs)]
        return envs.Step(*(np.stack(field) for field in zip(*steps)))

    def chunk(state: HostState, num_updates: int):
        learner, key, obs = state.learner, state.key, state.obs
        stats = EpisodeStats(*(np.array(x) for x in reset_totals(state.episodes)))
        sums: dict[str, np.ndarray] = {}
        for _ in range(num_updates):
            batch = empty_batch()
            for t in range(num_steps):
                action, log_prob, value, key = policy_fn(learner, obs, key)
                action, batch.log_prob[t], batch.value[t] = jax.device_get((action, log_prob, value))
                batch.obs[t], batch.action[t] = obs, action
                step = step_all(train_envs, action)
                batch.reward[t], batch.next_obs[t] = step.reward, step.next_obs
                batch.terminated[t], batch.truncated[t] = step.terminated, step.truncated
                stats = track_episodes(stats, step.reward, step.terminated, step.truncated)
                obs = step.obs
            key, k_update = split_keys(key)
            learner, metrics = compiled["update"](learner, batch, k_update)
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + np.asarray(value)
        metrics = {name: total / num_updates for name, total in sums.items()}
        return HostState(learner, key, obs, stats), ChunkOut(metrics, stats)

    def evaluate(state: HostState, index: int):
        if not eval_envs:
            eval_envs.extend(gymnasium_backend.make(spec.id, num_eval, seed * 10_007 + 1_000_003,
                                                    cfg.env.vectorization) for seed in seeds)
        key = _eval_keys(cfg, index)
        obs = np.stack([env.reset(seed=env.seed + index) for env in eval_envs])
        ret = np.zeros((num_seeds, num_eval), np.float64)
        length = np.zeros((num_seeds, num_eval), np.int64)
        alive = np.ones((num_seeds, num_eval), bool)
        for _ in range(max_eval_steps):
            key, k_act = split_keys(key)
            step = step_all(eval_envs, np.asarray(act_det(state.learner, obs, k_act)))
            obs = step.obs
            ret += step.reward * alive
            length += alive
            alive &= ~(step.terminated | step.truncated)
            if not alive.any():
                break
        return ret.astype(np.float32), length.astype(np.float32)

    def checkpoint_state(state: HostState):
        return {"learner": state.learner, "key": state.key}

    def close():
        for env in train_envs + eval_envs:
            env.close()

    return Backend(init, compile_programs, chunk, evaluate, checkpoint_state, close)


# ---- the run ---------------------------------------------------------------------------------


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("rlcli", "jax", "jaxlib", "flax", "optax", "gymnasium", "gymnax", "hydra-core",
                 "numpy", "orbax-checkpoint"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


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


def train(cfg, run_dir: str | Path) -> dict:
    """Train as configured, writing metrics, checkpoints, curve.png and summary.json into
    run_dir. Returns the summary."""
    from rlcli import plot
    from rlcli.logger import MetricsLogger, Progress, read_metrics

    run_dir = Path(run_dir)
    sizes = config.validate(cfg)
    backend_name = envs.resolve_backend(cfg.env.id, cfg.env.backend)
    spec = envs.make_spec(cfg.env.id, backend_name)
    algo = algos.make(cfg.algo.name, spec, cfg, sizes.num_updates)
    make_backend = make_jax_backend if backend_name == "jax" else make_gymnasium_backend
    num_seeds = int(cfg.num_seeds)
    seeds = [int(cfg.seed) + i for i in range(num_seeds)]

    log.info("rlcli train: %s on %s (%s backend), %s estimator, %d seed(s), %d env steps each -> %s",
             cfg.algo.name, spec.id, backend_name, cfg.estimator.name, num_seeds,
             sizes.total_steps, run_dir)
    for note in config.rounding_notes(cfg, sizes):
        log.info("note: %s", note)

    start = time.perf_counter()
    backend = make_backend(cfg, spec, algo, sizes)
    state = backend.init()
    compile_time = backend.compile(state)
    log.info("compiled in %.1f s", compile_time)

    metrics_log = MetricsLogger(run_dir, cfg.logger, num_seeds)
    ckpt = checkpoint.manager(run_dir / "checkpoints", int(cfg.checkpoint_keep))
    progress = Progress(cfg.logger.progress, sizes.total_steps)
    run_start = time.perf_counter()
    eval_index = 0
    last_eval: tuple[np.ndarray, np.ndarray] | None = None
    updates_done = 0
    try:
        for chunk_index in range(sizes.num_chunks):
            n = min(sizes.updates_per_log, sizes.num_updates - updates_done)
            state, out = backend.chunk(state, n)
            updates_done += n
            env_steps = updates_done * sizes.steps_per_update
            count = np.asarray(out.episodes.count)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_seed = {
                    "episodes": count,
                    "episode_return": np.where(count > 0, np.asarray(out.episodes.return_sum) / count, np.nan),
                    "episode_length": np.where(count > 0, np.asarray(out.episodes.length_sum) / count, np.nan),
                    **{k: np.asarray(v) for k, v in out.metrics.items()},
                }
            wall = time.perf_counter() - start
            last = chunk_index == sizes.num_chunks - 1
            if last or (sizes.eval_every_chunks and (chunk_index + 1) % sizes.eval_every_chunks == 0):
                ret, length = backend.evaluate(state, eval_index)
                eval_index += 1
                last_eval = (ret, length)
                per_seed["eval/return_mean"] = ret.mean(axis=1)
                per_seed["eval/return_std"] = ret.std(axis=1)
                per_seed["eval/length_mean"] = length.mean(axis=1)
            metrics_log.write(_seed_records(
                {"update": updates_done, "env_steps": env_steps, "wall_time": round(wall, 4)},
                num_seeds, per_seed, seeds))
            if last or (chunk_index + 1) % sizes.checkpoint_every_chunks == 0:
                checkpoint.save(ckpt, env_steps, backend.checkpoint_state(state),
                                {"env_steps": env_steps, "update": updates_done,
                                 "wall_time": wall, "seeds": seeds})
            rate = env_steps * num_seeds / max(time.perf_counter() - run_start, 1e-9)
            finite = per_seed["episode_return"][np.isfinite(per_seed["episode_return"])]
            progress.update(env_steps, rate, float(finite.mean()) if finite.size else None)
        ckpt.wait_until_finished()
    finally:
        progress.close()
        ckpt.close()
        metrics_log.close()
        backend.close()
    run_time = time.perf_counter() - run_start
    wall_time = time.perf_counter() - start

    plot.learning_curve(read_metrics(run_dir), run_dir / "curve.png",
                        f"{cfg.algo.name} on {spec.id} ({backend_name})")
    ret, length = last_eval
    summary = {
        "algo": cfg.algo.name,
        "env": spec.id,
        "backend": backend_name,
        "estimator": cfg.estimator.name,
        "seeds": seeds,
        "total_steps": sizes.total_steps,
        "num_updates": sizes.num_updates,
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
        "steps_per_second": round(sizes.total_steps * num_seeds / max(run_time, 1e-9), 1),
        "device": jax.devices()[0].platform,
        "versions": versions(),
        "git_commit": git_commit(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("final evaluation return %s (mean over %d episodes per seed); %.1f s wall, %.0f steps/s",
             ", ".join(f"{x:.1f}" for x in summary["final_eval"]["return_mean"]),
             int(cfg.eval_episodes), wall_time, summary["steps_per_second"])
    return summary
