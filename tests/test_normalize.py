"""Observation normalisation and reward scaling against a NumPy transcription of
Stable-Baselines3's VecNormalize; the statistics travel in checkpoints."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compose
from rlcli import normalize, train as training
from rlcli.algos import Batch


class NumpyRunningMeanStd:
    """SB3's RunningMeanStd, in float64."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        batch_mean, batch_var, n = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total


def test_running_statistics_match_the_whole_data():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, (n, 3)) for n in (5, 17, 40)]
    stats = normalize.init((3,), 1).obs
    for chunk in chunks:
        stats = normalize.update_stats(stats, jnp.asarray(chunk, jnp.float32))
    data = np.concatenate(chunks)
    # the prior (mean 0, var 1, count 1e-4) weighs 1e-4 / 62 of the result
    np.testing.assert_allclose(stats.mean, data.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, data.var(axis=0), rtol=1e-4)


def _batch(rng, T=6, N=3):
    obs = rng.normal(1.0, 3.0, (T, N, 2)).astype(np.float32)
    done = rng.random((T, N)) < 0.2
    return Batch(obs, np.zeros((T, N), np.int32), rng.normal(0.0, 5.0, (T, N)).astype(np.float32),
                 done, np.zeros((T, N), bool), np.zeros((T, N), np.float32), np.zeros((T, N), np.float32),
                 obs + 1.0)


def test_prepare_matches_vecnormalize_reference():
    cfg = compose(["normalize.obs=true", "normalize.reward=true", "normalize.clip_reward=3.0", "algo.gamma=0.9"])
    norm = normalize.make(cfg)
    rng = np.random.default_rng(1)
    state = normalize.init((2,), 3)
    obs_rms, ret_rms, ret = NumpyRunningMeanStd((2,)), NumpyRunningMeanStd(), np.zeros(3)
    for _ in range(3):  # three rollouts: statistics carry over
        batch = _batch(rng)
        state, out = norm.prepare(state, batch)
        # observations: normalised with the statistics from before the rollout, then folded in
        expected_obs = np.clip((batch.obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10)
        np.testing.assert_allclose(out.obs, expected_obs, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.next_obs, np.clip((batch.next_obs - obs_rms.mean) / np.sqrt(
            obs_rms.var + 1e-8), -10, 10), rtol=1e-4, atol=1e-5)
        obs_rms.update(batch.obs.reshape(-1, 2).astype(np.float64))
        # rewards: per step, discounted return -> statistics -> r / std, clipped; reset at ends
        for t in range(batch.reward.shape[0]):
            ret = ret * 0.9 + batch.reward[t]
            ret_rms.update(ret)
            expected = np.clip(batch.reward[t] / np.sqrt(ret_rms.var + 1e-8), -3, 3)
            np.testing.assert_allclose(out.reward[t], expected, rtol=1e-4, atol=1e-6)
            ret = ret * (1 - batch.terminated[t])
        np.testing.assert_allclose(state.discounted, ret, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.obs.mean, obs_rms.mean, rtol=1e-4)


def test_switched_off_is_the_identity():
    norm = normalize.make(compose([]))
    batch = _batch(np.random.default_rng(2))
    state = normalize.init((2,), 3)
    new_state, out = norm.prepare(state, batch)
    assert out is batch and new_state is state
    assert norm.obs(state, batch.obs) is batch.obs


@pytest.mark.slow
def test_statistics_are_checkpointed_and_resume_is_exact(tmp_path):
    """A run with both normalisations resumed from its first checkpoint gives the metrics of
    an uninterrupted run, bit for bit (the statistics come back from the checkpoint)."""
    common = ["logger=quiet", "normalize.obs=true", "normalize.reward=true", "log_interval=1000",
              "checkpoint_interval=2000", "eval_episodes=2"]
    for run in ("whole", "part"):
        (tmp_path / run / ".hydra").mkdir(parents=True)
    training.train(compose([*common, "total_steps=4000"]), tmp_path / "whole")
    training.train(compose([*common, "total_steps=2000"]), tmp_path / "part")
    training.train(compose([*common, "total_steps=4000"]), tmp_path / "part", resume=True)

    def numbers(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        # evaluations differ by design: the short run's final one at 2000 steps is extra, so
        # the resumed run's next one uses the next evaluation seeds
        return [{k: v for k, v in r.items() if k not in ("wall_time", "perf/steps_per_s") and not k.startswith("eval/")} for r in rows]

    assert numbers("whole") == numbers("part")
    assert len(numbers("whole")) == 4
