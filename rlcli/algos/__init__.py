"""Algorithms: each `algos/<name>.py` has `make(spec, cfg, num_updates) -> Algorithm`.

An `Algorithm` is a NamedTuple of pure functions:

* ``init(key) -> LearnerState``
* ``act(learner, obs, key, deterministic=False) -> (action, ActInfo)`` over a batch of obs;
* ``update(learner, batch, key) -> (learner, metrics)``, jit-compiled by the runner and
  vmappable over a leading seed axis.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

import jax
import optax


class Batch(NamedTuple):
    """Time-major rollout [T, N, ...] (see `rlcli.envs.Step` for the flag semantics)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    log_prob: jax.Array
    value: jax.Array
    next_obs: jax.Array


class ActInfo(NamedTuple):
    log_prob: jax.Array
    value: jax.Array


class LearnerState(NamedTuple):
    params: Any
    opt_state: Any
    update_step: jax.Array  # number of updates applied


class Algorithm(NamedTuple):
    init: Callable[[jax.Array], LearnerState]
    act: Callable[..., tuple[jax.Array, ActInfo]]
    update: Callable[[LearnerState, Batch, jax.Array], tuple[LearnerState, dict]]


NAMES = ("a2c",)


def make(name: str, spec, cfg, num_updates: int) -> Algorithm:
    module = importlib.import_module(f"rlcli.algos.{name}")
    return module.make(spec, cfg, num_updates)


def make_optimizer(algo_cfg, num_updates: int) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then Adam, RMSprop or SGD; the learning rate is
    constant or annealed linearly to 0 over the run (`algo.anneal_lr`)."""
    lr = float(algo_cfg.learning_rate)
    schedule = optax.linear_schedule(lr, 0.0, num_updates) if algo_cfg.anneal_lr else lr
    name = algo_cfg.optimizer
    if name == "adam":
        opt = optax.adam(schedule, eps=float(algo_cfg.eps))
    elif name == "rmsprop":
        opt = optax.rmsprop(schedule, decay=float(algo_cfg.rmsprop_decay), eps=float(algo_cfg.eps))
    else:
        opt = optax.sgd(schedule)
    return optax.chain(optax.clip_by_global_norm(float(algo_cfg.max_grad_norm)), opt)
