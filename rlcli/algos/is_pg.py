"""Off-policy policy gradient with importance sampling: each batch reused for K steps (000 §3.2, eqs. 3.2.7-3.2.9).

The batch is collected by the behaviour policy pi_theta (its log-probabilities are the batch's
`log_prob`) and then reused for `algo.num_epochs` = K full-batch gradient steps; step k
follows the importance-sampled gradient of the current policy pi_theta' (000 eq. 3.2.5),

    L = -mean_used(w_t log pi_theta'(a_t|s_t) Phi_t) + vf_coef * 1/2 mean_used (V(s_t) - G_t)^2
        - ent_coef * mean_used H,

w_t held constant in the gradient, so that grad L is 000's estimator term by term. With
rho_t = pi_theta'(a_t|s_t) / pi_theta(a_t|s_t) and W_t = prod_{t'=t0}^{t} rho_t' (the ratios of
the decisions of t's episode up to t, from its first step t0 to its last t1), `algo.ratio`:

* trajectory:   w_t = W_{t1}, the whole-trajectory ratio p_theta'(tau) / p_theta(tau) (000 eq.
  3.2.3/3.2.7), the same for every step of the episode;
* per_decision: each reward carries the ratios of the decisions before it (causality, 000 eq.
  3.2.8; per-decision importance sampling): w_t = 1 and Phi_t is the estimator's Phi over the
  weighted rewards r_t' W_t' (and, with the value baseline, W-weighted values: Phi_t =
  sum_{t'>=t} gamma^{t'-t} r_t' W_t' + gamma^k W_{t1} V(s') at a cut - W_t V(s_t)), recomputed
  at every step; `estimator=reward_to_go` only (a total return has no causality);
* first_order:  w_t = W_t, with Phi_t unweighted: 3.2.8 with the ratios of the future rewards
  dropped, 000 eq. 3.2.9;
* step:         w_t = rho_t alone: the state-distribution mismatch of the earlier decisions
  ignored as well, the ratio of the policy-iteration surrogate (000 eq. 3.3.2).

Products are sums of log-ratios within each episode of the [T, N] time-major batch (episodes
start at the segment's first step or after a done flag). `algo.ratio_clip` = c truncates the
weights at c, w_t <- min(w_t, c) (truncated importance sampling); null leaves them as they
are. Phi_t (reward-to-go or total return, discounting option, baseline none | mean | value)
and the episode batching are REINFORCE's (`rlcli.algos.reinforce`): Phi_t and the critic's
targets are computed once per batch with the behaviour parameters (with per_decision, Phi is
recomputed at each step from the reweighted rewards and the behaviour's values); the critic is
refitted to the targets at each of the K steps. With K = 1 (and on the first step of any K) the policy is the
behaviour policy, every w_t = 1 and the update is REINFORCE's.

Metrics: REINFORCE's (losses and entropy averaged over the K steps) and, for the weights
applied at the last of the K steps (the policy furthest from the behaviour one), over the used
steps: `train/ess` = (sum w)^2 / (n sum w^2), the normalised effective sample size (1: all
equal), `train/ratio_mean` and `train/ratio_max`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlcli import estimators, losses
from rlcli.algos import (ACTOR_CRITIC_KEYS, BASE_KEYS, MONTE_CARLO_ESTIMATORS, OPTIMIZER_KEYS, Algorithm, Batch,
                         actor_critic_policy, make_optimizer, reinforce)
from rlcli.algos.reinforce import ReinforceState, episode_mask, subtract_baseline
from rlcli.errors import ConfigError
from rlcli.rules import Key, int_at_least, one_of, optional_positive, with_defaults

RATIOS = ("trajectory", "per_decision", "first_order", "step")
KEYS = {
    **{name: reinforce.KEYS[name] for name in BASE_KEYS},  # REINFORCE's rollout length and gamma
    "algo.num_epochs": Key(4, int_at_least(1), "K: gradient steps on each batch (1: REINFORCE)"),
    "algo.ratio": Key("first_order", one_of(*RATIOS),
                      "trajectory: prod of all the episode's ratios on every score (000 eq. 3.2.7) | per_decision: "
                      "each reward of the reward-to-go times the ratios up to it (3.2.8) | first_order: the score "
                      "of t times the ratios up to t (3.2.9) | step: the ratio of step t alone (000 eq. 3.3.2)"),
    "algo.ratio_clip": Key(None, optional_positive(), "null, or c > 0: truncate every weight at c, w <- min(w, c) "
                                                      "(truncated IS)"),
    **with_defaults(OPTIMIZER_KEYS, learning_rate=1.0e-3,
                    anneal_lr=(False, "decay the learning rate linearly to 0 over the run (over num_epochs x "
                                      "updates steps)")),
    **with_defaults(ACTOR_CRITIC_KEYS,
                    vf_coef=(0.5, "weight of the critic's loss (used with estimator.baseline=value)"),
                    normalize_advantages=(False, "standardise Phi over the used steps of the batch")),
}
ESTIMATORS = MONTE_CARLO_ESTIMATORS
ESTIMATOR = "reward_to_go"
SETS = {"estimator.baseline": "value"}
ACTION_SPACES = ("discrete", "continuous")
FRESH_EPISODES = True  # REINFORCE's episode batching (rlcli.algos.reinforce)


def check(cfg, spec) -> None:
    """REINFORCE's (`algo.num_steps` at least the env's time limit); per_decision weights the
    rewards of a reward-to-go."""
    try:
        reinforce.check(cfg, spec)
    except ConfigError as err:
        raise ConfigError(str(err).replace("algo=reinforce", f"algo={cfg.algo.name}")) from None
    if cfg.algo.ratio == "per_decision" and cfg.estimator.name != "reward_to_go":
        raise ConfigError(
            f"algo.ratio=per_decision does not fit estimator={cfg.estimator.name} (allowed with "
            "algo.ratio=per_decision: estimator=reward_to_go; 000 eq. 3.2.8 weights each future "
            "reward, which needs causality)")


def _within_episode_cumsum(x: jax.Array, starts: jax.Array) -> jax.Array:
    """[T, N] -> sum of x from the first step of t's episode to t (restarts where starts)."""

    def body(carry, inputs):
        value, start = inputs
        carry = jnp.where(start, 0.0, carry) + value
        return carry, carry

    return jax.lax.scan(body, jnp.zeros(x.shape[1:], x.dtype), (x, starts))[1]


def _episode_last(x: jax.Array, ends: jax.Array) -> jax.Array:
    """[T, N] -> x at the last step of t's episode (where `ends`, or the segment's last step)."""

    def body(carry, inputs):
        value, end = inputs
        carry = jnp.where(end, value, carry)
        return carry, carry

    return jax.lax.scan(body, x[-1], (x, ends), reverse=True)[1]


def importance_weights(log_ratio: jax.Array, terminated: jax.Array, truncated: jax.Array, mask: jax.Array,
                       ratio: str, ratio_clip: float | None = None) -> jax.Array:
    """Importance weights [T, N]: W_{t1} ('trajectory', 000 eq. 3.2.7), W_t ('per_decision',
    which puts them on the rewards, 3.2.8, and 'first_order', on the score, 3.2.9) or rho_t
    ('step', 3.3.2); see the module docstring.

    log_ratio [T, N]: log pi_theta'(a_t|s_t) - log pi_theta(a_t|s_t); terminated/truncated
    [T, N]: the step ends its episode (the next one starts at t+1); mask [T, N]: 1 = the step is
    used. Unused steps get log-ratio 0 (their weights are not used and cannot overflow); the
    products are exponentiated sums of log-ratios, truncated at `ratio_clip` (in log space)."""
    if ratio not in RATIOS:
        raise ValueError(f"ratio={ratio!r} is not allowed (allowed: one of {', '.join(RATIOS)})")
    log_ratio = jnp.where(mask > 0, log_ratio, 0.0)
    done = jnp.logical_or(terminated, truncated)
    if ratio == "step":
        log_w = log_ratio
    else:
        starts = jnp.concatenate([jnp.ones_like(done[:1]), done[:-1]], axis=0)
        log_w = _within_episode_cumsum(log_ratio, starts)
        if ratio == "trajectory":
            log_w = _episode_last(log_w, done)
    if ratio_clip is not None:
        log_w = jnp.minimum(log_w, jnp.log(float(ratio_clip)))
    return jnp.exp(log_w)


def effective_sample_size(weights: jax.Array, mask: jax.Array) -> jax.Array:
    """Normalised effective sample size (sum w)^2 / (n sum w^2) over the n used steps, in
    (0, 1]; 1 when all weights are equal (0 when no step is used)."""
    return jnp.square(losses.mean(weights, mask)) / jnp.maximum(losses.mean(jnp.square(weights), mask), 1e-30)


def make(spec, cfg, num_updates: int) -> Algorithm:
    algo = cfg.algo
    epochs = algo.num_epochs
    ratio = algo.ratio
    ratio_clip = algo.ratio_clip
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    baseline = str(cfg.estimator.get("baseline", "none"))
    tx = make_optimizer(algo, num_updates * epochs)  # one optimizer step per epoch
    network, dist, base_init, act, *_ = actor_critic_policy(spec, cfg, tx)
    # the critic is fitted when Phi uses it: a value baseline or a bootstrap at truncation
    vf_coef = algo.vf_coef if baseline == "value" or cfg.estimator.bootstrap_truncation else 0.0
    ent_coef = algo.ent_coef
    normalize_advantages = algo.normalize_advantages
    last_start = cfg.algo.num_steps - spec.max_episode_steps

    def init(key):
        return ReinforceState(*base_init(key)[:3])

    def phi(reward, values, next_values, batch: Batch, mask):
        """REINFORCE's Phi_t (and the critic's targets) over [T, N]: estimator, baseline,
        standardisation, zero on unused steps."""
        advantages, targets = estimator(reward, values, next_values, batch.terminated, batch.truncated)
        advantages = subtract_baseline(advantages, batch, mask, cfg.estimator.name, baseline)
        if normalize_advantages:
            advantages = losses.normalize(advantages, mask=mask)
        return advantages * mask, targets

    def loss_fn(params, batch: Batch, advantages, targets, mask, behaviour_values):
        dist_params, values = network.apply(params, batch.obs)
        log_prob = dist.log_prob(dist_params, batch.action)
        weights = jax.lax.stop_gradient(importance_weights(
            log_prob - batch.log_prob, batch.terminated, batch.truncated, mask, ratio, ratio_clip))
        if ratio == "per_decision":  # 3.2.8: the weights go on the rewards (and values) of Phi
            value, next_value = behaviour_values
            advantages, _ = phi(batch.reward * weights, value * weights, next_value * weights, batch, mask)
            score_weights = jnp.ones_like(weights)
        else:
            score_weights = weights
        # the sum over the used steps / (T x N), as REINFORCE's (rlcli.algos.reinforce)
        policy_loss = losses.policy_gradient_loss(log_prob, score_weights * advantages * mask)
        critic_loss = losses.value_loss(values, targets, mask)
        entropy = losses.entropy_bonus(dist.entropy(dist_params), mask)
        loss = policy_loss + vf_coef * critic_loss - ent_coef * entropy
        return loss, {
            "loss/policy": policy_loss,
            "loss/value": critic_loss,
            "policy/entropy": entropy,
            "loss/total": loss,
            "train/value_mean": losses.mean(values, mask),
            "train/ess": effective_sample_size(weights, mask),
            "train/ratio_mean": losses.mean(weights, mask),
            "train/ratio_max": jnp.max(jnp.where(mask > 0, weights, 0.0)),
        }

    def update(learner: ReinforceState, batch: Batch, key):
        del key  # deterministic given the batch
        mask = episode_mask(batch.terminated, batch.truncated, last_start).astype(jnp.float32)
        # Phi and the critic's targets: once per batch, with the behaviour parameters
        _, values = network.apply(learner.params, batch.obs)
        _, next_values = network.apply(learner.params, batch.next_obs)
        advantages, targets = phi(batch.reward, values, next_values, batch, mask)

        def epoch(carry, _):
            params, opt_state = carry
            grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch, advantages, targets, mask,
                                                             (values, next_values))
            updates, opt_state = tx.update(grads, opt_state, params)
            metrics["train/grad_norm"] = optax.tree.norm(grads)
            return (optax.apply_updates(params, updates), opt_state), metrics

        (params, opt_state), per_epoch = jax.lax.scan(epoch, (learner.params, learner.opt_state), None, epochs)
        last = ("train/ess", "train/ratio_mean", "train/ratio_max")
        metrics = {name: (v[-1] if name in last else jnp.mean(v)) for name, v in per_epoch.items()}
        done = jnp.logical_or(batch.terminated, batch.truncated)
        metrics["train/advantage_mean"] = losses.mean(advantages, mask)
        metrics["train/used_fraction"] = jnp.mean(mask)
        metrics["train/episodes"] = jnp.sum(done * mask)
        return ReinforceState(params, opt_state, learner.update_step + 1), metrics

    return Algorithm(init, act, update)
