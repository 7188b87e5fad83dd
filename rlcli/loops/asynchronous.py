"""The asynchronous loop of algo=a3c (001 "A3C"; 000 §4.4.2): W worker threads, each with its
own `num_envs / W` envs, collect with rlcli.rollout.jax_collect at a snapshot of the global
parameters and apply their gradients to them without waiting for one another (the algorithm
and its accounting: rlcli/algos/a3c.py). The evaluation is rlcli.rollout.jax_evaluate."""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlcli import faults, normalize, rollout
from rlcli.algos import a3c
from rlcli.envs import jax_backend
from rlcli.rollout import EnvCarry
from rlcli.types import Algorithm, ChunkOut, EpisodeStats, LearnerState, Loop


class A3CState(NamedTuple):
    """The backend state; every leaf has a leading seed axis [S], `workers` then a worker axis
    [S, W, ...]. `learner.update_step` counts the gradient applications (the version)."""

    learner: LearnerState
    norm: normalize.NormState  # identity (normalize.* is off); kept for evaluation and `rlcli eval`
    workers: EnvCarry  # [S, W, ...]: each worker's envs [N/W, ...], RNG key and episode statistics


def make(cfg, spec, algo: Algorithm, sizes) -> Loop:
    """The loop of algo=a3c: `chunk(state, k)` runs W worker threads until k x W gradient
    applications are done."""
    parts = a3c.make_parts(spec, cfg, sizes.num_updates)
    env = jax_backend.make(spec.id, spec.observed)
    num_workers, num_envs, num_steps = cfg.algo.num_workers, cfg.num_envs, cfg.algo.num_steps
    per_worker = num_envs // num_workers
    nan_check = cfg.debug.nan_check
    normalizer = normalize.make(cfg)
    collect = rollout.jax_collect(algo, env, normalizer, per_worker)

    def init_one(key):
        # the jax backend's split: with W = 1 the same params, envs and key stream as a2c's run
        k_params, k_env, k_run = rollout.split_seed_key(key)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, num_envs))

        def by_worker(x):
            return x.reshape((num_workers, per_worker) + x.shape[1:])

        keys = jnp.stack([k_run] + [jax.random.fold_in(k_run, w) for w in range(1, num_workers)])
        episodes = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_workers,) + x.shape),
                                rollout.empty_stats(per_worker))
        workers = EnvCarry(jax.tree.map(by_worker, env_state), by_worker(obs), keys, episodes)
        state = A3CState(algo.init(k_params), normalize.init(spec.obs_shape, num_envs), workers)
        # no weak types (gymnax's step counter is one): a restored checkpoint has none, and the
        # programs compiled for the fresh state are then the ones a resumed run needs
        return jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state)

    def work_one(learner: LearnerState, worker: EnvCarry):
        """One seed: a rollout of the worker's envs with the snapshot `learner`, and the
        gradient at its parameters -> (worker, grads, metrics)."""

        worker, batch = collect(learner, None, worker, num_steps)  # normalize.* is off for a3c
        # the jax backend's split before its update (whose key a2c does not use): same stream
        key = jax.random.split(worker.key)[0]
        grads, metrics = parts.gradient(learner, batch)
        return worker._replace(key=key), grads, metrics

    work_fn, apply_fn = jax.vmap(work_one), jax.vmap(parts.apply)
    if nan_check:
        work_fn, apply_fn = faults.checked(work_fn), faults.checked(apply_fn)
    # the worker state is the thread's own (donated); the global learner is not donated, since
    # other workers may still be reading a snapshot of it
    work_jit, apply_jit = jax.jit(work_fn, donate_argnums=1), jax.jit(apply_fn)
    eval_fn = jax.jit(jax.vmap(rollout.jax_evaluate(cfg, spec, algo, env, normalizer)))
    init_fn = jax.jit(lambda keys: rollout.init_seeds(init_one, keys))
    compiled: dict[str, Any] = {}

    def worker_slice(workers: EnvCarry, w: int) -> EnvCarry:
        return jax.tree.map(lambda x: x[:, w], workers)

    def compile_training(state: A3CState) -> None:
        """The worker's and the application's programs, compiled before the threads start."""
        worker = worker_slice(state.workers, 0)
        compiled["work"] = work_jit.lower(state.learner, worker).compile()
        shapes = jax.eval_shape(work_fn, state.learner, worker)
        grads = shapes[1][1] if nan_check else shapes[1]
        compiled["apply"] = apply_jit.lower(state.learner, grads).compile()

    def compile_programs(state: A3CState) -> float:
        start = time.perf_counter()
        compile_training(state)
        compiled["eval"] = eval_fn.lower(state.learner, state.norm, rollout.eval_keys(cfg, 0)).compile()
        jax.block_until_ready(faults.all_params_finite(state.learner.params))
        return time.perf_counter() - start

    def chunk(state: A3CState, num_updates: int):
        if "work" not in compiled:
            compile_training(state)
        work, apply = compiled["work"], compiled["apply"]
        applications = num_updates * num_workers
        workers = state.workers._replace(episodes=rollout.reset_totals(state.workers.episodes))
        own = [worker_slice(workers, w) for w in range(num_workers)]
        lock = threading.Lock()
        start_version = int(np.asarray(state.learner.update_step)[0])
        shared = {"learner": state.learner, "version": start_version, "handed_out": 0}
        records: list = [None] * applications  # (metrics, staleness) in the order applied
        errors: list[BaseException] = []

        def run_worker(w: int) -> None:
            try:
                worker = own[w]
                while True:
                    with lock:
                        if errors or shared["handed_out"] == applications:
                            break
                        shared["handed_out"] += 1
                        snapshot, read_version = shared["learner"], shared["version"]
                    worker, grads, metrics = faults.raise_checked(work(snapshot, worker))
                    metrics = jax.device_get(metrics)  # waits for this worker's computation only
                    with lock:
                        learner = faults.raise_checked(apply(shared["learner"], grads))
                        version = shared["version"]
                        records[version - start_version] = (metrics, version - read_version)
                        shared["learner"], shared["version"] = learner, version + 1
                own[w] = worker
            except BaseException as err:  # reported by the main thread
                with lock:
                    errors.append(err)

        threads = [threading.Thread(target=run_worker, args=(w,), name=f"a3c-worker-{w}", daemon=True)
                   for w in range(num_workers)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        finally:
            with lock:
                if not errors and any(t.is_alive() for t in threads):
                    errors.append(KeyboardInterrupt())  # stop the workers at their next ticket
        if errors:
            raise errors[0]
        learner = shared["learner"]
        workers = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *own)
        stacked = {name: np.stack([np.asarray(r[0][name]) for r in records]) for name in records[0][0]}
        staleness = np.array([r[1] for r in records], np.float32)
        num_seeds = stacked["loss/total"].shape[1]
        metrics = {name: v.mean(axis=0) for name, v in stacked.items()}
        metrics["train/staleness_mean"] = np.full(num_seeds, staleness.mean(), np.float32)
        metrics["train/staleness_max"] = np.full(num_seeds, staleness.max(), np.float32)
        # the index of the first bad application -> the runner update it belongs to
        bad = {name: np.where(i >= 0, i // num_workers, -1) for name, i in faults.first_nonfinite(stacked, np).items()}
        episodes = workers.episodes
        totals = EpisodeStats(episodes.running_return, episodes.running_length,
                                     *(jnp.sum(x, axis=1) for x in (episodes.count, episodes.return_sum,
                                                                    episodes.length_sum)))
        return A3CState(learner, state.norm, workers), ChunkOut(
            metrics, totals, bad, np.asarray(faults.all_params_finite(learner.params)))

    def evaluate(state: A3CState, index: int):
        ret, length = compiled.get("eval", eval_fn)(state.learner, state.norm, rollout.eval_keys(cfg, index))
        return np.asarray(ret), np.asarray(length)

    def restore(state, saved, meta) -> A3CState:
        # uncommitted arrays like a fresh state's, so that the programs lower the same way and
        # a resumed run finds them in JAX's compilation cache
        return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), A3CState(**saved))

    return Loop(lambda prepare=False: init_fn(rollout.seed_keys(cfg)), compile_programs, chunk, evaluate,
                          lambda state: state._asdict(), restore, lambda: None)
