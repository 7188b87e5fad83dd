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

from typing import Any, Callable, NamedTuple

import jax
import optax

from rlcli import estimators
from rlcli.algos import (ACTOR_CRITIC_KEYS, BASE_KEYS, ON_POLICY_ESTIMATORS, OPTIMIZER_KEYS, Algorithm, Batch,
                         LearnerState, actor_critic_policy, make_optimizer)
from rlcli.algos.a2c import TRACED, actor_critic_loss
from rlcli.rules import Key, int_at_least, with_defaults

KEYS = {
    "algo.num_workers": Key(4, int_at_least(1), "W: asynchronous workers; num_envs must be a multiple (num_envs / W "
                                                "envs each)"),
    **with_defaults({**BASE_KEYS, **OPTIMIZER_KEYS, **ACTOR_CRITIC_KEYS},
                    num_steps=(5, "T: steps per env of a worker between its gradient applications"),
                    learning_rate=7.0e-4,
                    optimizer=("rmsprop", "the optimizer, its state shared by the workers (A3C's shared RMSprop)"),
                    ent_coef=0.01),
}
SETS = {"network.shared": True}  # one torso for actor and critic, as in the slides (000 §4.4.1)
ESTIMATOR = "nstep"
ESTIMATORS = ON_POLICY_ESTIMATORS
ACTION_SPACES = ("discrete", "continuous")
LOOP = "asynchronous"  # its own training loop: rlcli/loops/asynchronous.py


def check(cfg, spec) -> None:
    from rlcli.envs import jax_ports
    from rlcli.errors import ConfigError
    from rlcli.rules import format_value

    if spec.backend != "jax":
        raise ConfigError(
            f"env.backend={format_value(cfg.env.backend)} is not allowed with algo=a3c (env.id="
            f"{spec.id!r} would run on the {spec.backend} backend; allowed: env.backend=jax or auto "
            f"with an env that has a JAX port: {', '.join(jax_ports())})")
    workers, num_envs = cfg.algo.num_workers, cfg.num_envs
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

    algorithm: Algorithm  # update = apply(learner, gradient(learner, batch)): staleness 0
    gradient: Callable[[LearnerState, Batch], tuple[Any, dict]]  # (learner, batch) -> (grads, metrics)
    apply: Callable[[LearnerState, Any], LearnerState]  # (global learner, grads) -> learner


def make_parts(spec, cfg, num_updates: int) -> Parts:
    algo = cfg.algo
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    # one optimizer step per gradient application: W per runner update
    tx = make_optimizer(algo, num_updates * algo.num_workers)
    _, dist, init, act, unroll, _ = actor_critic_policy(spec, cfg, tx, traced=TRACED)
    loss_fn = actor_critic_loss(unroll, dist, estimator, algo)

    def gradient(learner: LearnerState, batch: Batch):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(learner.params, batch, learner.hparams)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        return grads, metrics

    def apply(learner: LearnerState, grads) -> LearnerState:
        updates, opt_state = tx.update(grads, learner.opt_state, learner.params)
        return learner._replace(params=optax.apply_updates(learner.params, updates), opt_state=opt_state,
                                update_step=learner.update_step + 1)

    def update(learner, batch, key):
        del key  # deterministic given the batch
        grads, metrics = gradient(learner, batch)
        return apply(learner, grads), metrics

    return Parts(Algorithm(init, act, update), gradient, apply)


def make(spec, cfg, num_updates: int) -> Algorithm:
    return make_parts(spec, cfg, num_updates).algorithm
