"""A2C: synchronous parallel advantage actor-critic.

N environments are stepped together with the same parameters (000 §4.4.2, synchronized
parallel actor-critic); after T steps each the batch gives one gradient step on

    L = -mean(log pi(a_t|s_t) A_t) + vf_coef * 1/2 mean (V(s_t) - y_t)^2 - ent_coef * mean H(pi)

with A_t and y_t from the chosen estimator: TD error (001 "A2C", 000 eq. 4.1.4), n-step
returns (000 eq. 4.2.8; to the end of the segment as in A3C, 001) or GAE (000 eq. 4.2.10).
Value loss 000 eq. 4.1.5, entropy bonus 001 "Policy Entropy Bonus", shared or two-network
design 000 §4.4.1, gradient clipping by global norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlcli import distributions, estimators, losses, networks
from rlcli.algos import ActInfo, Algorithm, Batch, LearnerState, make_optimizer


def make(spec, cfg, num_updates: int) -> Algorithm:
    algo = cfg.algo
    network = networks.make(cfg.network, spec)
    dist = distributions.for_action_space(spec.discrete)
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    tx = make_optimizer(algo, num_updates)
    vf_coef, ent_coef = float(algo.vf_coef), float(algo.ent_coef)
    normalize_advantages = bool(algo.normalize_advantages)

    def init(key):
        params = network.init(key, jnp.zeros((1,) + spec.obs_shape, jnp.float32))
        return LearnerState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def act(learner, obs, key, deterministic=False):
        dist_params, value = network.apply(learner.params, obs)
        action = dist.mode(dist_params) if deterministic else dist.sample(key, dist_params)
        return action, ActInfo(dist.log_prob(dist_params, action), value)

    def loss_fn(params, batch: Batch):
        dist_params, values = network.apply(params, batch.obs)
        _, next_values = network.apply(params, batch.next_obs)
        advantages, targets = estimator(
            batch.reward, jax.lax.stop_gradient(values), jax.lax.stop_gradient(next_values),
            batch.terminated, batch.truncated)
        if normalize_advantages:
            advantages = losses.normalize(advantages)
        log_prob = dist.log_prob(dist_params, batch.action)
        entropy = losses.entropy_bonus(dist.entropy(dist_params))
        policy_loss = losses.policy_gradient_loss(log_prob, advantages)
        critic_loss = losses.value_loss(values, targets)
        loss = policy_loss + vf_coef * critic_loss - ent_coef * entropy
        return loss, {
            "loss/policy": policy_loss,
            "loss/value": critic_loss,
            "loss/entropy": entropy,
            "loss/total": loss,
            "train/advantage_mean": jnp.mean(advantages),
            "train/value_mean": jnp.mean(values),
            "train/explained_variance": losses.explained_variance(values, targets),
        }

    def update(learner, batch, key):
        del key  # A2C's update is deterministic given the batch
        grads, metrics = jax.grad(loss_fn, has_aux=True)(learner.params, batch)
        updates, opt_state = tx.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, updates)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        return LearnerState(params, opt_state, learner.update_step + 1), metrics

    return Algorithm(init, act, update)
