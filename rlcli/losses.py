"""Losses shared by the algorithms. Each returns a scalar to minimise; the algorithms gather
their metrics. Batches are flattened: every array has the same leading shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def policy_gradient_loss(log_prob: jax.Array, advantages: jax.Array) -> jax.Array:
    """Surrogate whose gradient is the policy gradient estimate
    (1/N) sum_i sum_t grad log pi(a_t|s_t) Phi_t (000 eq. 4.1.2, 001 "Many forms of policy
    gradients"); Phi_t = advantages, held constant."""
    return -jnp.mean(log_prob * jax.lax.stop_gradient(advantages))


def value_loss(values: jax.Array, targets: jax.Array) -> jax.Array:
    """Critic regression L(phi) = 1/2 mean (V_phi(s_i) - y_i)^2 (000 eq. 4.1.5)."""
    return 0.5 * jnp.mean(jnp.square(values - jax.lax.stop_gradient(targets)))


def entropy_bonus(entropy: jax.Array) -> jax.Array:
    """Mean policy entropy H(pi) (001 "Policy Entropy Bonus"); subtracted from the loss with a
    coefficient to discourage premature convergence to a deterministic policy."""
    return jnp.mean(entropy)


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    return (x - jnp.mean(x)) / (jnp.std(x) + eps)


def explained_variance(values: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - Var[y - V] / Var[y]: 1 is a perfect critic, 0 no better than a constant."""
    return 1.0 - jnp.var(targets - values) / (jnp.var(targets) + 1e-8)
