"""REINFORCE: Monte-Carlo policy gradient on complete episodes (000 Alg. 15, Theorem 3.1).

Each update takes one gradient step on

    L = -mean_used(log pi(a_t|s_t) Phi_t) + vf_coef * 1/2 mean_used (V(s_t) - G_t)^2 - ent_coef * mean_used H

with Phi_t from `estimator=total_return` (R(tau), 000 eq. 3.1.8 / 4.1.7) or `reward_to_go`
(000 eq. 3.1.10 / 4.1.8), minus the baseline `estimator.baseline`: the batch mean of Phi over
the used steps (000 eq. 3.1.11) or V(s_t) (000 eq. 4.2.2; the critic is then fitted to the
discounted reward-to-go G_t). With `estimator=td|nstep|gae` Phi_t is the critic-based
advantage of 000 eq. 4.1.4 / 4.2.8 / 4.2.10 over the same whole-episode batch, the critic
fitted to that estimator's targets. Shared or two-network design as `network.shared`.

Episode batching (`FRESH_EPISODES`: the loops reset every column at the start of each
rollout). A column of T = `algo.num_steps` steps starts a fresh episode at t = 0 and
auto-resets; an episode is *used* when it starts at t0 <= T - L, L the env's time limit, so
that it always ends inside the rollout. Whether an episode is used is decided by the episodes
before it in its column, never by its own length: the used episodes are i.i.d. trajectories
of the current policy, Alg. 15's {tau^i} (keeping the episodes that happen to end inside a
rollout would favour short ones). The first episode of every column is always used; the rest
of the column after the last used episode is masked out and costs samples (about half of
them while episodes are much shorter than L with T = 2L; none once they last L/2 or more).
`algo.num_steps` must be at least L. The step budget (`total_steps`, `env_steps`) counts every
step taken, masked ones included; `train/used_fraction` is the share used, `train/episodes`
the number of episodes per update.

The policy loss sums over the used steps and divides by T x num_envs, a constant, so that the
gradient's expectation is a fixed multiple of grad J (by Wald's identity the expected sum over
the used episodes is E[#episodes] grad J); dividing by the number of used steps, which depends
on the episodes' lengths, would bias its direction. `estimator.baseline=mean` is the mean over
the batch's episodes (000 eq. 3.1.11; per step of the episode for the reward-to-go) and
`leave_one_out` the same over the other episodes (unbiased);
`estimators.subtract_mean_baseline`.

Two more baselines, each refused where the seed does not define it (`check`):

* `estimator.baseline=optimal` (with `estimator=total_return`): the optimal baseline of 000
  eq. 3.1.17, per parameter component, b_k = E[g_k^2 R] / E[g_k^2] with g = grad log
  p(tau) (`rlcli.estimators.optimal_baseline`, leave-one-out, so unbiased). The per-episode
  gradients g(tau_i) are computed (per-step gradients of log pi, vmapped, summed over each
  episode: memory num_envs x num_steps x parameters) and combined directly,
  sum_i g(tau_i) (R_i - b_{-i}); like the surrogate it is divided by the number of used
  steps. `loss/policy` reports the surrogate without the baseline and
  `train/optimal_baseline` the gradient-norm-weighted mean of b.
* `estimator.baseline=q_control_variate` (with `estimator=reward_to_go`): the action-dependent
  control variate of 000 eq. 4.2.6, Phi_t - w_t Q_w(s_t, a_t) plus the correction
  w_t grad E_{a~pi}[Q_w(s_t, a)] (exact sum over actions for a Discrete space,
  reparameterised a = mu + sigma z for a Gaussian policy, z drawn from the update's key).
  Q_w is a `rlcli.networks.QNetwork` on the `network.*` sizes, fitted to the reward-to-go
  G_t with weight `algo.vf_coef`; the parameters are then {"actor_critic": ..., "q": ...}.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli import estimators, losses
from rlcli.algos import (ACTOR_CRITIC_KEYS, BASE_KEYS, MONTE_CARLO_ESTIMATORS, ON_POLICY_ESTIMATORS, OPTIMIZER_KEYS,
                         Algorithm, Batch, actor_critic_policy, make_optimizer)
from rlcli.rules import with_defaults

KEYS = with_defaults({**BASE_KEYS, **OPTIMIZER_KEYS, **ACTOR_CRITIC_KEYS},
                     num_steps=(1000, "T: steps per env per update, at least the env's time limit L: every column "
                                  "starts a fresh episode, and the episodes starting at t <= T - L are used; 2L "
                                  "keeps at least about half the steps"),
                     learning_rate=1.0e-3,
                     vf_coef=(0.5, "weight of the critic's loss (used with estimator.baseline=value or "
                                   "estimator=td|nstep|gae)"),
                     normalize_advantages=(False, "standardise Phi over the used steps of the batch"))
ESTIMATORS = MONTE_CARLO_ESTIMATORS + ON_POLICY_ESTIMATORS
ESTIMATOR = "reward_to_go"
SETS = {"estimator.baseline": "value"}
ACTION_SPACES = ("discrete", "continuous")
FRESH_EPISODES = True  # every rollout starts a fresh episode in each column (rlcli.loops)


class ReinforceState(NamedTuple):
    params: Any
    opt_state: Any
    update_step: jax.Array


# baselines that only algo=reinforce implements (algorithms that share `check`, e.g. is_pg, refuse them)
OWN_BASELINES = ("optimal", "q_control_variate")
# the estimator each of them needs (000 eq. 3.1.17: the whole-trajectory return; 4.2.6: the
# reward-to-go Qhat_t)
BASELINE_ESTIMATOR = {"optimal": "total_return", "q_control_variate": "reward_to_go"}


def check(cfg, spec) -> None:
    from rlcli.errors import ConfigError
    from rlcli.rules import format_value

    limit = spec.max_episode_steps
    name = cfg.algo.name
    if limit is None:
        raise ConfigError(f"env.id={spec.id!r} has no time limit, which algo={name} needs (allowed with "
                          f"algo={name}: an env with a time limit, e.g. a gymnasium id registered with "
                          "max_episode_steps): a rollout must hold whole episodes")
    if cfg.algo.num_steps < int(limit):
        raise ConfigError(
            f"algo.num_steps={format_value(cfg.algo.num_steps)} is not allowed (allowed with "
            f"algo={name} and env.id={spec.id!r}: an integer >= its time limit {limit}, so "
            "that an episode starting with a rollout ends inside it)")
    baseline = str(cfg.estimator.get("baseline", "none"))
    if baseline not in OWN_BASELINES:
        return
    if name != "reinforce":
        raise ConfigError(f"estimator.baseline={baseline} does not fit algo={name} (allowed with "
                          f"algo={name}: estimator.baseline=none, mean, leave_one_out, value)")
    needed = BASELINE_ESTIMATOR[baseline]
    if cfg.estimator.name != needed:
        why = ("000 eq. 3.1.17 is defined for the whole-trajectory return" if baseline == "optimal"
               else "000 eq. 4.2.6 subtracts Q_w from the reward-to-go")
        raise ConfigError(f"estimator.baseline={baseline} does not fit estimator={cfg.estimator.name} "
                          f"(allowed with estimator.baseline={baseline}: estimator={needed}; {why})")


def episode_slots(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """[T, N] -> the episode slot of each step, n * T + k for the k-th episode (counted from the
    segment's start) of column n: distinct episodes get distinct slots in [0, T * N)."""
    done = jnp.logical_or(terminated, truncated).astype(jnp.int32)
    horizon, num_envs = done.shape
    return jnp.cumsum(done, axis=0) - done + horizon * jnp.arange(num_envs)[None, :]


def episode_scores(log_prob_fn, params, obs, action, mask, slots, num_slots: int):
    """Per-episode g(tau_i) = sum_{t in tau_i} grad log pi(a_t|s_t) (000 eq. 3.1.7: the
    dynamics do not depend on theta): vmapped per-step gradients of `log_prob_fn(params, obs,
    action)` (one step) summed into the episode slots; masked steps count nothing. obs, action,
    mask, slots [M, ...] (flattened steps) -> pytree of [num_slots, ...]."""
    per_step = jax.vmap(jax.grad(log_prob_fn), in_axes=(None, 0, 0))(params, obs, action)
    return jax.tree.map(lambda g: jax.ops.segment_sum(
        g * mask.reshape((-1,) + (1,) * (g.ndim - 1)), slots, num_segments=num_slots), per_step)


def episode_mask(terminated: jax.Array, truncated: jax.Array, last_start: int) -> jax.Array:
    """[T, N] flags of a rollout whose columns start fresh episodes at t = 0 -> mask [T, N]: the
    step belongs to an episode that starts at t0 <= `last_start` (T - L: it then ends inside the
    rollout; the first episode always counts). Only the earlier episodes of a column decide
    whether an episode counts, never its own length. (The mask also requires the episode to end
    inside the rollout, which the time limit guarantees.)"""
    done = jnp.logical_or(terminated, truncated).astype(jnp.int32)
    ends_from_here = jnp.cumsum(done[::-1], axis=0)[::-1]  # episode ends at t or later
    start = jnp.arange(done.shape[0])[:, None] - estimators.episode_steps(terminated, truncated)
    return jnp.logical_and(start <= last_start, ends_from_here > 0)


def subtract_baseline(phi, batch: Batch, mask, estimator_name: str, baseline: str):
    """Phi minus the batch baselines `mean` and `leave_one_out` (the others: Phi as it is)."""
    if baseline not in ("mean", "leave_one_out"):
        return phi
    return estimators.subtract_mean_baseline(phi, batch.terminated, batch.truncated, mask,
                                             per_step=estimator_name == "reward_to_go",
                                             leave_one_out=baseline == "leave_one_out")


def make(spec, cfg, num_updates: int) -> Algorithm:
    from rlcli import networks

    algo = cfg.algo
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    baseline = str(cfg.estimator.get("baseline", "none"))
    option2 = str(cfg.estimator.get("discounting", "option1")) == "option2"
    last_start = cfg.algo.num_steps - spec.max_episode_steps
    gamma = algo.gamma
    tx = make_optimizer(algo, num_updates)
    network, dist, base_init, base_act, *_ = actor_critic_policy(spec, cfg, tx)
    # the critic is fitted when Phi uses it: a value baseline, a bootstrap at truncation, or
    # td / nstep / gae
    uses_critic = (baseline == "value" or cfg.estimator.get("bootstrap_truncation", False)
                   or cfg.estimator.name in ON_POLICY_ESTIMATORS)
    vf_coef = algo.vf_coef if uses_critic else 0.0
    q_coef = algo.vf_coef
    ent_coef = algo.ent_coef
    normalize_advantages = algo.normalize_advantages
    control_variate = baseline == "q_control_variate"
    q_net = networks.QNetwork(spec.num_actions, spec.discrete, tuple(cfg.network.hidden_sizes),
                              cfg.network.activation, len(spec.obs_shape)) if control_variate else None

    def policy_params(params):
        return params["actor_critic"] if control_variate else params

    def init(key):
        if not control_variate:
            return ReinforceState(*base_init(key)[:3])
        k_ac, k_q = jax.random.split(key)
        obs = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
        action = None if spec.discrete else jnp.zeros((1, spec.num_actions), jnp.float32)
        params = {"actor_critic": base_init(k_ac).params, "q": q_net.init(k_q, obs, action)}
        return ReinforceState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def act(learner, obs, key, deterministic=False):
        return base_act(learner._replace(params=policy_params(learner.params)), obs, key, deterministic)

    def phi_and_targets(params, batch: Batch, mask):
        dist_params, values = network.apply(policy_params(params), batch.obs)
        _, next_values = network.apply(policy_params(params), batch.next_obs)
        advantages, targets = estimator(
            batch.reward, jax.lax.stop_gradient(values), jax.lax.stop_gradient(next_values),
            batch.terminated, batch.truncated)
        advantages = subtract_baseline(advantages, batch, mask, cfg.estimator.name, baseline)
        if normalize_advantages and not control_variate:  # control_variate_loss standardises Phi - w Q
            advantages = losses.normalize(advantages, mask=mask)
        return dist_params, values, advantages * mask, targets

    def loss_fn(params, batch: Batch, mask, key, with_policy=True):
        dist_params, values, advantages, targets = phi_and_targets(params, batch, mask)
        log_prob = dist.log_prob(dist_params, batch.action)
        policy_loss = losses.policy_gradient_loss(log_prob, advantages, mask)
        critic_loss = losses.value_loss(values, targets, mask)
        entropy = losses.entropy_bonus(dist.entropy(dist_params), mask)
        rest = vf_coef * critic_loss - ent_coef * entropy
        per_batch = jnp.sum(mask) / mask.size  # the policy term: sum over used steps / (T x N)
        metrics = {"loss/value": critic_loss, "policy/entropy": entropy,
                   "train/advantage_mean": losses.mean(advantages, mask),
                   "train/value_mean": losses.mean(values, mask)}
        if control_variate:
            policy_loss, q_loss, q_mean = control_variate_terms(params, batch, dist_params, log_prob,
                                                                advantages, targets, mask, key)
            rest = rest + q_coef * q_loss
            metrics.update({"loss/q": q_loss, "train/q_mean": q_mean})
        policy_loss = policy_loss * jax.lax.stop_gradient(per_batch)
        metrics.update({"loss/policy": policy_loss, "loss/total": policy_loss + rest})
        # with the optimal baseline the policy term's gradient is made apart (optimal_policy_grads)
        return (policy_loss + rest if with_policy else rest), metrics

    def control_variate_terms(params, batch, dist_params, log_prob, phi, targets, mask, key):
        """(policy loss of 000 eq. 4.2.6, Q_w's regression loss on G_t, mean Q_w(s_t, a_t))."""
        if spec.discrete:
            q_all = q_net.apply(params["q"], batch.obs)
            q_taken = jnp.take_along_axis(q_all, batch.action[..., None].astype(jnp.int32), axis=-1)[..., 0]
            expected_q = estimators.expected_q_discrete(dist_params, q_all)
        else:
            q_taken = q_net.apply(params["q"], batch.obs, batch.action)
            mean, log_std = dist_params
            noise = jax.random.normal(key, mean.shape, mean.dtype)
            reparameterised = mean + jnp.exp(log_std) * noise  # a ~ pi(.|s), differentiable in theta
            expected_q = q_net.apply(jax.lax.stop_gradient(params["q"]), batch.obs, reparameterised)
        weight = (estimators.batched(lambda te, tr: estimators.discount_weights(te, tr, gamma=gamma))(
            batch.terminated, batch.truncated) if option2 else jnp.ones_like(phi))
        policy_loss = estimators.control_variate_loss(log_prob, expected_q, phi, q_taken, weight, mask,
                                                      normalize=normalize_advantages)
        q_loss = losses.value_loss(q_taken, targets, mask)
        return policy_loss, q_loss, losses.mean(q_taken, mask)

    def step_log_prob(params, obs, action):
        dist_params, _ = network.apply(params, obs[None])
        return dist.log_prob(dist_params, action[None])[0]

    def optimal_policy_grads(params, batch: Batch, mask):
        """-(1/n_used) sum_i g(tau_i) (R_i - b_{-i}), the optimal baseline (000 eq. 3.1.17)."""
        _, _, phi, _ = phi_and_targets(params, batch, mask)
        horizon, columns = mask.shape
        slots = episode_slots(batch.terminated, batch.truncated).reshape(-1)
        flat = lambda x: x.reshape((horizon * columns,) + x.shape[2:])  # noqa: E731
        scores = episode_scores(step_log_prob, params, flat(batch.obs), flat(batch.action),
                                flat(mask), slots, horizon * columns)
        steps = jax.ops.segment_sum(flat(mask), slots, num_segments=horizon * columns)
        returns = jax.ops.segment_sum(flat(phi), slots, num_segments=horizon * columns) / jnp.maximum(steps, 1.0)
        valid = steps > 0
        grad = estimators.optimal_baseline_gradient(scores, returns, valid)
        scale = -1.0 / mask.size  # the sum over the used episodes / (T x N), as the surrogate
        g2 = sum(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(scores))
        weighted_b = jnp.sum(g2 * returns) / jnp.maximum(jnp.sum(g2), 1e-30)  # 3.1.17 with |g|^2
        return jax.tree.map(lambda g: scale * g, grad), weighted_b

    def update(learner: ReinforceState, batch: Batch, key):
        mask = episode_mask(batch.terminated, batch.truncated, last_start).astype(jnp.float32)
        if baseline == "optimal":
            without_policy = partial(loss_fn, with_policy=False)
            grads, metrics = jax.grad(without_policy, has_aux=True)(learner.params, batch, mask, key)
            policy_grads, metrics["train/optimal_baseline"] = optimal_policy_grads(learner.params, batch, mask)
            grads = jax.tree.map(jnp.add, grads, policy_grads)
        else:
            grads, metrics = jax.grad(loss_fn, has_aux=True)(learner.params, batch, mask, key)
        updates, opt_state = tx.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, updates)
        done = jnp.logical_or(batch.terminated, batch.truncated)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        metrics["train/used_fraction"] = jnp.mean(mask)
        metrics["train/episodes"] = jnp.sum(done * mask)
        return ReinforceState(params, opt_state, learner.update_step + 1), metrics

    return Algorithm(init, act, update)
