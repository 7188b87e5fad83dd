"""Losses shared by the algorithms. Each returns a scalar to minimise; the algorithms gather
their metrics. Batches are flattened: every array has the same leading shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mean(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The mean of x, or with a mask (1 = the sample counts) the mean over the counted samples
    (0 when none counts)."""
    if mask is None:
        return jnp.mean(x)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def policy_gradient_loss(log_prob: jax.Array, advantages: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Surrogate whose gradient is the policy gradient estimate
    (1/N) sum_i sum_t grad log pi(a_t|s_t) Phi_t (000 eq. 4.1.2, 001 "Many forms of policy
    gradients"); Phi_t = advantages, held constant. `mask`: see `mean`."""
    return -mean(log_prob * jax.lax.stop_gradient(advantages), mask)


def value_loss(values: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Critic regression L(phi) = 1/2 mean (V_phi(s_i) - y_i)^2 (000 eq. 4.1.5)."""
    return 0.5 * mean(jnp.square(values - jax.lax.stop_gradient(targets)), mask)


def entropy_bonus(entropy: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean policy entropy H(pi) (001 "Policy Entropy Bonus"); subtracted from the loss with a
    coefficient to discourage premature convergence to a deterministic policy."""
    return mean(entropy, mask)


def normalize(x: jax.Array, eps: float = 1e-8, mask: jax.Array | None = None) -> jax.Array:
    """Standardise x (over the counted samples, with a mask)."""
    if mask is None:
        return (x - jnp.mean(x)) / (jnp.std(x) + eps)
    centred = x - mean(x, mask)
    return centred / (jnp.sqrt(mean(jnp.square(centred), mask)) + eps)


def explained_variance(values: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - Var[y - V] / Var[y]: 1 is a perfect critic, 0 no better than a constant."""
    return 1.0 - jnp.var(targets - values) / (jnp.var(targets) + 1e-8)


def clipped_surrogate_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                           clip: float, weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """PPO's clipped surrogate on the importance-sampled surrogate objective (000 eq. 3.3.2):

        L = -mean w_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t),  rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)

    (Schulman et al. 2017, eq. 7), w_t = 1 without `weights` (PPO's usual form), or given per
    sample, e.g. the gamma^(t - t0) of 3.3.2 (`rlcli.estimators.discount_weights`); held
    constant. Returns (loss, fraction of samples where the clip is active)."""
    ratio = jnp.exp(log_prob - old_log_prob)
    advantages = jax.lax.stop_gradient(advantages)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages
    clip_fraction = jnp.mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32))
    objective = jnp.minimum(unclipped, clipped)
    if weights is not None:
        objective = jax.lax.stop_gradient(weights) * objective
    return -jnp.mean(objective), clip_fraction


def clipped_value_loss(values: jax.Array, old_values: jax.Array, targets: jax.Array,
                       clip: float) -> jax.Array:
    """Value loss with the update of V clipped to +-clip around the rollout's values, as in
    PPO's reference implementation: 1/2 mean max((V - y)^2, (V_old + clip(V - V_old) - y)^2)."""
    targets = jax.lax.stop_gradient(targets)
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    return 0.5 * jnp.mean(jnp.maximum(jnp.square(values - targets), jnp.square(clipped - targets)))


def approx_kl(log_prob: jax.Array, old_log_prob: jax.Array) -> jax.Array:
    """Estimate of KL(pi_old || pi) from samples of pi_old: mean((rho - 1) - log rho), unbiased
    and never negative (Schulman, "Approximating KL divergence", 2020)."""
    log_ratio = log_prob - old_log_prob
    return jnp.mean(jnp.expm1(log_ratio) - log_ratio)
