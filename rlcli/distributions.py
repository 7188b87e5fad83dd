"""Action distributions as pure functions over raw network outputs.

Two policies from the seeds (001, "How should we parameterize our policy?"):

* categorical over discrete actions: the network outputs one logit x_i per action and
  pi(a_i|s) = exp(x_i) / sum_j exp(x_j);
* diagonal Gaussian over continuous actions: a = mu(s) + sigma * z, z ~ N(0, I), with a
  state-independent learned log-std, or the slides' state-dependent sigma_phi(s) (a = mu_theta(s)
  + sigma_phi(s) * z; `network.state_dependent_std`), and
  log pi(a|s) = -1/2 sum_k [log(2 pi sigma_k^2) + (a_k - mu_k)^2 / sigma_k^2].

SAC's tanh-squashed Gaussian (a = tanh(u), u Gaussian, with the change-of-variables
correction) is a set of functions at the end of this file, over the pre-squash sample u.

A distribution is a `Distribution` of functions; its parameters ("dist params") are the raw
network outputs: `logits` (shape [..., A]) for the categorical, `(mean, log_std)` for the
Gaussian, mean [..., D] and log_std [D] (state-independent, broadcast) or [..., D] (one per
state). All functions broadcast over leading batch axes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


class Distribution(NamedTuple):
    sample: Callable[[jax.Array, Any], jax.Array]  # (key, params) -> action
    log_prob: Callable[[Any, jax.Array], jax.Array]  # (params, action) -> [...]
    entropy: Callable[[Any], jax.Array]  # params -> [...]
    mode: Callable[[Any], jax.Array]  # params -> deterministic action
    kl: Callable[[Any, Any], jax.Array]  # (p, q) -> KL(p || q) [...]


# ---- categorical ----------------------------------------------------------------------------


def categorical_sample(key: jax.Array, logits: jax.Array) -> jax.Array:
    return jax.random.categorical(key, logits, axis=-1)


def categorical_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """H(pi) = -sum_a pi(a|s) log pi(a|s) (001, "Policy Entropy Bonus")."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def categorical_mode(logits: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1)


def categorical_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(p_logits, axis=-1)
    log_q = jax.nn.log_softmax(q_logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


CATEGORICAL = Distribution(
    categorical_sample, categorical_log_prob, categorical_entropy, categorical_mode, categorical_kl
)


# ---- diagonal Gaussian ----------------------------------------------------------------------


def gaussian_sample(key: jax.Array, params: tuple[jax.Array, jax.Array]) -> jax.Array:
    """a = mu + sigma * z, z ~ N(0, I) (001, "Diagonal Gaussian")."""
    mean, log_std = params
    log_std = jnp.broadcast_to(log_std, mean.shape)
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_log_prob(params: tuple[jax.Array, jax.Array], action: jax.Array) -> jax.Array:
    """log pi(a|s) = -1/2 sum_k [log(2 pi sigma_k^2) + (a_k - mu_k)^2 / sigma_k^2] (001)."""
    mean, log_std = params
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * (LOG_2PI + 2.0 * log_std + z * z), axis=-1)


def gaussian_entropy(params: tuple[jax.Array, jax.Array]) -> jax.Array:
    mean, log_std = params
    log_std = jnp.broadcast_to(log_std, mean.shape)
    return jnp.sum(log_std + 0.5 * (LOG_2PI + 1.0), axis=-1)


def gaussian_mode(params: tuple[jax.Array, jax.Array]) -> jax.Array:
    return params[0]


def gaussian_kl(p: tuple[jax.Array, jax.Array], q: tuple[jax.Array, jax.Array]) -> jax.Array:
    (mean_p, log_std_p), (mean_q, log_std_q) = p, q
    var_ratio = jnp.exp(2.0 * (log_std_p - log_std_q))
    diff = (mean_p - mean_q) * jnp.exp(-log_std_q)
    return jnp.sum(0.5 * (var_ratio + diff * diff - 1.0) - (log_std_p - log_std_q), axis=-1)


GAUSSIAN = Distribution(gaussian_sample, gaussian_log_prob, gaussian_entropy, gaussian_mode, gaussian_kl)


def for_action_space(discrete: bool) -> Distribution:
    """Categorical for Discrete action spaces, diagonal Gaussian for Box ones."""
    return CATEGORICAL if discrete else GAUSSIAN


# ---- tanh-squashed diagonal Gaussian (SAC) ----------------------------------------------------
# a = tanh(u), u ~ N(mu, sigma^2): bounded actions in (-1, 1)^D. By the change of variables
# (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications", appendix C, eq. 26)
#     log pi(a|s) = log N(u; mu, sigma) - sum_k log(1 - tanh(u_k)^2).
# The functions take the pre-squash sample u rather than a, whose atanh is unstable near +-1.


def tanh_log_det_jacobian(u: jax.Array) -> jax.Array:
    """sum_k log(1 - tanh(u_k)^2) in the stable form sum_k 2 (log 2 - u_k - softplus(-2 u_k))
    (finite for every u, where the direct form gives log(0) = -inf once tanh rounds to +-1)."""
    return jnp.sum(2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)


def squashed_gaussian_log_prob(params: tuple[jax.Array, jax.Array], u: jax.Array) -> jax.Array:
    """log pi(tanh(u)|s) for the pre-squash sample u (eq. 26 of Haarnoja et al. 2018)."""
    return gaussian_log_prob(params, u) - tanh_log_det_jacobian(u)


def squashed_gaussian_sample(key: jax.Array,
                             params: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(a, log pi(a|s), u): a reparameterised sample a = tanh(mu + sigma * z), z ~ N(0, I), so
    gradients flow to mu and sigma through a and through the log-probability."""
    u = gaussian_sample(key, params)
    return jnp.tanh(u), squashed_gaussian_log_prob(params, u), u


def squashed_gaussian_mode(params: tuple[jax.Array, jax.Array]) -> jax.Array:
    """The deterministic action tanh(mu) (SAC's evaluation policy)."""
    return jnp.tanh(params[0])
