"""Batch actor-critic (000 Alg. 16 / Alg. 17, §4.1.2-4.1.3).

Each update, on a batch of `num_envs` x `algo.num_steps` transitions of the current policy:

1. fit the critic V_phi to the batch (step 3): `algo.critic_steps` gradient steps on
   L(phi) = 1/2 mean (V_phi(s_t) - y_t)^2 (000 eq. 4.1.5) with y_t
   * `algo.critic_target=monte_carlo`: the sampled discounted reward sums to the episode's end
     (Monte-Carlo policy evaluation, 000 §4.1.2, Theorem 4.1, discounted as Alg. 17); an
     episode still running at the end of the rollout (or cut by a time limit) adds
     gamma^k V_phi(s') where it is cut, the only place the critic enters its own target;
   * `algo.critic_target=bootstrap`: y_t = r_t + gamma (1 - terminated_t) V_phi(s'_t) (000 eq.
     4.1.6), re-evaluated with the current V_phi before every step (fitted value iteration);
2. evaluate the advantage with the fitted critic (step 4): the TD error
   r + gamma V_phi(s') - V_phi(s) (Alg. 17; `estimator=td`, the default), or the n-step / GAE
   advantage of 000 eq. 4.2.8 / 4.2.10 (`estimator=nstep|gae`);
3. take one actor step on -mean(log pi(a_t|s_t) A_t) - ent_coef * mean H (steps 5-6).

Actor and critic keep separate optimizer states (`opt_state`, `critic_opt_state`), so the
moments of one loss never move the other's head; with `network.shared=true` both steps
train the shared torso (000 §4.4.1). `algo=online_ac` is this update with one transition per
env (Alg. 18).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli import estimators, losses
from rlcli.algos import (ACTOR_CRITIC_KEYS, BASE_KEYS, ON_POLICY_ESTIMATORS, OPTIMIZER_KEYS, Algorithm, Batch,
                         actor_critic_policy,
                         make_optimizer)
from rlcli.rules import Key, int_at_least, one_of, with_defaults

# the actor-critic coefficients without vf_coef: the critic has its own fitting phase
ACTOR_KEYS = {k: v for k, v in ACTOR_CRITIC_KEYS.items() if k != "algo.vf_coef"}
KEYS = {
    **with_defaults(BASE_KEYS, num_steps=(32, "T: steps per env per batch (batch = num_envs x num_steps)")),
    "algo.critic_target": Key("monte_carlo", one_of("monte_carlo", "bootstrap"),
                              "monte_carlo: sampled reward sums (000 §4.1.2) | bootstrap: r + gamma V(s') (000 eq. "
                              "4.1.6)"),
    "algo.critic_steps": Key(10, int_at_least(1), "gradient steps fitting V to the batch before the actor step "
                                                  "(step 3)"),
    **with_defaults(OPTIMIZER_KEYS, learning_rate=(3.0e-4, "both the critic's steps and the actor's step")),
    **ACTOR_KEYS,
}
ESTIMATORS = ON_POLICY_ESTIMATORS
ESTIMATOR = "td"
ACTION_SPACES = ("discrete", "continuous")


class ACState(NamedTuple):
    params: Any
    opt_state: Any  # the actor step's optimizer state
    critic_opt_state: Any  # the critic fitting's optimizer state
    update_step: jax.Array


def make_actor_critic(spec, cfg, num_updates: int, critic_target: str, critic_steps: int) -> Algorithm:
    """The fit-critic-then-step-actor update above (shared with online_ac)."""
    algo = cfg.algo
    gamma = algo.gamma
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, gamma))
    monte_carlo = estimators.batched(estimators.make("reward_to_go", gamma, baseline="value"))
    tx = make_optimizer(algo, num_updates)
    critic_tx = make_optimizer(algo, num_updates * critic_steps)
    network, dist, base_init, act, *_ = actor_critic_policy(spec, cfg, tx)
    ent_coef = algo.ent_coef
    normalize_advantages = algo.normalize_advantages

    def init(key):
        params, opt_state, step, _ = base_init(key)
        return ACState(params, opt_state, critic_tx.init(params), step)

    def values_of(params, batch: Batch):
        _, values = network.apply(params, batch.obs)
        _, next_values = network.apply(params, batch.next_obs)
        return values, jax.lax.stop_gradient(next_values)

    def critic_loss(params, batch: Batch, fixed_targets):
        values, next_values = values_of(params, batch)
        if critic_target == "bootstrap":  # 000 eq. 4.1.6 with the current critic
            targets = batch.reward + gamma * (1.0 - batch.terminated.astype(jnp.float32)) * next_values
        else:
            targets = fixed_targets
        return losses.value_loss(values, targets), (values, targets)

    def fit_critic(carry, _):
        params, critic_opt_state, batch, fixed_targets = carry
        (loss, (values, targets)), grads = jax.value_and_grad(critic_loss, has_aux=True)(
            params, batch, fixed_targets)
        updates, critic_opt_state = critic_tx.update(grads, critic_opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, critic_opt_state, batch, fixed_targets), (loss, values, targets)

    def actor_loss(params, batch: Batch):
        dist_params, values = network.apply(params, batch.obs)
        _, next_values = network.apply(params, batch.next_obs)
        advantages, _ = estimator(batch.reward, jax.lax.stop_gradient(values),
                                  jax.lax.stop_gradient(next_values), batch.terminated, batch.truncated)
        if normalize_advantages:
            advantages = losses.normalize(advantages)
        policy_loss = losses.policy_gradient_loss(dist.log_prob(dist_params, batch.action), advantages)
        entropy = losses.entropy_bonus(dist.entropy(dist_params))
        return policy_loss - ent_coef * entropy, (policy_loss, entropy, advantages)

    def update(learner: ACState, batch: Batch, key):
        del key  # deterministic given the batch
        fixed_targets = jnp.zeros_like(batch.reward)
        if critic_target == "monte_carlo":  # sampled reward sums, cut episodes bootstrapped
            values, next_values = values_of(learner.params, batch)
            _, fixed_targets = monte_carlo(batch.reward, values, next_values, batch.terminated, batch.truncated)
        carry = (learner.params, learner.critic_opt_state, batch, fixed_targets)
        (params, critic_opt_state, _, _), (critic_losses, values, targets) = jax.lax.scan(
            fit_critic, carry, None, critic_steps)
        (loss, (policy_loss, entropy, advantages)), grads = jax.value_and_grad(actor_loss, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, learner.opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss/policy": policy_loss,
            "loss/value": critic_losses[0],  # before fitting: how far the critic was
            "loss/value_fitted": critic_losses[-1],
            "policy/entropy": entropy,
            "loss/total": loss,
            "train/advantage_mean": jnp.mean(advantages),
            "train/value_mean": jnp.mean(values[-1]),
            "train/explained_variance": losses.explained_variance(values[-1], targets[-1]),
            "train/grad_norm": optax.tree.norm(grads),
        }
        return ACState(params, opt_state, critic_opt_state, learner.update_step + 1), metrics

    return Algorithm(init, act, update)


def make(spec, cfg, num_updates: int) -> Algorithm:
    return make_actor_critic(spec, cfg, num_updates, cfg.algo.critic_target, cfg.algo.critic_steps)
