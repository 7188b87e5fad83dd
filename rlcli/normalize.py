"""Observation normalisation and reward scaling (`normalize.obs`, `normalize.reward`), as
Stable-Baselines3's VecNormalize does them, for every algorithm and both backends.

The runner owns a `NormState` beside the learner and saves it in the checkpoint:

* observations are standardised with running statistics, (o - mean) / sqrt(var + eps),
  clipped to +-`clip_obs`;
* rewards are divided by the running standard deviation of the discounted return
  R_t = gamma R_{t-1} + r_t (reset at episode ends), clipped to +-`clip_reward`; this keeps
  the scale of the critic's targets near 1 without changing the optimal policy.

The statistics are frozen while a rollout is collected, so `act` and `update` see the same
normalised observations; `prepare` normalises a collected batch with them and then folds the
batch into the statistics (per time step, as VecNormalize). Evaluation uses the frozen
statistics and reports raw returns.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

EPS = 1e-8


class RunningMeanStd(NamedTuple):
    mean: jax.Array
    var: jax.Array
    count: jax.Array


class NormState(NamedTuple):
    obs: RunningMeanStd  # over observation features
    ret: RunningMeanStd  # over discounted returns (scalar)
    discounted: jax.Array  # [N] running discounted return per env


def init(obs_shape: tuple[int, ...], num_envs: int) -> NormState:
    # count starts at eps as in SB3, so the first update is (almost) the batch statistics
    return NormState(
        RunningMeanStd(jnp.zeros(obs_shape, jnp.float32), jnp.ones(obs_shape, jnp.float32), jnp.float32(1e-4)),
        RunningMeanStd(jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32), jnp.float32(1e-4)),
        jnp.zeros((num_envs,), jnp.float32),
    )


def update_stats(stats: RunningMeanStd, x: jax.Array) -> RunningMeanStd:
    """Fold a batch x [B, ...] into the running mean and variance (Chan et al.'s parallel
    algorithm, as SB3's RunningMeanStd)."""
    batch_mean, batch_var, batch_count = jnp.mean(x, axis=0), jnp.var(x, axis=0), x.shape[0]
    delta = batch_mean - stats.mean
    total = stats.count + batch_count
    mean = stats.mean + delta * batch_count / total
    m2 = stats.var * stats.count + batch_var * batch_count + delta**2 * stats.count * batch_count / total
    return RunningMeanStd(mean, m2 / total, total)


class Normalizer(NamedTuple):
    """The configured normalisation as pure functions (identity where switched off)."""

    obs: object  # (NormState, obs) -> normalised obs
    prepare: object  # (NormState, Batch) -> (NormState, Batch with normalised obs, scaled rewards)


def make(cfg) -> Normalizer:
    norm_obs, norm_reward = cfg.normalize.obs, cfg.normalize.reward
    clip_obs, clip_reward = cfg.normalize.clip_obs, cfg.normalize.clip_reward
    gamma = cfg.algo.gamma

    def obs(state: NormState, x):
        if not norm_obs:
            return x
        return jnp.clip((x - state.obs.mean) / jnp.sqrt(state.obs.var + EPS), -clip_obs, clip_obs)

    def prepare(state: NormState, batch):
        if not (norm_obs or norm_reward):
            return state, batch
        if norm_obs:
            raw = batch.obs
            batch = batch._replace(obs=obs(state, raw), next_obs=obs(state, batch.next_obs))
            state = state._replace(obs=update_stats(state.obs, raw.reshape((-1,) + raw.shape[2:])))
        if norm_reward:
            def step(carry, inputs):
                discounted, ret_stats = carry
                reward, done = inputs
                discounted = discounted * gamma + reward
                ret_stats = update_stats(ret_stats, discounted)
                scaled = jnp.clip(reward / jnp.sqrt(ret_stats.var + EPS), -clip_reward, clip_reward)
                return (discounted * (1.0 - done), ret_stats), scaled

            done = (batch.terminated | batch.truncated).astype(jnp.float32)
            (discounted, ret_stats), rewards = jax.lax.scan(
                step, (state.discounted, state.ret), (batch.reward, done))
            state = state._replace(ret=ret_stats, discounted=discounted)
            batch = batch._replace(reward=rewards)
        return state, batch

    return Normalizer(obs, prepare)
