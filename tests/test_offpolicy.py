"""The off-policy algorithms (algo=sac, algo=offpolicy_ac, algo=naive_offpolicy_ac) and their
replay buffer: hand-computed numbers, independent references (scipy, finite differences) and
learning thresholds."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from conftest import compose, train
from rlcli import distributions as D
from rlcli import replay
from rlcli.algos import Batch, naive_offpolicy_ac, offpolicy_ac, sac

# ---- replay buffer ----------------------------------------------------------------------------


def rows(values):
    """Transitions whose every field encodes the row's value (obs [2], action [1])."""
    v = jnp.asarray(values, jnp.float32)
    return replay.Transition(jnp.stack([v, -v], -1), v[:, None], v, v > 4, jnp.stack([v + 0.5, v], -1))


def example():
    return jax.tree.map(lambda x: x[0], rows([0.0]))


def test_ring_buffer_wraps_around():
    """Capacity 5: rows 1..3, then 4..7 (rows 4, 5 go to slots 3, 4; 6, 7 overwrite the oldest,
    slots 0, 1): slots hold [6, 7, 3, 4, 5], the next write goes to slot 2."""
    add = jax.jit(replay.add)
    buffer = add(replay.init(5, example()), rows([1, 2, 3]))
    assert (int(buffer.position), int(buffer.size)) == (3, 3)
    np.testing.assert_array_equal(buffer.data.reward, [1, 2, 3, 0, 0])
    buffer = add(buffer, rows([4, 5, 6, 7]))
    assert (int(buffer.position), int(buffer.size)) == (2, 5)
    expected = rows([6, 7, 3, 4, 5])
    for got, want in zip(buffer.data, expected):
        np.testing.assert_array_equal(got, want)
    assert buffer.data.terminated.dtype == bool and buffer.data.obs.shape == (5, 2)


def test_ring_buffer_batch_larger_than_capacity_keeps_the_newest():
    """Five rows into three slots from position 1, as five single adds would leave them: rows
    1..5 go to slots 1, 2, 0, 1, 2, so slots hold [3, 4, 5] and the next write is slot 0."""
    buffer = replay.add(replay.init(3, example()), rows([0]))  # position 1
    buffer = replay.add(buffer, rows([1, 2, 3, 4, 5]))
    np.testing.assert_array_equal(buffer.data.reward, [3, 4, 5])
    assert (int(buffer.position), int(buffer.size)) == (0, 3)


def test_sample_draws_only_filled_rows():
    buffer = replay.add(replay.init(100, example()), rows([1, 2, 3]))
    batch = jax.jit(replay.sample, static_argnums=2)(buffer, jax.random.PRNGKey(0), 5000)
    assert set(np.unique(batch.reward)) == {1.0, 2.0, 3.0}  # never an empty (all-zero) row
    np.testing.assert_array_equal(batch.obs[:, 0], batch.reward)  # rows are sampled whole
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.reward + 0.5)


def test_sample_is_uniform_over_filled_rows():
    """8 of 10 slots filled: 80k draws pass a chi-square test of uniformity over the 8
    (p > 0.001) and never hit an empty slot."""
    buffer = replay.add(replay.init(10, example()), rows(np.arange(1, 9)))
    draws = np.asarray(jax.jit(replay.sample, static_argnums=2)(buffer, jax.random.PRNGKey(1), 80_000).reward)
    counts = np.array([(draws == v).sum() for v in range(1, 9)])
    assert counts.sum() == 80_000
    assert stats.chisquare(counts).pvalue > 1e-3, counts


@pytest.mark.parametrize("start, new", [([], [1, 2]), ([1, 2, 3], [4, 5, 6, 7]), ([1], [2, 3, 4, 5, 6, 7, 8]),
                                         ([1, 2, 3, 4, 5], [6])])
def test_sample_after_add_draws_the_rows_of_sample_after_the_add(start, new):
    """Capacity 5, from empty, partly filled, wrapping and overfull adds: the rows read from the
    buffer before the add and the added rows are bit for bit those `sample` draws after it."""
    buffer = replay.init(5, example())
    if start:
        buffer = replay.add(buffer, rows(start))
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        want = replay.sample(replay.add(buffer, rows(new)), key, 64)
        got = jax.jit(replay.sample_after_add, static_argnums=3)(buffer, rows(new), key, 64)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    # `after` orders the write without changing it, even after a NaN
    ordered = replay.add(buffer, rows(new), after={"p": jnp.array([jnp.nan])})
    for g, w in zip(jax.tree.leaves(ordered), jax.tree.leaves(replay.add(buffer, rows(new)))):
        np.testing.assert_array_equal(g, w)


@pytest.mark.extended
def test_the_compiled_chunk_writes_the_buffer_in_place():
    """The jax backend's chunk program (vmap over seeds, scan over updates) for SAC with one
    env step per update: XLA writes the added row in place, and no copy of a whole buffer
    column is left in the optimised program (one per add made a 1M-row buffer cost 3x a 20k
    one; the rows are 7 fields wide here)."""
    from rlcli import train as training

    cfg = compose(["algo=sac", "env=Pendulum-v1", "num_envs=1", "algo.num_steps=1", "algo.buffer_size=123457",
                   "algo.learning_starts=0", "network.hidden_sizes=[16]", "total_steps=1000",
                   "log_interval=10", "logger=quiet", "compile_cache=null"])
    parts = training.setup(cfg)
    backend = training.make_loop(parts)
    state = backend.init()
    backend.compile(state)
    text = backend.programs[10].as_text()
    buffer_lines = [line for line in text.splitlines() if "123457" in line and "=" in line]
    assert any("dynamic-update-slice(" in line or "scatter(" in line for line in buffer_lines)
    copies = [line.strip()[:120] for line in buffer_lines if " copy(" in line]
    assert copies == []


def test_buffer_in_a_vmapped_scan():
    """Per-seed buffers inside jit(vmap(scan)): each seed's ring holds its own last rows."""
    def run(offset):
        def step(buffer, t):
            return replay.add(buffer, rows(jnp.stack([t, t + 0.25]) + offset)), None
        buffer, _ = jax.lax.scan(step, replay.init(3, example()), jnp.arange(1.0, 5.0))
        return buffer
    buffer = jax.jit(jax.vmap(run))(jnp.array([0.0, 100.0]))
    # rows 1, 1.25, 2, 2.25, 3, 3.25, 4, 4.25 into 3 slots: 4, 4.25 in slots 0, 1, 3.25 in slot 2
    np.testing.assert_allclose(buffer.data.reward, [[4, 4.25, 3.25], [104, 104.25, 103.25]])
    np.testing.assert_array_equal(buffer.position, [2, 2])


def test_from_rollout_flattens_time_major():
    t, n = 3, 2
    value = np.arange(t * n, dtype=np.float32).reshape(t, n)
    batch = Batch(value[..., None], value[..., None], value, value > 2, value > 9, value, value, value[..., None] + 1)
    flat = replay.from_rollout(batch)
    np.testing.assert_array_equal(flat.reward, np.arange(6))
    assert flat.obs.shape == (6, 1) and flat.action.shape == (6, 1)
    np.testing.assert_array_equal(flat.terminated, np.arange(6) > 2)


# ---- squashed Gaussian ------------------------------------------------------------------------


def test_tanh_log_prob_matches_change_of_variables():
    """log pi(tanh(u)) against log N(u) minus the log-determinant of a finite-difference Jacobian
    of the map u -> tanh(u) (float64 numpy, independent of the closed form)."""
    rng = np.random.default_rng(0)
    mean, log_std = rng.normal(size=3), rng.normal(scale=0.5, size=3)
    u = rng.normal(scale=1.5, size=3)
    h = 1e-6
    jacobian = np.stack([(np.tanh(u + h * e) - np.tanh(u - h * e)) / (2 * h) for e in np.eye(3)], axis=1)
    reference = stats.norm.logpdf(u, mean, np.exp(log_std)).sum() - np.log(abs(np.linalg.det(jacobian)))
    got = D.squashed_gaussian_log_prob((jnp.float32(mean), jnp.float32(log_std)), jnp.float32(u))
    np.testing.assert_allclose(float(got), reference, rtol=1e-5, atol=1e-5)


def test_tanh_density_integrates_to_one():
    """exp log pi(a) over a in (-1, 1), a = tanh(u): the corrected density is a density."""
    params = (jnp.float32([0.7]), jnp.float32([math.log(0.8)]))
    log_prob = jax.jit(lambda u: D.squashed_gaussian_log_prob(params, u[None]))
    density = lambda a: math.exp(float(log_prob(jnp.float32(np.arctanh(a)))))  # noqa: E731
    total, _ = integrate.quad(density, -1 + 1e-9, 1 - 1e-9, limit=200)
    assert abs(total - 1.0) < 1e-4


def test_tanh_correction_is_stable_for_large_u():
    """For |u| = 20, tanh rounds to 1 in float32 and log(1 - tanh^2) would be -inf; the stable
    form gives log 4 - 2|u| (the exact asymptote to 1e-17)."""
    u = jnp.float32([[20.0], [-20.0], [0.0]])
    got = np.asarray(D.tanh_log_det_jacobian(u))
    np.testing.assert_allclose(got, [math.log(4) - 40, math.log(4) - 40, 0.0], atol=1e-5)


def test_squashed_sample_is_tanh_of_the_gaussian_sample():
    params = (jnp.float32([[0.5, -1.0]]), jnp.float32([[0.0, -0.5]]))
    key = jax.random.PRNGKey(3)
    action, log_prob, u = D.squashed_gaussian_sample(key, params)
    np.testing.assert_allclose(u, D.gaussian_sample(key, params))
    np.testing.assert_allclose(action, np.tanh(np.float64(u)), rtol=1e-6)
    np.testing.assert_allclose(log_prob, D.squashed_gaussian_log_prob(params, u), rtol=1e-6)
    np.testing.assert_allclose(D.squashed_gaussian_mode(params), np.tanh([[0.5, -1.0]]), rtol=1e-6)


# ---- SAC pieces -------------------------------------------------------------------------------


def test_polyak_update_by_hand():
    target = {"w": jnp.float32([1.0, 2.0]), "b": jnp.float32(-4.0)}
    online = {"w": jnp.float32([3.0, 6.0]), "b": jnp.float32(4.0)}
    got = sac.polyak(target, online, 0.25)  # 0.25 online + 0.75 target
    np.testing.assert_allclose(got["w"], [1.5, 3.0])
    np.testing.assert_allclose(got["b"], -2.0)
    np.testing.assert_allclose(sac.polyak(target, online, 1.0)["w"], [3.0, 6.0])


def test_sac_soft_target_by_hand():
    """y = r + gamma (1 - terminated) (min_i Qbar_i(s', a') - alpha log pi(a'|s')):
    y_0 = 1 + 0.9 (min(3, 2) - 0.5 (-1)) = 3.25; y_1 = -2 (terminated); y_2 = 0.5 + 0.9 (0.5 -
    0.5 * 0.3) = 0.815 (a truncated step is stored as not terminated: it bootstraps)."""
    reward = jnp.float32([1.0, -2.0, 0.5])
    terminated = jnp.array([False, True, False])
    next_q = jnp.float32([[3.0, 0.5, 0.5], [2.0, 1.0, 0.7]])
    next_log_prob = jnp.float32([-1.0, 0.3, 0.3])
    got = sac.soft_target(reward, terminated, next_q, next_log_prob, 0.5, 0.9)
    np.testing.assert_allclose(got, [3.25, -2.0, 0.815], rtol=1e-6)


def test_discrete_sac_target_by_hand():
    """pi(.|s') = (1/4, 3/4), min_i Qbar_i(s', .) = (0, 2), alpha = 0.1: V(s') = 1/4 (0 - 0.1 log
    1/4) + 3/4 (2 - 0.1 log 3/4) = 1.5562327..., y = 1 + 0.9 V(s')."""
    next_logits = jnp.float32([[0.0, math.log(3.0)]])
    next_q = jnp.float32([[[1.0, 2.0]], [[0.0, 4.0]]])  # [critic, batch, action]
    v = 0.25 * (0 - 0.1 * math.log(0.25)) + 0.75 * (2 - 0.1 * math.log(0.75))
    got = sac.discrete_soft_target(jnp.float32([1.0]), jnp.array([False]), next_q, next_logits, 0.1, 0.9)
    np.testing.assert_allclose(got, [1 + 0.9 * v], rtol=1e-6)
    got = sac.discrete_soft_target(jnp.float32([1.0]), jnp.array([True]), next_q, next_logits, 0.1, 0.9)
    np.testing.assert_allclose(got, [1.0])


def test_temperature_loss_gradient_sign():
    """Haarnoja eq. 18 with alpha = 2, target entropy -1: entropy -E log pi = -2 is below the
    target, so d J / d log alpha = -alpha (E log pi + Hbar) = -2 (2 - 1) = -2 < 0 and gradient
    descent raises alpha; entropy 2 above the target gives +6 and lowers it."""
    grad = jax.grad(sac.temperature_loss)
    log_alpha = jnp.float32(math.log(2.0))
    np.testing.assert_allclose(grad(log_alpha, jnp.float32([1.0, 3.0]), -1.0), -2.0, rtol=1e-6)
    np.testing.assert_allclose(grad(log_alpha, jnp.float32([-3.0, -1.0]), -1.0), 6.0, rtol=1e-6)
    # no gradient reaches the policy through the temperature loss
    assert float(jax.grad(sac.temperature_loss, argnums=1)(log_alpha, jnp.float32([1.0]), -1.0)[0]) == 0.0


def test_score_function_loss_baseline_by_hand():
    """K = 3 samples of one state, Q = (1, 2, 6), no bonus: leave-one-out baselines (4, 3.5, 1.5),
    so d loss / d log pi_k = -(Q_k - b_k) / 3 = (1, 0.5, -1.5); without baseline -Q_k / 3."""
    q = jnp.float32([[1.0], [2.0], [6.0]])
    log_prob = jnp.zeros((3, 1))
    grad = jax.grad(offpolicy_ac.score_function_loss)
    np.testing.assert_allclose(grad(log_prob, q, log_prob, 0.0, True)[:, 0], [1.0, 0.5, -1.5], rtol=1e-6)
    np.testing.assert_allclose(grad(log_prob, q, log_prob, 0.0, False)[:, 0], [-1 / 3, -2 / 3, -2.0], rtol=1e-6)
    # the entropy bonus adds -ent_coef log pi to the signal: log pi = (0, 0, -1), c = 1
    lp = jnp.float32([[0.0], [0.0], [-1.0]])
    np.testing.assert_allclose(grad(log_prob, q, lp, 1.0, False)[:, 0], [-1 / 3, -2 / 3, -7 / 3], rtol=1e-6)


# ---- the algorithms through their interface ---------------------------------------------------


def make_algo(overrides):
    from rlcli import algos, config, envs

    cfg = compose(["network.hidden_sizes=[16,16]", *overrides])
    sizes = config.validate(cfg)
    spec = envs.make_spec(cfg.env.id, "jax")
    return algos.make(cfg.algo.name, spec, cfg, sizes.num_updates), spec


def fake_batch(spec, key, steps, envs):
    k_obs, k_act, k_rew = jax.random.split(key, 3)
    lead = (steps, envs)
    obs = jax.random.normal(k_obs, lead + spec.obs_shape)
    if spec.discrete:
        action = jax.random.randint(k_act, lead, 0, spec.num_actions)
    else:
        action = jax.random.uniform(k_act, lead + (spec.num_actions,), minval=-2.0, maxval=2.0)
    zeros = jnp.zeros(lead)
    return Batch(obs, action, jax.random.normal(k_rew, lead), zeros > 0, zeros > 0, zeros, zeros, obs + 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("algo,env", [("sac", "Pendulum-v1"),
                                      pytest.param("sac", "CartPole-v1", marks=pytest.mark.extended),
                                      pytest.param("offpolicy_ac", "Pendulum-v1", marks=pytest.mark.extended),
                                      pytest.param("offpolicy_ac", "CartPole-v1", marks=pytest.mark.extended),
                                      pytest.param("naive_offpolicy_ac", "Pendulum-v1", marks=pytest.mark.extended),
                                      pytest.param("naive_offpolicy_ac", "CartPole-v1", marks=pytest.mark.extended)])
def test_update_waits_for_learning_starts_and_explores_uniformly(algo, env):
    """No gradient step (parameters unchanged, metrics 0) until learning_starts transitions were
    collected; uniform random actions until then, policy actions after; gradient_steps steps
    per update after."""
    algorithm, spec = make_algo([f"algo={algo}", f"env={env}", "num_envs=2", "algo.num_steps=3",
                                 "algo.learning_starts=10", "algo.gradient_steps=2", "algo.batch_size=4",
                                 "network.log_std_init=-5"])  # Box: policy actions ~ tanh(mean) ~ 0
    update, act = jax.jit(algorithm.update), jax.jit(algorithm.act, static_argnames="deterministic")
    learner = algorithm.init(jax.random.PRNGKey(0))
    obs = jnp.zeros((2000,) + spec.obs_shape)
    action, _ = act(learner, obs, jax.random.PRNGKey(1))
    if spec.discrete:
        assert abs(float(jnp.mean(action)) - 0.5) < 0.05  # uniform over {0, 1}
    else:  # uniform over [-2, 2], although the policy's mean is ~0 here
        assert float(jnp.min(action)) < -1.9 and float(jnp.max(action)) > 1.9
        assert abs(float(jnp.mean(jnp.abs(action))) - 1.0) < 0.1
    for i in range(3):  # 6, 12, 18 transitions: learning starts with the second update
        before = learner
        learner, metrics = update(learner, fake_batch(spec, jax.random.PRNGKey(10 + i), 3, 2), jax.random.PRNGKey(i))
        assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
        same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), before.params, learner.params))
        assert all(same) == (i == 0), i
        assert int(learner.env_steps) == 6 * (i + 1) and int(learner.buffer.size) == 6 * (i + 1)
        assert int(learner.update_step) == 2 * i
    if not spec.discrete:  # policy actions now, all near the deterministic tanh(mean) ~ 0
        action, _ = act(learner, obs, jax.random.PRNGKey(1))
        det, _ = act(learner, obs[:1], jax.random.PRNGKey(1), deterministic=True)
        assert det.shape == (1, spec.num_actions) and float(jnp.max(jnp.abs(det))) < 0.2
        assert float(jnp.max(jnp.abs(action - det))) < 0.2


@pytest.mark.extended
def test_sac_resume_continues_the_same_run(tmp_path):
    """A run stopped at a checkpoint and resumed gives the numbers of the uninterrupted run: the
    buffer, the counters and the gSDE noise are part of the saved learner."""
    from rlcli import train as training
    from rlcli.logger import read_metrics

    common = ["logger=quiet", "algo=sac", "env=MountainCarContinuous-v0", "num_envs=2", "algo.num_steps=4",
              "algo.learning_starts=40", "algo.batch_size=16", "algo.use_sde=true",
              "network.hidden_sizes=[16,16]", "log_interval=40", "checkpoint_interval=40", "eval_episodes=1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), (parts / ".hydra").mkdir(parents=True)  # resume rewrites .hydra/config.yaml
    training.train(compose([*common, "total_steps=120"]), whole)
    # stopped at its checkpoint at 80 env steps (update 10 of 8 env steps each), as a signal stops it
    assert training.train(compose([*common, "total_steps=120"]), parts, stop_at_update=10) is None
    training.train(compose([*common, "total_steps=120"]), parts, resume=True)
    # training metrics only: the stopped run's final evaluation is an extra one
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_time", "perf/steps_per_s") and not k.startswith("eval/")}  # noqa: E731
                        for r in rs]
    assert [r["env_steps"] for r in read_metrics(whole)] == [40, 80, 120]
    assert strip(read_metrics(whole)) == strip(read_metrics(parts))


def test_sac_refuses_an_advantage_estimator(tmp_path, cli):
    result = cli(["train", "algo=sac", "estimator=gae"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "rlcli train: error: estimator=gae does not fit algo=sac (allowed with algo=sac: estimator=none)")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override,message", [
    ("algo.batch_size=512", "algo.batch_size=512 is larger than the replay buffer"),
    ("algo.learning_starts=20000", "algo.learning_starts=20000 leaves no step to learn from"),
    ("algo.tau=0", "algo.tau=0 is not allowed (allowed: a number in (0, 1])"),
    ("algo.ent_coef=-1", "algo.ent_coef=-1 is not allowed (allowed: auto or a number > 0)"),
])
def test_sac_cross_key_checks(override, message):
    from rlcli.config import ConfigError, validate

    cfg = compose(["algo=sac", "env=Pendulum-v1", "algo.buffer_size=256", override])
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_sde_needs_a_box_action_space():
    from rlcli.config import ConfigError, validate

    with pytest.raises(ConfigError, match="^algo.use_sde=true needs a continuous action space"):
        validate(compose(["algo=sac", "env=CartPole-v1", "algo.use_sde=true"]))


# ---- SAC's actor loss and gSDE, written out ----------------------------------------------------

SAC_HIDDEN = 8


def _relu_features(actor_params, obs):
    """The actor's last hidden layer in NumPy: relu(obs W + b) (one hidden layer)."""
    layer = actor_params["params"]["MLP_0"]["Dense_0"]
    return np.maximum(np.float64(obs) @ np.float64(layer["kernel"]) + np.float64(layer["bias"]), 0.0)


def _linear(layer, x):
    return x @ np.float64(layer["kernel"]) + np.float64(layer["bias"])


def _sac(overrides):
    return make_algo(["algo=sac", "env=Pendulum-v1", "num_envs=1", "algo.num_steps=8", "algo.batch_size=8",
                      "algo.buffer_size=16", "algo.learning_starts=0", "algo.gradient_steps=1",
                      "algo.learning_rate=0.01", "algo.ent_coef=auto", "algo.ent_coef_init=0.7",
                      f"network.hidden_sizes=[{SAC_HIDDEN}]", "network.activation=relu", *overrides])


def _update_keys(key):
    """The keys of one update with gradient_steps=1, split as `sac.replay_update` and SAC's
    `train_step` split them: (minibatch, target, actor, gSDE noise)."""
    k_train, k_noise = jax.random.split(key)
    k_sample, k_step = jax.random.split(jax.random.split(k_train, 1)[0])
    k_target, k_actor = jax.random.split(k_step)
    return k_sample, k_target, k_actor, k_noise


@pytest.mark.slow
def test_sac_actor_loss_against_the_formula():
    """Haarnoja et al. 2018 eq. 7/11 with the tanh correction (appendix C eq. 26): the actor's
    loss of one gradient step is mean_s [alpha log pi(a~|s) - min_i Q_i(s, a~)], a~ = tanh(mu(s) +
    sigma(s) z), log pi(a~|s) = log N(u; mu, sigma) (scipy) - sum log(1 - tanh(u)^2), with the
    critics just stepped and alpha before its step, written out here in NumPy from the actor's
    and critics' parameters (the forward pass of the one-hidden-layer actor by hand); and the
    actor's first Adam step is -lr g / (|g| + eps) with g the gradient of the written-out loss."""
    algo, spec = _sac([])
    learner = algo.init(jax.random.PRNGKey(0))
    batch = fake_batch(spec, jax.random.PRNGKey(1), 8, 1)
    key = jax.random.PRNGKey(5)
    new, metrics = jax.jit(algo.update)(learner, batch, key)
    k_sample, _, k_actor, _ = _update_keys(key)
    mb = replay.sample_after_add(learner.buffer, replay.from_rollout(batch), k_sample, 8)
    alpha = 0.7  # ent_coef_init; the temperature steps after the actor
    np.testing.assert_allclose(float(metrics["train/alpha"]), alpha, rtol=1e-6)
    from rlcli import networks

    critic = networks.QEnsemble(1, False, (SAC_HIDDEN,), "relu", 2)
    actor_params = learner.params.actor
    p = actor_params["params"]
    features = _relu_features(actor_params, mb.obs)
    mean = _linear(p["Dense_0"], features)
    log_std = np.clip(_linear(p["Dense_1"], features), -20.0, 2.0)
    z = np.float64(jax.random.normal(k_actor, mean.shape))  # the standard normal draw of the reparameterisation
    u = mean + np.exp(log_std) * z
    log_prob = (stats.norm.logpdf(u, mean, np.exp(log_std)) - np.log(1.0 - np.tanh(u) ** 2)).sum(-1)
    q = np.asarray(critic.apply(new.params.critic, mb.obs, jnp.float32(np.tanh(u))), np.float64)  # [2, B]
    assert q.shape == (2, 8) and np.all(q[0] != q[1])
    expected = np.mean(alpha * log_prob - q.min(axis=0))
    np.testing.assert_allclose(float(metrics["loss/actor"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["policy/entropy"]), -log_prob.mean(), rtol=1e-5, atol=1e-6)
    # resolving power: without the tanh correction, or with the mean of the critics, it differs
    gaussian_only = stats.norm.logpdf(u, mean, np.exp(log_std)).sum(-1)
    assert abs(np.mean(alpha * gaussian_only - q.min(axis=0)) - expected) > 1e-3
    assert abs(np.mean(alpha * log_prob - q.mean(axis=0)) - expected) > 1e-4

    def loss(actor_params):  # the same formula in jnp, for its gradient
        pp = actor_params["params"]
        f = jax.nn.relu(mb.obs @ pp["MLP_0"]["Dense_0"]["kernel"] + pp["MLP_0"]["Dense_0"]["bias"])
        mu = f @ pp["Dense_0"]["kernel"] + pp["Dense_0"]["bias"]
        ls = jnp.clip(f @ pp["Dense_1"]["kernel"] + pp["Dense_1"]["bias"], -20.0, 2.0)
        uu = mu + jnp.exp(ls) * jnp.float32(z)
        lp = jnp.sum(-0.5 * jnp.float32(z) ** 2 - ls - 0.5 * math.log(2 * math.pi) - jnp.log(1 - jnp.tanh(uu) ** 2),
                     axis=-1)
        return jnp.mean(alpha * lp - jnp.min(critic.apply(new.params.critic, mb.obs, jnp.tanh(uu)), axis=0))

    grads = jax.jit(jax.grad(loss))(actor_params)
    for (path, got), before, g in zip(jax.tree_util.tree_leaves_with_path(new.params.actor),
                                      jax.tree.leaves(actor_params), jax.tree.leaves(grads)):
        g = np.float64(g)
        np.testing.assert_allclose(got, np.float64(before) - 0.01 * g / (np.abs(g) + 1e-8), rtol=0, atol=2e-6,
                                   err_msg=jax.tree_util.keystr(path))


def _sde_actor_and_params(log_std_init=-0.5, seed=0):
    from rlcli import networks

    actor = networks.SquashedGaussianActor(2, (SAC_HIDDEN,), "relu", log_std_init, sde=True)
    obs = np.random.default_rng(seed).normal(size=(5, 3)).astype(np.float32)
    params = actor.init(jax.random.PRNGKey(seed), obs)
    return actor, params, obs


def test_gsde_variance_formula_and_mean_clip():
    """gSDE (Raffin et al. 2022): with theta_ij ~ N(0, sigma_ij^2), eps_j(s) = sum_i f_i(s) theta_ij has
    variance sum_i f_i(s)^2 sigma_ij^2, so the actor's log-std is 1/2 log of that (+1e-6), with f the
    last hidden layer (NumPy forward pass); the mean is clipped to [-2, 2]."""
    actor, params, obs = _sde_actor_and_params()
    params["params"]["sde_log_std"] = jnp.asarray(np.random.default_rng(1).normal(scale=0.4, size=(SAC_HIDDEN, 2)),
                                                  jnp.float32)
    params["params"]["Dense_0"]["bias"] = jnp.float32([5.0, -0.1])  # beyond the clip in the first dimension
    mean, log_std, features = actor.apply(params, obs)
    f = _relu_features(params, obs)
    np.testing.assert_allclose(features, f, rtol=1e-5, atol=1e-6)
    sigma2 = np.exp(2 * np.float64(params["params"]["sde_log_std"]))
    np.testing.assert_allclose(log_std, 0.5 * np.log(f ** 2 @ sigma2 + 1e-6), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, np.clip(_linear(params["params"]["Dense_0"], f), -2.0, 2.0), rtol=1e-5,
                               atol=1e-6)
    assert np.all(np.asarray(mean)[:, 0] == 2.0)
    # the noise matrices of sac.sde_noise: eps(s) = f(s) theta over 20k draws has mean 0 and the
    # variance above, within 5 standard errors (from the draws)
    thetas = jax.vmap(lambda k: sac.sde_noise(params, k))(jax.random.split(jax.random.PRNGKey(2), 20_000))
    eps = np.einsum("bi,nij->nbj", f, np.float64(thetas))  # [draws, states, D]
    se_mean = eps.std(0, ddof=1) / np.sqrt(eps.shape[0])
    assert np.all(np.abs(eps.mean(0) / se_mean) < 5.0)
    sq = eps ** 2
    z = (sq.mean(0) - np.exp(2 * np.float64(log_std))) / (sq.std(0, ddof=1) / np.sqrt(eps.shape[0]))
    assert np.all(np.abs(z) < 5.0), z


@pytest.mark.slow
def test_gsde_noise_is_features_times_a_matrix_held_until_the_next_update():
    """With algo.use_sde the behaviour action is tanh(mu(s) + f(s) theta) scaled to the bounds, theta
    the learner's noise matrix: the same for any key (the noise is a function of the state only
    between updates), written out here in NumPy; its log-prob is that of u under N(mu, sigma(s)^2)
    with the tanh and scaling corrections (scipy). The update draws a new theta =
    exp(sde_log_std) * N(0, 1) from its key with the updated parameters, and the actions change."""
    algo, spec = _sac(["algo.use_sde=true"])
    learner = algo.init(jax.random.PRNGKey(0))
    theta = np.float64(learner.noise)
    assert theta.shape == (SAC_HIDDEN, 1)
    obs = jnp.asarray(np.random.default_rng(3).normal(size=(6, 3)), jnp.float32)
    act = jax.jit(algo.act)
    a1, info = act(learner, obs, jax.random.PRNGKey(1))
    a2, _ = act(learner, obs, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a1, a2)
    p = learner.params.actor["params"]
    f = _relu_features(learner.params.actor, obs)
    mean = np.clip(_linear(p["Dense_0"], f), -2, 2)
    sigma = np.sqrt(f ** 2 @ np.exp(2 * np.float64(p["sde_log_std"])) + 1e-6)
    u = mean + f @ theta
    np.testing.assert_allclose(a1, 2.0 * np.tanh(u), rtol=1e-5, atol=1e-6)  # Pendulum: [-2, 2]
    log_prob = (stats.norm.logpdf(u, mean, sigma) - np.log(1 - np.tanh(u) ** 2)).sum(-1) - np.log(2.0)
    np.testing.assert_allclose(info.log_prob, log_prob, rtol=1e-5, atol=1e-5)
    # the update redraws theta with the new sigma
    key = jax.random.PRNGKey(7)
    new, _ = jax.jit(algo.update)(learner, fake_batch(spec, jax.random.PRNGKey(4), 8, 1), key)
    sigma_new = np.exp(np.float64(new.params.actor["params"]["sde_log_std"]))
    assert not np.allclose(sigma_new, np.exp(np.float64(p["sde_log_std"])))  # sde_log_std was trained
    k_noise = _update_keys(key)[3]
    np.testing.assert_allclose(new.noise, sigma_new * np.float64(jax.random.normal(k_noise, theta.shape)), rtol=1e-6)
    assert not np.allclose(new.noise, theta)
    b1, _ = act(new, obs, jax.random.PRNGKey(1))
    assert not np.allclose(b1, a1)


# ---- Alg. 19 as written (naive_offpolicy_ac) --------------------------------------------------


def naive_parts(env, overrides=()):
    """Alg. 19's networks and losses with one hidden ReLU layer as wide as the observation: with
    an identity kernel, zero bias and non-negative observations it passes s through unchanged,
    so V(s) = w . s + b and the logits s @ W + c are set by hand."""
    from rlcli import config, envs

    spec = envs.make_spec(env, "jax")
    cfg = compose(["algo=naive_offpolicy_ac", f"env={env}", "network.activation=relu",
                   f"network.hidden_sizes=[{int(np.prod(spec.obs_shape))}]", *overrides])
    config.validate(cfg)
    return naive_offpolicy_ac.build(spec, config.typed(cfg)), spec


def linear(kernel, bias):
    """Params of a one-hidden-layer network that computes s @ kernel + bias for s >= 0."""
    kernel = jnp.float32(kernel)
    identity = {"kernel": jnp.eye(kernel.shape[0]), "bias": jnp.zeros(kernel.shape[0])}
    return {"params": {"MLP_0": {"Dense_0": identity}, "Dense_0": {"kernel": kernel, "bias": jnp.float32(bias)}}}


def naive_batch(action):
    """Three transitions (CartPole's 4-dim observations): the second terminated, the third
    truncated by the time limit, stored as not terminated (only `terminated` stops the bootstrap)."""
    obs = jnp.float32([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]])
    next_obs = jnp.float32([[0.5, 0, 0, 1], [3, 0, 0, 0], [1, 0, 0, 2]])
    return replay.Transition(obs, jnp.asarray(action), jnp.float32([1.0, -2.0, 0.5]),
                             jnp.array([False, True, False]), next_obs)


CRITIC = linear([[1.0], [2.0], [0.0], [0.0]], [0.5])  # V(s) = s0 + 2 s1 + 0.5
TARGET = linear([[2.0], [0.0], [0.0], [1.0]], [-1.0])  # Vbar(s) = 2 s0 + s3 - 1


def test_naive_critic_target_and_loss_by_hand():
    """Alg. 19 step 4, gamma = 0.9: V(s_i) = (1.5, 2.5, 0.5); Vbar(s'_i) = (1, 5, 3); y = (1 + 0.9
    x 1, -2 (terminated: no bootstrap), 0.5 + 0.9 x 3 (truncated: bootstraps)) = (1.9, -2, 3.2);
    L = 1/2 mean((1.5 - 1.9)^2, (2.5 + 2)^2, (0.5 - 3.2)^2) = 1/2 (0.16 + 20.25 + 7.29) / 3."""
    parts, _ = naive_parts("CartPole-v1", ["algo.gamma=0.9"])
    assert jax.tree.map(jnp.shape, CRITIC) == jax.tree.map(jnp.shape, parts.critic.init(jax.random.PRNGKey(0),
                                                                                           jnp.zeros((1, 4))))
    mb = naive_batch([0, 0, 0])
    loss, (v, y) = parts.critic_loss(CRITIC, TARGET, mb)
    np.testing.assert_allclose(v, [1.5, 2.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(y, [1.9, -2.0, 3.2], rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.5 * (0.16 + 20.25 + 7.29) / 3, rtol=1e-6)
    # the same from the NumPy formulas
    obs, next_obs = np.asarray(mb.obs, np.float64), np.asarray(mb.next_obs, np.float64)
    v_np, v_bar = obs @ [1, 2, 0, 0] + 0.5, next_obs @ [2, 0, 0, 1] - 1
    y_np = np.array([1.0, -2.0, 0.5]) + 0.9 * (1 - np.array([0, 1, 0])) * v_bar
    np.testing.assert_allclose(float(loss), 0.5 * np.mean((v_np - y_np) ** 2), rtol=1e-6)
    # the target is held fixed: no gradient to the target network; d L / d b = mean(V - y)
    grad_critic, grad_target = jax.grad(lambda c, t: parts.critic_loss(c, t, mb)[0], argnums=(0, 1))(CRITIC, TARGET)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grad_target))
    np.testing.assert_allclose(grad_critic["params"]["Dense_0"]["bias"], [np.mean(v_np - y_np)], rtol=1e-6)


def test_naive_actor_loss_scores_the_replayed_actions_by_hand():
    """Alg. 19 steps 5-6 on the batch above with the replayed actions a = (1, 0, 1): logits
    (0, 1), (0, -1), (0, 2); A_i = r_i + 0.9 (1 - terminated_i) V(s'_i) - V(s_i) with V(s') =
    (1, -, 1.5): A = (1 + 0.9 - 1.5, -2 - 2.5, 0.5 + 1.35 - 0.5) = (0.4, -4.5, 1.35); the loss is
    -mean(log pi(a_i|s_i) A_i) with hand log-softmaxes, and its gradient with respect to the
    logits' bias -1/N sum_i A_i (onehot(a_i) - pi(.|s_i))."""
    parts, _ = naive_parts("CartPole-v1", ["algo.gamma=0.9"])
    actor = linear([[0.0, 1.0], [0.0, -1.0], [0.0, 0.0], [0.0, 2.0]], [0.0, 0.0])
    assert jax.tree.map(jnp.shape, actor) == jax.tree.map(jnp.shape, parts.actor.init(jax.random.PRNGKey(0),
                                                                                         jnp.zeros((1, 4))))
    logits = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 2.0]])
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    advantage = np.array([0.4, -4.5, 1.35])
    for action in ([1, 0, 1], [0, 1, 1]):
        mb = naive_batch(action)
        loss, (adv, log_prob) = parts.actor_loss(actor, CRITIC, mb)
        np.testing.assert_allclose(adv, advantage, rtol=1e-5)
        np.testing.assert_allclose(log_prob, log_softmax[np.arange(3), action], rtol=1e-5)
        np.testing.assert_allclose(float(loss), -np.mean(log_softmax[np.arange(3), action] * advantage), rtol=1e-5)
        grad = jax.grad(lambda a, mb=mb: parts.actor_loss(a, CRITIC, mb)[0])(actor)["params"]["Dense_0"]["bias"]
        expected = -np.mean(advantage[:, None] * (np.eye(2)[action] - np.exp(log_softmax)), axis=0)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    # a'_1 = 0 at s_1 = (0, 1, 0, 0): log pi = -log(1 + e^-1)
    np.testing.assert_allclose(log_softmax[1, 0], -math.log(1 + math.exp(-1)))
    # the advantage is held fixed: no gradient reaches the critic through the actor's loss
    grad_critic = jax.grad(lambda c: parts.actor_loss(actor, c, naive_batch([1, 0, 1]))[0])(CRITIC)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grad_critic))


def test_naive_replayed_box_action_log_prob_against_scipy():
    """Pendulum (actions in [-2, 2]): a replayed action a (env units) is scored as tanh(u) with u
    = atanh(a / 2): log N(u; mu, sigma) - log(1 - (a / 2)^2) (scipy, float64); an action on the
    bound stays finite (clipped to 1 - 1e-6 before the atanh)."""
    parts, _ = naive_parts("Pendulum-v1")
    params = parts.actor.init(jax.random.PRNGKey(4), jnp.zeros((1, 3)))
    obs = jnp.float32([[0.3, -0.2, 1.0], [1.0, 0.0, -0.5], [-0.7, 0.7, 2.0]])
    action = jnp.float32([[1.2], [-0.4], [1.99]])
    mean, log_std, _ = parts.actor.apply(params, obs)
    unit = np.asarray(action, np.float64)[:, 0] / 2
    reference = (stats.norm.logpdf(np.arctanh(unit), np.asarray(mean, np.float64)[:, 0],
                                   np.exp(np.asarray(log_std, np.float64)[:, 0])) - np.log(1 - unit ** 2))
    got = parts.replayed_log_prob(params, obs, action)
    np.testing.assert_allclose(got, reference, rtol=1e-4)
    at_bound = parts.replayed_log_prob(params, obs[:1], jnp.float32([[2.0]]))
    assert np.isfinite(float(at_bound[0]))


@pytest.mark.extended
@pytest.mark.parametrize("env", ["Pendulum-v1", "CartPole-v1"])
def test_naive_offpolicy_ac_short_run(tmp_path, env):
    """600 env steps through the runner: the learning steps' metrics are finite, and the run ends
    with a finite evaluation."""
    summary, records = train(tmp_path, ["algo=naive_offpolicy_ac", f"env={env}", "total_steps=600",
                                        "algo.learning_starts=200", "algo.batch_size=64",
                                        "network.hidden_sizes=[32,32]", "log_interval=200", "eval_episodes=2"])
    assert [r["env_steps"] for r in records] == [200, 400, 600]
    for key in ("loss/critic", "loss/actor", "policy/entropy", "policy/replayed_log_prob", "train/v_mean",
                "train/target_mean", "train/advantage_mean"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert records[-1]["loss/critic"] > 0
    assert summary["final_eval"]["episodes"] == 2 and np.isfinite(summary["final_eval_return_mean"])
