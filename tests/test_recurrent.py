"""network=gru: the mechanics of a recurrent policy (#26). The hidden state is carried through
the rollout and reset where an episode starts; an update replays each sequence from the state
stored with it and gets the rollout's own outputs; a checkpoint holds the state, so a resumed
run repeats an uninterrupted one bit for bit; `rlcli eval` repeats the final evaluation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compose
from rlcli import algos, config, envs, normalize, rollout
from rlcli.envs import jax_backend

GRU = ["network=gru", "network.hidden_sizes=[16]", "network.gru_size=8"]


def make(overrides, algo="ppo"):
    cfg = compose([f"algo={algo}", "env=CartPole-v1", *GRU, *overrides])
    config.validate(cfg)
    cfg = config.typed(cfg)
    spec = envs.make_spec("CartPole-v1", "jax")
    return cfg, spec, algos.make(algo, spec, cfg, 10)


def collect(cfg, spec, algo, learner, carry, steps):
    env = jax_backend.make("CartPole-v1")
    run = rollout.jax_collect(algo, env, normalize.make(cfg), cfg.num_envs)
    return jax.jit(run, static_argnums=3)(learner, None, carry, steps)


def start(algo, num_envs, key):
    env = jax_backend.make("CartPole-v1")
    obs, env_state = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    return rollout.EnvCarry(env_state, obs, key, rollout.empty_stats(num_envs), algo.initial_state(num_envs),
                            jnp.ones((num_envs,), bool))


def perturbed(learner, seed=3):
    """Every parameter redrawn at unit scale: the hidden state then changes the outputs a lot."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, x.shape[-2] ** -0.5 if x.ndim >= 2 else 0.5, x.shape),
                                                jnp.float32), learner.params)
    return learner._replace(params=params)


@pytest.mark.slow
def test_a_sequence_replayed_from_its_stored_state_gives_the_rollouts_outputs():
    """Two rollouts in a row (the second starts from the first's carried hidden state, not 0).
    The policy's `unroll` of the second batch, from the state stored at its first step and with
    the recorded episode starts, gives the log-probs and values the rollout computed step by
    step; so does each column replayed alone (a sequence minibatch of PPO). Replayed from zeros
    instead, or without the resets, the outputs differ: both inputs matter. The next values are
    the critic's on the next observation with the hidden state the step reached."""
    cfg, spec, algo = make(["num_envs=4"])
    policy = algos.actor_critic_policy(spec, cfg, algos.make_optimizer(cfg.algo, 10))
    learner = perturbed(algo.init(jax.random.PRNGKey(0)))
    carry = start(algo, 4, jax.random.PRNGKey(1))
    carry, _ = collect(cfg, spec, algo, learner, carry, 30)
    carry, batch = collect(cfg, spec, algo, learner, carry, 60)
    assert np.abs(np.asarray(batch.policy_state[0])).max() > 0.1  # the second rollout starts mid-episode
    starts = np.asarray(batch.episode_start)
    assert starts[1:].sum() >= 2  # episodes end and start inside the batch

    unroll = jax.jit(policy.unroll)
    dist_params, values, next_values = unroll(learner.params, batch)
    log_prob = policy.dist.log_prob(dist_params, batch.action)
    np.testing.assert_allclose(np.asarray(log_prob), np.asarray(batch.log_prob), atol=1e-5)
    np.testing.assert_allclose(np.asarray(values), np.asarray(batch.value), atol=1e-5)
    # V(next obs) with the state after step t = the value the rollout computed at t + 1 where no episode ended
    same = ~np.asarray(batch.terminated | batch.truncated)[:-1]
    np.testing.assert_allclose(np.asarray(next_values)[:-1][same], np.asarray(batch.value)[1:][same], atol=1e-5)

    for column in range(4):
        one = jax.tree.map(lambda x: x[:, column:column + 1], batch)
        _, alone, _ = unroll(learner.params, one)
        np.testing.assert_allclose(np.asarray(alone)[:, 0], np.asarray(batch.value)[:, column], atol=1e-5)

    from_zeros = batch._replace(policy_state=jnp.zeros_like(batch.policy_state))
    no_resets = batch._replace(episode_start=jnp.zeros_like(batch.episode_start))
    for wrong in (from_zeros, no_resets):
        assert np.abs(np.asarray(unroll(learner.params, wrong)[1]) - np.asarray(batch.value)).max() > 1e-3


def test_the_hidden_state_resets_where_an_episode_starts():
    """act on an observation that starts an episode gives what it gives from a zero state,
    whatever state it is handed; on one that does not, the state changes the output."""
    cfg, spec, algo = make(["num_envs=3"])
    learner = perturbed(algo.init(jax.random.PRNGKey(0)))
    obs = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
    state = jax.random.normal(jax.random.PRNGKey(2), algo.initial_state(3).shape)
    zero = algo.initial_state(3)
    key = jax.random.PRNGKey(4)
    yes, no = jnp.ones((3,), bool), jnp.zeros((3,), bool)
    a_reset, info_reset, h_reset = algo.act(learner, obs, key, state=state, episode_start=yes)
    a_zero, info_zero, h_zero = algo.act(learner, obs, key, state=zero, episode_start=no)
    np.testing.assert_array_equal(np.asarray(info_reset.value), np.asarray(info_zero.value))
    np.testing.assert_array_equal(np.asarray(h_reset), np.asarray(h_zero))
    _, info_kept, _ = algo.act(learner, obs, key, state=state, episode_start=no)
    assert np.abs(np.asarray(info_kept.value) - np.asarray(info_zero.value)).min() > 1e-4


@pytest.mark.slow
def test_ppo_minibatches_replay_their_sequences_from_the_stored_states():
    """PPO with a tiny target_kl applies exactly its first minibatch step, whose policy must
    be the rollout's one (KL exactly 0, up to float rounding): so each minibatch of env columns,
    replayed from its stored starting states with the episode starts, reproduces the rollout's
    log-probs. Fed a batch whose stored states were zeroed, the first minibatch's KL is not 0
    and no step is applied."""
    cfg, spec, algo = make(["num_envs=4", "algo.num_minibatches=2", "algo.update_epochs=2",
                            "algo.target_kl=1e-9"])
    learner = perturbed(algo.init(jax.random.PRNGKey(0)))
    carry = start(algo, 4, jax.random.PRNGKey(1))
    carry, _ = collect(cfg, spec, algo, learner, carry, 20)
    _, batch = collect(cfg, spec, algo, learner, carry, 40)
    update = jax.jit(algo.update)
    _, metrics = update(learner, batch, jax.random.PRNGKey(2))
    assert float(metrics["train/minibatches_applied"]) == pytest.approx(1 / 4)
    _, wrong = update(learner, batch._replace(policy_state=jnp.zeros_like(batch.policy_state)), jax.random.PRNGKey(2))
    assert float(wrong["train/minibatches_applied"]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", pytest.param("a2c", marks=pytest.mark.extended)])
def test_a_resumed_run_repeats_the_whole_one_and_rlcli_eval_repeats_its_evaluation(algo, tmp_path, cli):
    """A run stopped at its first checkpoint and resumed gives the metrics of an uninterrupted
    run bit for bit (the hidden states of the envs in flight come back from the checkpoint),
    `rlcli eval` of the final checkpoint repeats the run's final evaluation, and `rlcli export`
    writes its step function (state in, state out)."""
    common = [f"algo={algo}", "env=CartPole-v1", *GRU, "num_envs=4", "log_interval=512", "checkpoint_interval=1024",
              "eval_episodes=3", "logger=quiet"]
    if algo == "ppo":
        common += ["algo.num_steps=64", "algo.num_minibatches=2", "algo.anneal_lr=false"]  # one schedule for both
    whole, part = tmp_path / "whole", tmp_path / "part"
    for run, steps in ((whole, 2048), (part, 1024)):
        assert cli(["train", *common, f"total_steps={steps}", f"hydra.run.dir={run}"], tmp_path).returncode == 0
    resumed = cli(["resume", f"run={part}", "total_steps=2048"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    def numbers(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("wall_time", "perf/steps_per_s") and not k.startswith("eval/")}
                for r in rows]

    assert len(numbers(whole)) == 4 and numbers(whole) == numbers(part)
    result = cli(["eval", f"run={whole}"], tmp_path)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((whole / "eval.json").read_text())["return_mean"]
    final = json.loads((whole / "summary.json").read_text())["final_eval"]["return_mean"]
    assert evaluated == pytest.approx(float(np.mean(final)), rel=1e-6)
    exported = cli(["export", f"run={whole}", "format=onnx", f"out={tmp_path / 'onnx'}"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert manifest["state_size"] == 8 and manifest["parity"]["max_state_error"] <= 1e-5
    assert "1000 observations (100 sequences of 10 steps), 0 actions differing" in exported.stdout


@pytest.mark.parametrize("overrides, message", [
    (["algo=trpo"], "network=gru is not supported by algo=trpo"),
    (["algo=a2c", "env.backend=gymnasium"], "network=gru runs on the jax backend"),
    (["algo=ppo", "num_envs=4", "algo.num_minibatches=3"], "algo.num_minibatches=3 does not divide num_envs"),
])
def test_bad_input_is_one_line(overrides, message, tmp_path, cli):
    result = cli(["train", "env=CartPole-v1", "network=gru", *overrides], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "outputs").exists()


def test_mask_velocity_keeps_the_cart_position_and_the_pole_angle():
    """env.mask_velocity=true: the same CartPole (same keys, same dynamics), observed as
    (x, theta) of gymnax's (x, x_dot, theta, theta_dot); next_obs too."""
    spec = envs.make_spec("CartPole-v1", "jax", mask_velocity=True)
    assert spec.obs_shape == (2,) and spec.observed == (0, 2)
    full, masked = jax_backend.make("CartPole-v1"), jax_backend.make("CartPole-v1", spec.observed)
    key = jax.random.PRNGKey(0)
    (obs_f, state_f), (obs_m, state_m) = full.reset(key), masked.reset(key)
    np.testing.assert_array_equal(np.asarray(obs_m), np.asarray(obs_f)[[0, 2]])
    for t in range(30):
        k = jax.random.fold_in(key, t)
        state_f, step_f = full.step(k, state_f, t % 2)
        state_m, step_m = masked.step(k, state_m, t % 2)
        np.testing.assert_array_equal(np.asarray(step_m.obs), np.asarray(step_f.obs)[[0, 2]])
        np.testing.assert_array_equal(np.asarray(step_m.next_obs), np.asarray(step_f.next_obs)[[0, 2]])
        assert float(step_m.reward) == float(step_f.reward) and bool(step_m.terminated) == bool(step_f.terminated)


@pytest.mark.parametrize("overrides", [["env=Acrobot-v1"], ["env=CartPole-v1", "env.backend=gymnasium"]])
def test_mask_velocity_elsewhere_is_one_line(overrides, tmp_path, cli):
    result = cli(["train", *overrides, "env.mask_velocity=true"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "env.mask_velocity=true is not available for env.id=" in lines[0], result.stderr
    assert "(allowed: env.id=CartPole-v1 on the jax backend; env.mask_velocity=false)" in lines[0]
