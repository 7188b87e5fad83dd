"""REINFORCE: Monte-Carlo policy gradient on complete episodes (000 Alg. 15, Theorem 3.1).

Each update takes one gradient step on

    L = -mean_used(log pi(a_t|s_t) Phi_t) + vf_coef * 1/2 mean_used (V(s_t) - G_t)^2 - ent_coef * mean_used H

with Phi_t from `estimator=total_return` (R(tau), 000 eq. 3.1.8 / 4.1.7) or `reward_to_go`
(000 eq. 3.1.10 / 4.1.8), minus the baseline `estimator.baseline`: the batch mean of Phi over
the used steps (000 eq. 3.1.11) or V(s_t) (000 eq. 4.2.2; the critic is then fitted to the
discounted reward-to-go G_t). With `estimator=td|nstep|gae` Phi_t is the critic-based
advantage of 000 eq. 4.1.4 / 4.2.8 / 4.2.10 over the same whole-episode batch, the critic
fitted to that estimator's targets. Shared or two-network design as `network.shared`.

Episode batching. The runner steps `num_envs` columns for `algo.num_steps` steps per update
and auto-resets; a column goes on from where the last update left it. A step is *used* only
if its episode both starts inside this segment at a reset and ends inside it (termination or
time limit): a column's first step counts as a start only when the previous segment's last
step ended an episode (`fresh`, carried in the learner state; true after the initial reset).
Every complete episode of the segment is used, so the batch holds Alg. 15's trajectories
{tau^i}, each sampled whole from the current policy; the partial episode at the end of a
column (and the rest of one already running at its start) is masked out and contributes
nothing. `algo.num_steps` must be at least the env's time limit, so an episode that starts
at a column's first step always ends inside it (with a converged CartPole policy every
segment is then exactly one 500-step episode per column). The step budget (`total_steps`,
`env_steps`) counts every step taken, masked ones included; `train/used_fraction` is the
share used, `train/episodes` the number of episodes per update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli import estimators, losses
from rlcli.algos import (ACTOR_CRITIC_RULES, BASE_RULES, MONTE_CARLO_ESTIMATORS, ON_POLICY_ESTIMATORS,
                         OPTIMIZER_RULES, Algorithm, Batch, actor_critic_policy, make_optimizer)

RULES = {**BASE_RULES, **OPTIMIZER_RULES, **ACTOR_CRITIC_RULES}
ESTIMATORS = MONTE_CARLO_ESTIMATORS + ON_POLICY_ESTIMATORS
ACTION_SPACES = ("discrete", "continuous")


class ReinforceState(NamedTuple):
    params: Any
    opt_state: Any
    update_step: jax.Array
    fresh: jax.Array  # [N] bool: the column's next step is the first of an episode


def check(cfg, spec) -> None:
    from rlcli.config import ConfigError, format_value

    limit = spec.max_episode_steps
    if limit is not None and int(cfg.algo.num_steps) < int(limit):
        raise ConfigError(
            f"algo.num_steps={format_value(cfg.algo.num_steps)} is not allowed (allowed with "
            f"algo=reinforce and env.id={spec.id!r}: an integer >= its time limit {limit}, so "
            "that an episode starting with a rollout ends inside it)")


def episode_mask(terminated: jax.Array, truncated: jax.Array, fresh: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[T, N] flags -> (mask [T, N]: the step belongs to an episode that starts at a reset inside
    the segment and ends inside it, next `fresh` [N]: the segment's last step ended an
    episode). `fresh` [N] says whether the segment's first step starts an episode."""
    done = jnp.logical_or(terminated, truncated).astype(jnp.int32)
    ended_before = jnp.cumsum(done, axis=0) - done  # episode ends strictly before t
    ends_from_here = jnp.cumsum(done[::-1], axis=0)[::-1]  # episode ends at t or later
    started_here = jnp.logical_or(fresh[None, :], ended_before > 0)
    return jnp.logical_and(started_here, ends_from_here > 0), done[-1].astype(bool)


def make(spec, cfg, num_updates: int) -> Algorithm:
    algo = cfg.algo
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    baseline = str(cfg.estimator.get("baseline", "none"))
    tx = make_optimizer(algo, num_updates)
    network, dist, base_init, act = actor_critic_policy(spec, cfg, tx)
    # the critic is fitted when Phi uses it: a value baseline, or td / nstep / gae
    uses_critic = baseline == "value" or cfg.estimator.name in ON_POLICY_ESTIMATORS
    vf_coef = float(algo.vf_coef) if uses_critic else 0.0
    ent_coef = float(algo.ent_coef)
    normalize_advantages = bool(algo.normalize_advantages)
    num_envs = int(cfg.num_envs)

    def init(key):
        return ReinforceState(*base_init(key), fresh=jnp.ones((num_envs,), bool))

    def loss_fn(params, batch: Batch, mask):
        dist_params, values = network.apply(params, batch.obs)
        _, next_values = network.apply(params, batch.next_obs)
        advantages, targets = estimator(
            batch.reward, jax.lax.stop_gradient(values), jax.lax.stop_gradient(next_values),
            batch.terminated, batch.truncated)
        if baseline == "mean":
            advantages = estimators.subtract_mean(advantages, mask)
        if normalize_advantages:
            advantages = losses.normalize(advantages, mask=mask)
        advantages = advantages * mask
        log_prob = dist.log_prob(dist_params, batch.action)
        policy_loss = losses.policy_gradient_loss(log_prob, advantages, mask)
        critic_loss = losses.value_loss(values, targets, mask)
        entropy = losses.entropy_bonus(dist.entropy(dist_params), mask)
        loss = policy_loss + vf_coef * critic_loss - ent_coef * entropy
        return loss, {
            "loss/policy": policy_loss,
            "loss/value": critic_loss,
            "policy/entropy": entropy,
            "loss/total": loss,
            "train/advantage_mean": losses.mean(advantages, mask),
            "train/value_mean": losses.mean(values, mask),
        }

    def update(learner: ReinforceState, batch: Batch, key):
        del key  # deterministic given the batch
        mask, fresh = episode_mask(batch.terminated, batch.truncated, learner.fresh)
        mask = mask.astype(jnp.float32)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(learner.params, batch, mask)
        updates, opt_state = tx.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, updates)
        done = jnp.logical_or(batch.terminated, batch.truncated)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        metrics["train/used_fraction"] = jnp.mean(mask)
        metrics["train/episodes"] = jnp.sum(done * mask)
        return ReinforceState(params, opt_state, learner.update_step + 1, fresh), metrics

    return Algorithm(init, act, update)
