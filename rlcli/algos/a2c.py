"""A2C: synchronous parallel advantage actor-critic (000 §4.4.2; 001 "A2C").

N environments are stepped together with the same parameters (000 §4.4.2, synchronized
parallel actor-critic); after T steps each the batch gives one gradient step on

    L = -mean(log pi(a_t|s_t) A_t) + vf_coef * 1/2 mean (V(s_t) - y_t)^2 - ent_coef * mean H(pi)

with A_t and y_t from the chosen estimator: TD error (001 "A2C", 000 eq. 4.1.4), n-step
returns (000 eq. 4.2.8; to the end of the segment as in A3C, 001) or GAE (000 eq. 4.2.10).
Value loss 000 eq. 4.1.5, entropy bonus 001 "Policy Entropy Bonus", shared or two-network
design 000 §4.4.1, gradient clipping by global norm. A recurrent policy (`network=gru`) is
replayed over the batch from its stored first hidden state (the policy's `unroll`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlcli import estimators, losses
from rlcli.algos import (ACTOR_CRITIC_KEYS, BASE_KEYS, ON_POLICY_ESTIMATORS, OPTIMIZER_KEYS, Algorithm, Batch,
                         actor_critic_policy, make_optimizer)
from rlcli.rules import with_defaults

KEYS = with_defaults({**BASE_KEYS, **OPTIMIZER_KEYS, **ACTOR_CRITIC_KEYS},
                     num_steps=5, learning_rate=7.0e-4, optimizer="rmsprop")
ESTIMATORS = ON_POLICY_ESTIMATORS
ESTIMATOR = "nstep"
ACTION_SPACES = ("discrete", "continuous")


# the loss coefficients live in the learner state (LearnerState.hparams): traced, not compiled in
TRACED = ("vf_coef", "ent_coef")


def actor_critic_loss(unroll, dist, estimator, algo_cfg):
    """`loss_fn(params, batch, hparams) -> (loss, metrics)`: the actor-critic loss above over a
    time-major batch (the policy and critic from the policy's `unroll`: a recurrent one replays
    the batch's sequences), Phi_t from `estimator` (batched), the coefficients `vf_coef` and
    `ent_coef` from `hparams` (traced: LearnerState.hparams), `algo.normalize_advantages`.
    Shared by a2c and a3c."""
    normalize_advantages = algo_cfg.normalize_advantages

    def loss_fn(params, batch: Batch, hparams: dict):
        vf_coef, ent_coef = hparams["vf_coef"], hparams["ent_coef"]
        dist_params, values, next_values = unroll(params, batch)
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
            "policy/entropy": entropy,
            "loss/total": loss,
            "train/advantage_mean": jnp.mean(advantages),
            "train/value_mean": jnp.mean(values),
            "train/explained_variance": losses.explained_variance(values, targets),
        }

    return loss_fn


def make(spec, cfg, num_updates: int) -> Algorithm:
    algo = cfg.algo
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    tx = make_optimizer(algo, num_updates)
    policy = actor_critic_policy(spec, cfg, tx, traced=TRACED)
    loss_fn = actor_critic_loss(policy.unroll, policy.dist, estimator, algo)

    def update(learner, batch, key):
        del key  # A2C's update is deterministic given the batch
        grads, metrics = jax.grad(loss_fn, has_aux=True)(learner.params, batch, learner.hparams)
        updates, opt_state = tx.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, updates)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        return learner._replace(params=params, opt_state=opt_state, update_step=learner.update_step + 1), metrics

    return Algorithm(policy.init, policy.act, update, policy.initial_state)
