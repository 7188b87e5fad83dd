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


def _kept(buffer: ReplayBuffer, transitions):
    """(transitions, n, position): the rows an add keeps and where the first goes. With n >
    capacity only the last `capacity` rows are kept, as if they had been added one at a time."""
    cap = capacity(buffer)
    n = jax.tree.leaves(transitions)[0].shape[0]
    if n > cap:  # static: the first n - cap rows would be overwritten within this call
        return jax.tree.map(lambda x: x[n - cap:], transitions), cap, (buffer.position + n - cap) % cap
    return transitions, n, buffer.position


def add(buffer: ReplayBuffer, transitions, after=None) -> ReplayBuffer:
    """Write the n rows of `transitions` (leaves [n, ...]) at position, position + 1, ... modulo
    the capacity (a scatter of n rows).

    `after` (any pytree of arrays computed from reads of `buffer`, e.g. the parameters trained
    on minibatches of `sample_after_add`) orders the write after those reads: inside a compiled
    loop XLA can then write in place. Without the order it copies the whole buffer at every
    add, and a 1M-row buffer costs far more than a small one. The order is a data dependence
    that never changes the rows written."""
    cap = capacity(buffer)
    transitions, n, position = _kept(buffer, transitions)
    if after is not None:
        first = jax.tree.leaves(after)[0]
        never = (jnp.ravel(first)[0] > jnp.inf).astype(jnp.int32)  # 0, even for NaN; XLA cannot fold it
        position = jnp.minimum(position, position + never)
    rows = (position + jnp.arange(n, dtype=jnp.int32)) % cap
    data = jax.tree.map(lambda d, x: d.at[rows].set(jnp.asarray(x, d.dtype), unique_indices=True),
                        buffer.data, transitions)
    return ReplayBuffer(data, (position + n) % cap, jnp.minimum(buffer.size + n, cap))


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int):
    """`batch_size` rows drawn uniformly with replacement among the filled ones (Alg. 20 step 3);
    on an empty buffer, copies of the (all-zero) row 0."""
    rows = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[rows], buffer.data)


def sample_after_add(buffer: ReplayBuffer, transitions, key: jax.Array, batch_size: int):
    """The rows `sample(add(buffer, transitions), key, batch_size)` draws, bit for bit, read
    from `buffer` and `transitions` before the add (see `add`'s `after`)."""
    cap = capacity(buffer)
    transitions, n, position = _kept(buffer, transitions)
    size = jnp.minimum(buffer.size + n, cap)
    rows = jax.random.randint(key, (batch_size,), 0, jnp.maximum(size, 1))
    offset = (rows - position) % cap  # the rows the add writes have offsets 0 .. n - 1
    fresh, index = offset < n, jnp.minimum(offset, n - 1)

    def pick(d, x):
        new = jnp.asarray(x, d.dtype)[index]
        return jnp.where(fresh.reshape((-1,) + (1,) * (new.ndim - 1)), new, d[rows])

    return jax.tree.map(pick, buffer.data, transitions)


def from_rollout(batch) -> Transition:
    """The rows of a time-major rollout (`rlcli.algos.Batch`, leaves [T, N, ...]), flattened
    to [T * N, ...] in time-major order."""
    lead = batch.reward.shape
    flat = lambda x: jnp.reshape(x, (-1,) + jnp.shape(x)[len(lead):])  # noqa: E731
    return Transition(flat(batch.obs), flat(batch.action), flat(batch.reward), flat(batch.terminated),
                      flat(batch.next_obs))
