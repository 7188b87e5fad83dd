"""Advantage estimators: pure functions over one trajectory segment of length T.

Every estimator has the signature

    fn(rewards, values, next_values, terminated, truncated, *, gamma, ...) -> (advantages, targets)

over time-major arrays of shape [T] (use `jax.vmap` for [T, N] batches):

* rewards[t]      r_t, the reward of the transition s_t -> s'_t;
* values[t]       V(s_t);
* next_values[t]  V(s'_t), the value of the *true* next observation: at a time-limit
                  truncation this is the final observation of the episode, not the reset one;
* terminated[t]   s'_t is terminal: its value is 0, nothing is bootstrapped;
* truncated[t]    the episode was cut by a time limit after this step: the target bootstraps
                  from V(s'_t), but no return flows across into the next episode.

`targets` are the critic's regression targets y_t (000 eq. 4.1.5) and
`advantages = targets - values` for the n-step family.

Semantics at boundaries, shared by all estimators: a sum over future rewards stops at the
end of the episode (terminated or truncated) and at the end of the segment; where it stops
it adds gamma^k * (1 - terminated) * V(s'), the bootstrap (000 eq. 4.1.6).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

Estimator = Callable[..., tuple[jax.Array, jax.Array]]


def _not(x: jax.Array) -> jax.Array:
    return 1.0 - x.astype(jnp.float32)


def td(rewards, values, next_values, terminated, truncated, *, gamma):
    """One-step TD error as the advantage (000 eq. 4.1.4 with the discount of 4.1.6;
    001 "Advantage Actor Critic (A2C)"):

        delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t),  y_t = delta_t + V(s_t).
    """
    del truncated  # a truncated step bootstraps from V(s'_t) exactly like a normal step
    targets = jnp.asarray(rewards, jnp.float32) + gamma * _not(terminated) * next_values
    return targets - values, targets


def nstep(rewards, values, next_values, terminated, truncated, *, gamma, n=None):
    """n-step advantage (000 eq. 4.2.8):

        A_t = sum_{k=0}^{m-1} gamma^k r_{t+k} + gamma^m (1 - terminated) V(s'_{t+m-1}) - V(s_t),

    with m = n, or fewer where the episode or the segment ends first. (As printed, 4.2.8 sums
    t..t+n, n+1 rewards, beside gamma^n; this uses the usual reading, n rewards then gamma^n V,
    which is also rlax's `n_step_bootstrapped_returns`.) `n=None` sums to the
    end of the segment, as in A3C (001, "N-Step Returns for A3C updates").
    """
    if n is not None and int(n) < 1:
        raise ValueError(f"nstep: n={n} is not allowed (allowed: null or an integer >= 1)")
    rewards = jnp.asarray(rewards, jnp.float32)
    horizon = rewards.shape[0]
    n = horizon if n is None else min(int(n), horizon)
    done = jnp.logical_or(terminated, truncated)
    bootstrap = _not(terminated) * next_values
    steps = jnp.arange(horizon)
    returns = jnp.zeros_like(rewards)
    alive = jnp.ones_like(rewards)  # 1 while the window of step t is still open at offset k
    discount = 1.0
    for k in range(n):
        idx = jnp.minimum(steps + k, horizon - 1)
        returns = returns + alive * discount * rewards[idx]
        stops = jnp.logical_or(done[idx], steps + k >= horizon - 1)
        if k == n - 1:
            stops = jnp.ones_like(stops)
        stop_now = alive * stops.astype(jnp.float32)
        returns = returns + stop_now * discount * gamma * bootstrap[idx]
        alive = alive - stop_now
        discount = discount * gamma
    return returns - values, returns


def gae(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """Generalized advantage estimation (000 eq. 4.2.10):

        A_t = sum_{t'>=t} (gamma lambda)^{t'-t} delta_{t'}, cut at the end of the episode,
        delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t),  y_t = A_t + V(s_t).

    lambda = 0 gives the TD error, lambda = 1 the Monte-Carlo return minus V (000 eq. 4.2.7).
    """
    deltas, _ = td(rewards, values, next_values, terminated, truncated, gamma=gamma)
    cont = _not(jnp.logical_or(terminated, truncated))

    def backward(carry, inputs):
        delta, c = inputs
        advantage = delta + gamma * lam * c * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros((), deltas.dtype), (deltas, cont), reverse=True
    )
    return advantages, advantages + values


REGISTRY: dict[str, Estimator] = {"td": td, "nstep": nstep, "gae": gae}


def make(name: str, gamma: float, **hyper) -> Estimator:
    """Bind gamma and the estimator's own hyperparameters; the result maps one trajectory
    (rewards, values, next_values, terminated, truncated) to (advantages, targets)."""
    return partial(REGISTRY[name], gamma=gamma, **hyper)


def batched(estimator: Estimator) -> Estimator:
    """The estimator over time-major [T, N] arrays (vmap over the env axis)."""
    return jax.vmap(estimator, in_axes=1, out_axes=1)


def make_from_config(cfg, gamma: float) -> Estimator:
    """The estimator chosen by the `estimator=` config group."""
    if cfg.name == "gae":
        return make("gae", gamma, lam=float(cfg["lambda"]))
    if cfg.name == "nstep":
        return make("nstep", gamma, n=None if cfg.n is None else int(cfg.n))
    return make(cfg.name, gamma)
