"""is_pg: off-policy policy gradient with importance weights (000 §3.2, eqs. 3.2.7-3.2.9)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compose, train
from rlcli import config
from rlcli.algos import is_pg, reinforce

# both columns start fresh (T = 5; episodes starting at t0 <= 2 are used). Column 0: episode A
# = t0-1 (terminated at t1), episode B = t2-4 (truncated at t4). Column 1: episode C = t0-1
# (terminated), D = t2-3 (terminated), t4 starts an episode the segment cuts (masked)
TERM = jnp.array([[0, 0], [1, 1], [0, 0], [0, 1], [0, 0]], bool)
TRUNC = jnp.array([[0, 0], [0, 0], [0, 0], [0, 0], [1, 0]], bool)
RHO = jnp.array([[2.0, 5.0], [0.5, 5.0], [3.0, 0.5], [2.0, 4.0], [0.25, 7.0]])
MASK = reinforce.episode_mask(TERM, TRUNC, 2)


@pytest.mark.parametrize("ratio,clip,expected", [
    # the ratio of step t alone; masked steps weigh 1
    ("step", None, [[2, 5], [0.5, 5], [3, 0.5], [2, 4], [0.25, 1]]),
    # products from the episode's first step to t: restart at t2 (after A's and C's terminations)
    ("first_order", None, [[2, 5], [1, 25], [3, 0.5], [6, 2], [1.5, 1]]),
    ("per_decision", None, [[2, 5], [1, 25], [3, 0.5], [6, 2], [1.5, 1]]),
    # the whole episode's product on each of its steps: A 2 x 0.5, B 3 x 2 x 0.25, C 5 x 5, D 0.5 x 4
    ("trajectory", None, [[1, 25], [1, 25], [1.5, 2], [1.5, 2], [1.5, 1]]),
    ("step", 2.0, [[2, 2], [0.5, 2], [2, 0.5], [2, 2], [0.25, 1]]),
    ("first_order", 2.0, [[2, 2], [1, 2], [2, 0.5], [2, 2], [1.5, 1]]),  # clip after the product
    ("trajectory", 1.25, [[1, 1.25], [1, 1.25], [1.25, 1.25], [1.25, 1.25], [1.25, 1]]),
])
def test_importance_weights_hand_computed(ratio, clip, expected):
    assert MASK.astype(int).tolist() == [[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]]
    weights = is_pg.importance_weights(jnp.log(RHO), TERM, TRUNC, MASK, ratio, clip)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_per_decision_weights_each_reward_hand_computed():
    """000 eq. 3.2.8: the score of step t is weighted by sum_{t'>=t} gamma^(t'-t) r_t' W_t', W the
    ratios up to t' (not W_t times the reward-to-go, 3.2.9). One episode of 3 steps, gamma 0.5,
    rho = 2, 0.5, 4 -> W = 2, 1, 4, rewards 1, 2, 3 (reward-to-go, no baseline)."""
    from rlcli import estimators

    term = jnp.array([[0], [0], [1]], bool)
    w = is_pg.importance_weights(jnp.log(jnp.array([[2.0], [0.5], [4.0]])), term, jnp.zeros_like(term),
                                 jnp.ones((3, 1)), "per_decision")
    reward = jnp.array([[1.0], [2.0], [3.0]])
    rtg = estimators.batched(estimators.make("reward_to_go", 0.5))
    phi, _ = rtg(reward * w, jnp.zeros((3, 1)), jnp.zeros((3, 1)), term, jnp.zeros_like(term))
    # t2: 3*4 = 12; t1: 2*1 + .5*12 = 8; t0: 1*2 + .5*8 = 6 (3.2.9 would give W_t G_t = 2*2.75, 1*3.5, 4*3)
    np.testing.assert_allclose(phi[:, 0], [6.0, 8.0, 12.0], rtol=1e-6)


@pytest.mark.parametrize("ratio", is_pg.RATIOS)
def test_behaviour_equal_to_target_gives_unit_weights(ratio):
    """log pi - log pi_behaviour = 0: every weight is 1 (and no overflow on a 500-step episode
    with large log-ratios on masked steps)."""
    done = jnp.zeros((500, 3), bool).at[-1].set(True)
    mask = jnp.ones((500, 3)).at[:, 2].set(0.0)
    log_ratio = jnp.zeros((500, 3)).at[:, 2].set(50.0)
    weights = is_pg.importance_weights(log_ratio, done, jnp.zeros_like(done), mask, ratio)
    np.testing.assert_array_equal(weights, np.ones((500, 3)))
    assert float(is_pg.effective_sample_size(weights, mask)) == 1.0


def test_effective_sample_size_hand_computed():
    weights = jnp.array([[1.0, 3.0], [99.0, 2.0]])
    mask = jnp.array([[1.0, 1.0], [0.0, 1.0]])
    # used weights 1, 3, 2: (6)^2 / (3 x 14)
    np.testing.assert_allclose(is_pg.effective_sample_size(weights, mask), 36 / 42, rtol=1e-6)
    assert float(is_pg.effective_sample_size(weights, jnp.zeros_like(mask))) == 0.0


COMMON = ["env=CartPole-v1", "env.backend=jax", "num_envs=2", "total_steps=2000", "network.shared=false",
          "algo.gamma=0.99", "algo.learning_rate=1e-3", "algo.anneal_lr=false", "algo.max_grad_norm=1.0",
          "algo.vf_coef=0.5", "algo.ent_coef=0.01", "algo.normalize_advantages=true"]


@functools.lru_cache(maxsize=None)
def _one_update(overrides):
    """Parameters and metrics after one update on the first batch (seed 0); overrides: a tuple."""
    from rlcli import train as training

    cfg = compose([*COMMON, *overrides])
    parts = training.setup(cfg)
    backend = training.make_loop(parts)
    state, out = backend.chunk(backend.init(), 1)
    return jax.tree.leaves(state.learner.params), {k: float(np.asarray(v)[0]) for k, v in out.metrics.items()}


@pytest.mark.slow
@pytest.mark.parametrize("ratio,clip,estimator", [
    ("trajectory", None, ["estimator=reward_to_go", "estimator.baseline=value"]),
    pytest.param("per_decision", 2.0, ["estimator=reward_to_go", "estimator.baseline=value"], marks=pytest.mark.extended),
    pytest.param("first_order", None, ["estimator=reward_to_go", "estimator.baseline=value"], marks=pytest.mark.extended),
    pytest.param("step", None, ["estimator=total_return", "estimator.baseline=mean"], marks=pytest.mark.extended),
])
def test_one_epoch_is_reinforce(ratio, clip, estimator):
    """With K = 1 the behaviour policy is the target policy: every ratio is 1 and the update is
    REINFORCE's on the same batch (same seed, same rollout); with K = 2 it is not (shown for the
    trajectory ratio; each ratio's weights are checked by hand in test_exact_gradient_batches.py)."""
    expected, _ = _one_update(("algo=reinforce", *estimator))
    is_pg_args = ["algo=is_pg", f"algo.ratio={ratio}", f"algo.ratio_clip={'null' if clip is None else clip}",
                  *estimator]
    params, metrics = _one_update((*is_pg_args, "algo.num_epochs=1"))
    for a, b in zip(params, expected):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    for name in ("train/ess", "train/ratio_mean", "train/ratio_max"):
        assert metrics[name] == pytest.approx(1.0, abs=1e-4), (name, metrics[name])
    if ratio == "trajectory":
        params, metrics = _one_update((*is_pg_args, "algo.num_epochs=2"))
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(params, expected)) > 1e-4
        assert metrics["train/ess"] < 1.0 and metrics["train/ratio_max"] > 1.0


def _error(overrides):
    with pytest.raises(config.ConfigError) as info:
        config.validate(compose(["algo=is_pg", *overrides]))
    return str(info.value)


def test_bad_input():
    assert _error(["algo.ratio=full"]) == (
        "algo.ratio='full' is not allowed (allowed: one of trajectory, per_decision, first_order, step)")
    assert _error(["algo.ratio=per_decision", "estimator=total_return"]).startswith(
        "algo.ratio=per_decision does not fit estimator=total_return (allowed with algo.ratio=per_decision: "
        "estimator=reward_to_go;")
    assert _error(["algo.ratio_clip=0"]) == "algo.ratio_clip=0 is not allowed (allowed: null or a number > 0)"
    assert _error(["algo.ratio_clip=-1.5"]) == "algo.ratio_clip=-1.5 is not allowed (allowed: null or a number > 0)"
    assert _error(["algo.num_epochs=0"]) == "algo.num_epochs=0 is not allowed (allowed: an integer >= 1)"
    assert _error(["algo.num_epochs=1.5"]) == "algo.num_epochs=1.5 is not allowed (allowed: an integer >= 1)"
    assert _error(["estimator=gae"]) == (
        "estimator=gae does not fit algo=is_pg (allowed with algo=is_pg: estimator=reward_to_go, total_return)")
    # the baselines that only REINFORCE implements (rlcli.algos.reinforce.OWN_BASELINES)
    assert _error(["estimator=total_return", "estimator.baseline=optimal"]) == (
        "estimator.baseline=optimal does not fit algo=is_pg (allowed with algo=is_pg: "
        "estimator.baseline=none, mean, leave_one_out, value)")
    message = _error(["env=CartPole-v1", "algo.num_steps=200"])
    assert message.startswith("algo.num_steps=200 is not allowed (allowed with algo=is_pg and env.id='CartPole-v1'")
    with pytest.raises(ValueError, match="ratio='full' is not allowed"):
        is_pg.importance_weights(jnp.zeros((2, 1)), TERM[:2, :1], TRUNC[:2, :1], MASK[:2, :1], "full")


@pytest.mark.extended
def test_is_pg_runs_on_gymnasium_backend(tmp_path):
    """Two updates on the host loop with trajectory weights truncated at 1.5: the metrics are
    finite, the weights' statistics within their bounds."""
    summary, records = train(tmp_path, ["algo=is_pg", "env=CartPole-v1", "env.backend=gymnasium",
                                        "num_envs=2", "total_steps=4000", "log_interval=2000",
                                        "eval_episodes=2", "algo.ratio=trajectory", "algo.ratio_clip=1.5"])
    assert summary["total_steps"] == 4000 and len(records) == 2
    for record in records:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))
        assert 0.0 < record["train/ess"] <= 1.0 + 1e-6
        assert record["train/ratio_max"] <= 1.5 + 1e-6 and record["train/ratio_mean"] > 0.0
        assert record["train/episodes"] > 2

