"""A replay buffer R of past transitions (000 §4.4.3, Alg. 19/20 steps 2-3) as a pytree.

`ReplayBuffer` is a NamedTuple of arrays, so it lives inside a learner state: `jit`, `scan`,
`vmap` over seeds and the orbax checkpoint handle it like any other leaf. It is a ring of
`capacity` rows: `add` writes a batch of rows after the newest one, wrapping around and
overwriting the oldest; `sample` draws rows uniformly (with replacement) among the filled ones.
Both cost time in proportion to the rows written or drawn, never to the capacity. The same
pure functions serve the jax backend (inside the compiled program) and the gymnasium one (the
runner passes numpy rollouts to the jitted update).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Transition(NamedTuple):
    """(s, a, r, terminated, s'): one row of the buffer. Only `terminated` stops the bootstrap;
    a time-limit truncation still bootstraps from Q(s', .), so it is not stored."""

    obs: Any
    action: Any
    reward: Any
    terminated: Any
    next_obs: Any


class ReplayBuffer(NamedTuple):
    data: Any  # pytree (a Transition) of arrays [capacity, ...]
    position: jax.Array  # int32: the row the next transition is written to
    size: jax.Array  # int32: rows filled, at most capacity


def init(capacity: int, example) -> ReplayBuffer:
    """An empty buffer of `capacity` rows shaped and typed like `example` (one transition,
    without a leading axis)."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return ReplayBuffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def capacity(buffer: ReplayBuffer) -> int:
    return jax.tree.leaves(buffer.data)[0].shape[0]


def add(buffer: ReplayBuffer, transitions) -> ReplayBuffer:
    """Write the n rows of `transitions` (leaves [n, ...]) at position, position + 1, ... modulo
    the capacity (a scatter of n rows). With n > capacity only the last `capacity` rows are kept,
    as if they had been added one at a time."""
    cap = capacity(buffer)
    n = jax.tree.leaves(transitions)[0].shape[0]
    position = buffer.position
    if n > cap:  # static: the first n - cap rows would be overwritten within this call
        transitions = jax.tree.map(lambda x: x[n - cap:], transitions)
        position, n = (position + n - cap) % cap, cap
    rows = (position + jnp.arange(n, dtype=jnp.int32)) % cap
    data = jax.tree.map(lambda d, x: d.at[rows].set(jnp.asarray(x, d.dtype), unique_indices=True),
                        buffer.data, transitions)
    return ReplayBuffer(data, (position + n) % cap, jnp.minimum(buffer.size + n, cap))


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int):
    """`batch_size` rows drawn uniformly with replacement among the filled ones (Alg. 20 step 3);
    on an empty buffer, copies of the (all-zero) row 0."""
    rows = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[rows], buffer.data)


def from_rollout(batch) -> Transition:
    """The rows of a time-major rollout (`rlcli.algos.Batch`, leaves [T, N, ...]), flattened
    to [T * N, ...] in time-major order."""
    lead = batch.reward.shape
    flat = lambda x: jnp.reshape(x, (-1,) + jnp.shape(x)[len(lead):])  # noqa: E731
    return Transition(flat(batch.obs), flat(batch.action), flat(batch.reward), flat(batch.terminated),
                      flat(batch.next_obs))
