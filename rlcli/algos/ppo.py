"""PPO: proximal policy optimisation with the clipped surrogate (Schulman et al. 2017; 000 §3.5).

The seeds leave "Add PPO" as a placeholder (000 §3.5) after the importance-sampled surrogate
(000 eq. 3.3.2): the batch collected by pi_old is reused for `update_epochs` passes of
`num_minibatches` minibatches, and the ratio rho = pi / pi_old is clipped to [1-eps, 1+eps] so
that the new policy stays close to the one that collected the data. Per minibatch,

    L = -mean min(rho A, clip(rho, 1-eps, 1+eps) A) + vf_coef * L_V - ent_coef * mean H(pi),

with advantages and value targets from the chosen estimator (GAE by default, 000 eq. 4.2.10),
computed once per batch with the rollout's parameters and normalised per minibatch; L_V is the
critic regression (000 eq. 4.1.5), optionally clipped around the rollout's values. Gradients
are clipped by global norm; the learning rate may be annealed linearly. With `target_kl`, the
epochs stop early once a minibatch's approximate KL(pi_old || pi) exceeds 1.5 x target_kl (as
Stable-Baselines3); that minibatch's step is not applied.

`algo.discount_surrogate: true` keeps the gamma^t of 000 eq. 3.3.2, which PPO's usual form (and
CleanRL's, Stable-Baselines3's) drops: each step's term of the clipped objective is weighted by
w_t = gamma^(t - t0), t0 the first step of t's episode within the rollout segment (an episode
already running when the segment starts counts from the segment's first step;
`rlcli.estimators.discount_weights`, per env column),

    L_pi = -mean w_t min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t).

The weight is applied after the per-minibatch normalisation of A (which standardises the
unweighted advantages) and multiplies the per-step term, clip included; since w_t > 0 that is
the same as clipping with the weighted advantage w_t A_t. The value loss, the entropy bonus and
the KL estimate are unweighted.

With a recurrent policy (`network=gru`) a minibatch is a set of whole env columns [T, N/M]
(`num_minibatches` M divides `num_envs` N), replayed through the policy's `unroll` from the
hidden states stored with the batch's first step, resetting them where episodes start; the
advantages and value targets come from the same replay with the rollout's parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlcli import estimators, losses
from rlcli.algos import (ACTOR_CRITIC_KEYS, BASE_KEYS, ON_POLICY_ESTIMATORS, OPTIMIZER_KEYS, Algorithm, Batch,
                         LearnerState, actor_critic_policy, make_optimizer)
from rlcli.errors import ConfigError
from rlcli.rules import Key, boolean, int_at_least, optional_positive, positive, with_defaults

# defaults: CleanRL's ppo.py
KEYS = {
    **with_defaults({**BASE_KEYS, **OPTIMIZER_KEYS}, num_steps=128, learning_rate=2.5e-4, anneal_lr=True),
    "algo.update_epochs": Key(4, int_at_least(1), "passes over each batch"),
    "algo.num_minibatches": Key(4, int_at_least(1), "minibatches per pass (must divide the batch)"),
    "algo.clip_coef": Key(0.2, positive(), "clip range eps of the ratio pi/pi_old"),
    "algo.clip_value_loss": Key(True, boolean(), "clip the critic's update to +-clip_coef around the rollout's "
                                                 "values"),
    "algo.target_kl": Key(None, optional_positive(), "stop the epochs once approx KL > 1.5 x target_kl (null: "
                                                     "never)"),
    **with_defaults(ACTOR_CRITIC_KEYS, ent_coef=0.01,
                    normalize_advantages=(True, "standardise the advantages per minibatch")),
    "algo.discount_surrogate": Key(False, boolean(), "weight each step's surrogate term by gamma^(t-t0), t0 its "
                                                     "episode's first step in the rollout (000 eq. 3.3.2; applied "
                                                     "after normalising A); false: unweighted, as CleanRL and SB3"),
}
ESTIMATORS = ON_POLICY_ESTIMATORS
ESTIMATOR = "gae"
ACTION_SPACES = ("discrete", "continuous")


def check(cfg, spec) -> None:
    batch = cfg.num_envs * cfg.algo.num_steps
    minibatches = cfg.algo.num_minibatches
    if cfg.network.name == "gru" and cfg.num_envs % minibatches:
        raise ConfigError(
            f"algo.num_minibatches={minibatches} does not divide num_envs={cfg.num_envs}: with network=gru a "
            f"minibatch is a set of whole env sequences (allowed: a divisor of {cfg.num_envs})")
    if batch % minibatches:
        raise ConfigError(
            f"algo.num_minibatches={minibatches} does not divide the batch of num_envs x algo.num_steps = "
            f"{cfg.num_envs} x {cfg.algo.num_steps} = {batch} (allowed: a divisor of {batch})")


def make(spec, cfg, num_updates: int) -> Algorithm:
    algo = cfg.algo
    epochs, minibatches = algo.update_epochs, algo.num_minibatches
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    tx = make_optimizer(algo, num_updates * epochs * minibatches)  # one optimizer step per minibatch
    policy = actor_critic_policy(spec, cfg, tx)
    network, dist, recurrent = policy.network, policy.dist, policy.initial_state is not None
    vf_coef, ent_coef, clip = algo.vf_coef, algo.ent_coef, algo.clip_coef
    clip_value, normalize_advantages = algo.clip_value_loss, algo.normalize_advantages
    max_kl = None if algo.target_kl is None else 1.5 * algo.target_kl
    gamma, discount_surrogate = algo.gamma, algo.discount_surrogate

    def loss_fn(params, mb):
        if recurrent:  # mb [T, N / num_minibatches]: whole sequences, replayed from their stored states
            dist_params, values, _ = policy.unroll(params, mb["batch"], bootstrap=False)
        else:
            dist_params, values = network.apply(params, mb["obs"])
        log_prob = dist.log_prob(dist_params, mb["action"])
        advantages = losses.normalize(mb["advantage"]) if normalize_advantages else mb["advantage"]
        weights = mb["weight"] if discount_surrogate else None  # gamma^(t - t0), after normalising
        policy_loss, clip_fraction = losses.clipped_surrogate_loss(log_prob, mb["log_prob"], advantages, clip,
                                                                   weights)
        if clip_value:
            value_loss = losses.clipped_value_loss(values, mb["value"], mb["target"], clip)
        else:
            value_loss = losses.value_loss(values, mb["target"])
        entropy = losses.entropy_bonus(dist.entropy(dist_params))
        loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
        return loss, {
            "loss/policy": policy_loss,
            "loss/value": value_loss,
            "policy/entropy": entropy,
            "loss/total": loss,
            "policy/approx_kl": losses.approx_kl(log_prob, mb["log_prob"]),
            "policy/clip_fraction": clip_fraction,
        }

    def minibatch_step(carry, mb):
        learner, stopped = carry
        grads, metrics = jax.grad(loss_fn, has_aux=True)(learner.params, mb)
        updates, opt_state = tx.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, updates)
        apply = ~stopped if max_kl is None else ~stopped & (metrics["policy/approx_kl"] <= max_kl)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)  # noqa: E731
        learner = learner._replace(params=keep(params, learner.params), opt_state=keep(opt_state, learner.opt_state))
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        metrics["train/minibatches_applied"] = apply.astype(jnp.float32)
        return (learner, ~apply), metrics

    def update(learner, batch: Batch, key):
        _, values, next_values = policy.unroll(learner.params, batch)
        advantages, targets = estimator(batch.reward, values, next_values, batch.terminated, batch.truncated)
        flat = {"obs": batch.obs, "action": batch.action, "log_prob": batch.log_prob, "value": values,
                "advantage": advantages, "target": targets}
        if discount_surrogate:
            flat["weight"] = estimators.batched(lambda te, tr: estimators.discount_weights(te, tr, gamma=gamma))(
                batch.terminated, batch.truncated)
        if recurrent:  # minibatches of env columns [T, N / M], each with its sequences' batch
            del flat["obs"]
            flat["batch"] = batch
            num_envs = batch.reward.shape[1]

            def epoch(carry, k):
                order = jax.random.permutation(k, num_envs).reshape(minibatches, num_envs // minibatches)
                columns = jax.tree.map(lambda x: jnp.moveaxis(x[:, order], 1, 0), flat)
                return jax.lax.scan(minibatch_step, carry, columns)
        else:
            size = batch.reward.size
            flat = jax.tree.map(lambda x: x.reshape((size,) + x.shape[2:]), flat)

            def epoch(carry, k):
                order = jax.random.permutation(k, size).reshape(minibatches, size // minibatches)
                return jax.lax.scan(minibatch_step, carry, jax.tree.map(lambda x: x[order], flat))

        (learner, _), metrics = jax.lax.scan(epoch, (learner, jnp.bool_(False)), jax.random.split(key, epochs))
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["train/advantage_mean"] = jnp.mean(advantages)
        metrics["train/value_mean"] = jnp.mean(values)
        metrics["train/explained_variance"] = losses.explained_variance(values, targets)
        return LearnerState(learner.params, learner.opt_state, learner.update_step + 1), metrics

    return Algorithm(policy.init, policy.act, update, policy.initial_state)
