"""A3C: asynchronous parallel advantage actor-critic (001 "A3C"; 000 §4.4.2).

`algo.num_workers` = W workers, each with its own `num_envs / W` environments, run as Python
threads at the same time (the jitted calls release the GIL, so their computations overlap).
A worker repeatedly

1. reads the *current* global parameters theta_v and their version v (a snapshot, under a
   short lock);
2. steps its envs for `algo.num_steps` steps with pi_{theta_v} (one jitted `lax.scan`);
3. computes the actor-critic gradient of a2c's loss on that segment at theta_v (jitted),

       L = -mean(log pi(a_t|s_t) A_t) + vf_coef * 1/2 mean (V(s_t) - y_t)^2 - ent_coef * mean H(pi)

   with A_t, y_t the n-step returns to the end of the worker's segment (001 "N-Step Returns
   for A3C updates", 000 eq. 4.2.8; `estimator=td|gae` also fit), the entropy bonus of 001
   "Policy Entropy Bonus", value loss 000 eq. 4.1.5;
4. applies it to the global parameters and optimizer state (gradient clipping by global norm,
   then RMSprop/Adam/SGD; one jitted call under the lock), which become version v' + 1.

No worker waits for another (000 §4.4.2, asynchronous parallel actor-critic): between the
snapshot and the application other workers may have applied theirs, so the gradient is
stale. `train/staleness_mean` and `train/staleness_max` report the staleness v' - v of the
chunk's applications (0: computed at the parameters it is applied to). The default network is
the shared-torso design of the slides (001 "A3C", 000 §4.4.1; `network.shared=true`).

Accounting: one runner update is W gradient applications, i.e. num_envs x num_steps env steps
as for a2c; a chunk of k updates hands out k x W applications from one counter to whichever
worker is free, so a fast worker may do more of them than a slow one. The learning rate
schedule (`algo.anneal_lr`) counts applications. Seeds (`num_seeds`) advance together: each
worker's rollout, gradient and application are vmapped over the seed axis.

Only the `jax` env backend (pure-JAX envs stepped inside the worker's jitted rollout);
`normalize.obs` / `normalize.reward` are not supported (their running statistics would be one
more piece of shared state written by every worker). Worker 0 starts from the jax backend's
run key and envs 0..N/W-1 of its reset, worker w > 0 from the key folded with w, so that with
W = 1 a run is the a2c run of the same config, application for application. Runs with W > 1
are not bit-reproducible: which worker applies when depends on thread scheduling. W = 1 is.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlcli import estimators, normalize
from rlcli.algos import (ACTOR_CRITIC_RULES, BASE_RULES, ON_POLICY_ESTIMATORS, OPTIMIZER_RULES, Algorithm,
                         Batch, LearnerState, actor_critic_policy, make_optimizer)
from rlcli.algos.a2c import actor_critic_loss
from rlcli.config import int_at_least

RULES = {**BASE_RULES, **OPTIMIZER_RULES, **ACTOR_CRITIC_RULES, "algo.num_workers": int_at_least(1)}
ESTIMATORS = ON_POLICY_ESTIMATORS
ACTION_SPACES = ("discrete", "continuous")


def check(cfg, spec) -> None:
    from rlcli.config import ConfigError, format_value
    from rlcli.envs import jax_ports

    if spec.backend != "jax":
        raise ConfigError(
            f"env.backend={format_value(cfg.env.backend)} is not allowed with algo=a3c (env.id="
            f"{spec.id!r} would run on the {spec.backend} backend; allowed: env.backend=jax or auto "
            f"with an env that has a JAX port: {', '.join(jax_ports())})")
    workers, num_envs = int(cfg.algo.num_workers), int(cfg.num_envs)
    if num_envs % workers:
        raise ConfigError(
            f"num_envs={num_envs} is not allowed with algo.num_workers={workers} (allowed with "
            f"algo=a3c: a multiple of algo.num_workers; each worker steps num_envs / num_workers envs)")
    for key in ("obs", "reward"):
        if cfg.normalize[key]:
            raise ConfigError(
                f"normalize.{key}=true is not allowed with algo=a3c "
                "(allowed: false; its running statistics would be shared state written by every worker)")


class Parts(NamedTuple):
    """A3C's pure functions: the `Algorithm` and the two halves of its update."""

    algorithm: Algorithm  # update = apply(learner, gradient(learner.params, batch)): staleness 0
    gradient: Callable[[Any, Batch], tuple[Any, dict]]  # (params, batch) -> (grads, metrics)
    apply: Callable[[LearnerState, Any], LearnerState]  # (global learner, grads) -> learner


def make_parts(spec, cfg, num_updates: int) -> Parts:
    algo = cfg.algo
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    # one optimizer step per gradient application: W per runner update
    tx = make_optimizer(algo, num_updates * int(algo.num_workers))
    network, dist, init, act = actor_critic_policy(spec, cfg, tx)
    loss_fn = actor_critic_loss(network, dist, estimator, algo)

    def gradient(params, batch: Batch):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        return grads, metrics

    def apply(learner: LearnerState, grads) -> LearnerState:
        updates, opt_state = tx.update(grads, learner.opt_state, learner.params)
        return LearnerState(optax.apply_updates(learner.params, updates), opt_state, learner.update_step + 1)

    def update(learner, batch, key):
        del key  # deterministic given the batch
        grads, metrics = gradient(learner.params, batch)
        return apply(learner, grads), metrics

    return Parts(Algorithm(init, act, update), gradient, apply)


def make(spec, cfg, num_updates: int) -> Algorithm:
    return make_parts(spec, cfg, num_updates).algorithm


# ---- the asynchronous backend ------------------------------------------------------------------


class WorkerState(NamedTuple):
    """One worker's own part of the run (per seed): its envs [N/W, ...], its RNG key and the
    episode statistics of its envs."""

    env_state: Any
    obs: jax.Array
    key: jax.Array
    episodes: Any  # runner.EpisodeStats over the worker's envs


class A3CState(NamedTuple):
    """The backend state; every leaf has a leading seed axis [S], `workers` then a worker axis
    [S, W, ...]. `learner.update_step` counts the gradient applications (the version)."""

    learner: LearnerState
    norm: normalize.NormState  # identity (normalize.* is off); kept for evaluation and `rlcli eval`
    workers: WorkerState


def make_backend(cfg, spec, algo: Algorithm, sizes):
    """The `runner.Backend` of algo=a3c: `chunk(state, k)` runs W worker threads until k x W
    gradient applications are done."""
    from rlcli import runner
    from rlcli.envs import jax_backend

    parts = make_parts(spec, cfg, sizes.num_updates)
    env = jax_backend.make(spec.id)
    num_workers, num_envs, num_steps = int(cfg.algo.num_workers), int(cfg.num_envs), int(cfg.algo.num_steps)
    per_worker = num_envs // num_workers
    nan_check = bool(cfg.debug.nan_check)
    normalizer = normalize.make(cfg)

    def init_one(key):
        # the jax backend's split: with W = 1 the same params, envs and key stream as a2c's run
        k_params, k_env, k_run = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, num_envs))

        def by_worker(x):
            return x.reshape((num_workers, per_worker) + x.shape[1:])

        keys = jnp.stack([k_run] + [jax.random.fold_in(k_run, w) for w in range(1, num_workers)])
        episodes = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_workers,) + x.shape),
                                runner.empty_stats(per_worker))
        workers = WorkerState(jax.tree.map(by_worker, env_state), by_worker(obs), keys, episodes)
        state = A3CState(algo.init(k_params), normalize.init(spec.obs_shape, num_envs), workers)
        # no weak types (gymnax's step counter is one): a restored checkpoint has none, and the
        # programs compiled for the fresh state are then the ones a resumed run needs
        return jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state)

    def work_one(learner: LearnerState, worker: WorkerState):
        """One seed: a rollout of the worker's envs with the snapshot `learner`, and the
        gradient at its parameters -> (worker, grads, metrics)."""

        def env_step(worker: WorkerState, _):
            key, k_act, k_env = jax.random.split(worker.key, 3)
            action, info = algo.act(learner, worker.obs, k_act)
            env_state, step = jax.vmap(env.step)(jax.random.split(k_env, per_worker), worker.env_state, action)
            transition = Batch(worker.obs, action, step.reward, step.terminated, step.truncated,
                               info.log_prob, info.value, step.next_obs)
            episodes = runner.track_episodes(worker.episodes, step.reward, step.terminated, step.truncated)
            return WorkerState(env_state, step.obs, key, episodes), transition

        worker, batch = jax.lax.scan(env_step, worker, None, num_steps)
        # the jax backend's split before its update (whose key a2c does not use): same stream
        key = jax.random.split(worker.key)[0]
        grads, metrics = parts.gradient(learner.params, batch)
        return worker._replace(key=key), grads, metrics

    work_fn, apply_fn = jax.vmap(work_one), jax.vmap(parts.apply)
    if nan_check:
        work_fn, apply_fn = runner.checked(work_fn), runner.checked(apply_fn)
    # the worker state is the thread's own (donated); the global learner is not donated, since
    # other workers may still be reading a snapshot of it
    work_jit, apply_jit = jax.jit(work_fn, donate_argnums=1), jax.jit(apply_fn)
    eval_fn = jax.jit(jax.vmap(runner.jax_evaluate_one(cfg, spec, algo, env, normalizer)))
    init_fn = jax.jit(lambda keys: runner.init_seeds(init_one, keys))
    compiled: dict[str, Any] = {}

    def worker_slice(workers: WorkerState, w: int) -> WorkerState:
        return jax.tree.map(lambda x: x[:, w], workers)

    def compile_training(state: A3CState) -> None:
        """The worker's and the application's programs, compiled before the threads start."""
        worker = worker_slice(state.workers, 0)
        compiled["work"] = work_jit.lower(state.learner, worker).compile()
        shapes = jax.eval_shape(work_fn, state.learner, worker)
        grads = shapes[1][1] if nan_check else shapes[1]
        compiled["apply"] = apply_jit.lower(state.learner, grads).compile()

    def compile_programs(state: A3CState) -> float:
        import time

        start = time.perf_counter()
        compile_training(state)
        compiled["eval"] = eval_fn.lower(state.learner, state.norm, runner.eval_keys(cfg, 0)).compile()
        jax.block_until_ready(runner.all_params_finite(state.learner.params))
        return time.perf_counter() - start

    def chunk(state: A3CState, num_updates: int):
        if "work" not in compiled:
            compile_training(state)
        work, apply = compiled["work"], compiled["apply"]
        applications = num_updates * num_workers
        workers = state.workers._replace(episodes=runner.reset_totals(state.workers.episodes))
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
                    worker, grads, metrics = runner.raise_checked(work(snapshot, worker))
                    metrics = jax.device_get(metrics)  # waits for this worker's computation only
                    with lock:
                        learner = runner.raise_checked(apply(shared["learner"], grads))
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
        bad = {name: np.where(i >= 0, i // num_workers, -1) for name, i in runner.first_nonfinite(stacked, np).items()}
        episodes = workers.episodes
        totals = runner.EpisodeStats(episodes.running_return, episodes.running_length,
                                     *(jnp.sum(x, axis=1) for x in (episodes.count, episodes.return_sum,
                                                                    episodes.length_sum)))
        return A3CState(learner, state.norm, workers), runner.ChunkOut(
            metrics, totals, bad, np.asarray(runner.all_params_finite(learner.params)))

    def evaluate(state: A3CState, index: int):
        ret, length = compiled.get("eval", eval_fn)(state.learner, state.norm, runner.eval_keys(cfg, index))
        return np.asarray(ret), np.asarray(length)

    def restore(state, saved, meta) -> A3CState:
        # uncommitted arrays like a fresh state's, so that the programs lower the same way and
        # a resumed run finds them in JAX's compilation cache
        return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), A3CState(**saved))

    return runner.Backend(lambda prepare=False: init_fn(runner.seed_keys(cfg)), compile_programs, chunk, evaluate,
                          lambda state: state._asdict(), restore, lambda: None)
