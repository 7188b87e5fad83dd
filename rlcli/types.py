"""The types shared across rlcli's layers: what a rollout, an environment, an algorithm and a
training loop hand each other."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np


class EnvSpec(NamedTuple):
    id: str
    backend: str  # "jax" | "gymnasium"
    obs_shape: tuple[int, ...]
    discrete: bool
    num_actions: int  # Discrete: number of actions; Box: action dimension
    action_low: tuple[float, ...] | None  # Box bounds (None for Discrete)
    action_high: tuple[float, ...] | None
    max_episode_steps: int | None
    # jax backend: the components of the env's observation the agent sees (env.mask_velocity);
    # None: all of them
    observed: tuple[int, ...] | None = None


class Step(NamedTuple):
    obs: Any
    reward: Any
    terminated: Any
    truncated: Any
    next_obs: Any


class Batch(NamedTuple):
    """Time-major rollout [T, N, ...] (see `Step` and rlcli.envs for the flag semantics)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    log_prob: jax.Array
    value: jax.Array
    next_obs: jax.Array
    # [T, N] bool, recurrent rollouts only: obs is the first of an episode (the policy's
    # hidden state was reset before acting on it); None for feed-forward policies
    episode_start: Any = None
    # [T, N, H], recurrent rollouts only: the hidden state handed to step t (before its reset
    # where episode_start[t]); an update replays a sequence from its first step's state
    policy_state: Any = None


class ActInfo(NamedTuple):
    log_prob: jax.Array
    value: jax.Array


class LearnerState(NamedTuple):
    params: Any
    opt_state: Any
    update_step: jax.Array  # number of updates applied
    # traced hyperparameters {name: float32 scalar}: read by the update from the state, not
    # baked into the program, so one program carries many values along a vmapped member axis
    hparams: Any = None


class Algorithm(NamedTuple):
    init: Callable[[jax.Array], LearnerState]
    act: Callable[..., tuple[jax.Array, ActInfo]]
    update: Callable[[LearnerState, Batch, jax.Array], tuple[LearnerState, dict]]
    # a recurrent policy's `initial_state(num_envs) -> [N, H]` zeros (None: feed-forward); its
    # act is then act(learner, obs, key, deterministic, state=h, episode_start=s) -> (a, info, h')
    initial_state: Callable[[int], jax.Array] | None = None


class EpisodeStats(NamedTuple):
    """Running return/length per env and totals over the episodes finished since the last
    record (only finished episodes count)."""

    running_return: Any  # [N]
    running_length: Any  # [N]
    count: Any  # []
    return_sum: Any  # []
    length_sum: Any  # []


class ChunkOut(NamedTuple):
    metrics: dict  # name -> [S], mean over the chunk's updates
    episodes: EpisodeStats  # totals -> [S]
    first_nonfinite: dict  # name -> [S]: index in the chunk of the first update where it is not finite, or -1
    params_finite: Any  # [S] bool: every parameter finite after the chunk


class Loop(NamedTuple):
    """What `train` needs from a training loop (one per loop kind: rlcli.loops); `state` has a
    leading seed axis."""

    init: Callable[..., Any]  # init(prepare=False): with prepare (training) it may start compiling the programs
    compile: Callable[[Any], float]  # compile chunk/eval programs; returns seconds
    chunk: Callable[[Any, int], tuple[Any, ChunkOut]]  # (state, num_updates)
    evaluate: Callable[[Any, int], tuple[np.ndarray, np.ndarray]]  # (state, eval index) -> [S, E] returns, lengths
    checkpoint_state: Callable[[Any], Any]  # the pytree that is saved
    restore: Callable[[Any, Any, dict], Any]  # (fresh state, restored pytree, meta) -> state
    close: Callable[[], None]
    programs: dict | None = None  # jax loop: compiled programs by name, chunks by number of updates (to inspect)


