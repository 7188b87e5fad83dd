"""gymnax's environments beyond the classic-control ports on the jax backend: every one is
offered, validated and described by its spec; observations of any rank reach the networks
flattened; time-limit truncation stays apart from termination; a MinAtar game trains and its
policy exports."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from rlcli import envs
from rlcli.envs import jax_backend

# one of each kind of observation and action space
KINDS = {
    "Breakout-MinAtar": ((10, 10, 4), True),  # an image of channels
    "DeepSea-bsuite": ((8, 8), True),  # a 2-d grid
    "FrozenLake-misc": ((1,), True),  # gymnax's scalar state index, given one axis
    "FourRooms-misc": ((4,), True),  # integer observations, given as float32
    "PointRobot-misc": ((6,), False),  # a Box action space
}


def test_every_gymnax_environment_but_mnist_is_offered():
    from rlcli.envs.jax_backend import import_gymnax

    registered = set(import_gymnax().registered_envs) - {"MNISTBandit-bsuite"}
    assert set(envs.jax_ports()) == registered
    assert len(jax_backend.GYMNAX) == 20
    for env_id in jax_backend.GYMNAX:
        assert envs.resolve_backend(env_id, "auto") == "jax"
        envs.check_env_id(env_id)  # no error
        assert env_id not in gymnasium.registry  # only the jax backend has them


def test_a_misspelt_gymnax_id_gets_close_matches():
    with pytest.raises(envs.EnvConfigError, match="did you mean Breakout-MinAtar"):
        envs.check_env_id("Breakout-Minatar")


@pytest.mark.parametrize("env_id", sorted(KINDS))
def test_specs(env_id):
    spec = jax_backend.spec(env_id)
    shape, discrete = KINDS[env_id]
    assert spec.obs_shape == shape and spec.discrete == discrete and spec.backend == "jax"
    assert spec.max_episode_steps == int(jax_backend.import_gymnax().make(env_id)[1].max_steps_in_episode)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [e if e == "Breakout-MinAtar"
                                    else pytest.param(e, marks=pytest.mark.extended) for e in sorted(KINDS)])
def test_the_rollout_runs_the_policy_on_every_observation_shape(env_id):
    """rlcli's one rollout with a2c's network: observations [T, N, *obs_shape] float32, the
    network's values [T, N] (an MLP over the flattened observation), finite rewards."""
    from rlcli import normalize, rollout
    from rlcli import train as training

    parts = training.setup(compose(["algo=a2c", "env=gymnax", f"env.id={env_id}", "num_envs=3"]))
    env = jax_backend.make(env_id)
    collect = rollout.jax_collect(parts.algo, env, normalize.make(parts.cfg), 3)

    @jax.jit
    def run(key):
        learner = parts.algo.init(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(key, 3))
        carry = rollout.EnvCarry(state, obs, key, rollout.empty_stats(3))
        return collect(learner, normalize.init(parts.spec.obs_shape, 3), carry, 7)[1]

    batch = jax.device_get(run(jax.random.PRNGKey(0)))
    shape = KINDS[env_id][0]
    assert batch.obs.shape == (7, 3, *shape) and batch.obs.dtype == np.float32
    assert batch.next_obs.shape == (7, 3, *shape)
    assert batch.value.shape == (7, 3) and np.all(np.isfinite(batch.value))
    assert np.all(np.isfinite(batch.reward))


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["DeepSea-bsuite", "MetaMaze-misc"])
def test_truncation_is_the_time_limit_and_apart_from_termination(env_id):
    """Over random play, a step flagged truncated and not terminated is the env's
    max_episode_steps-th step of its episode, and the next observation is a reset one."""
    env = jax_backend.make(env_id)
    limit = env.spec.max_episode_steps
    n, steps = 16, 3 * limit

    @jax.jit
    def play(key):
        obs, state = jax.vmap(env.reset)(jax.random.split(key, n))

        def body(carry, key):
            state, length = carry
            k_act, k_env = jax.random.split(key)
            action = jax.random.randint(k_act, (n,), 0, env.spec.num_actions)
            state, step = jax.vmap(env.step)(jax.random.split(k_env, n), state, action)
            length = length + 1
            out = (length, step.terminated, step.truncated)
            return (state, jnp.where(step.terminated | step.truncated, 0, length)), out

        return jax.lax.scan(body, (state, jnp.zeros(n, jnp.int32)), jax.random.split(key, steps))[1]

    length, terminated, truncated = map(np.asarray, play(jax.random.PRNGKey(0)))
    time_limit = truncated & ~terminated
    assert time_limit.any() or terminated.any()
    assert np.all(length[time_limit] == limit)
    assert np.all(length[terminated] <= limit)
    assert not np.any(truncated & (length < limit))


@pytest.mark.slow
def test_a_minatar_game_trains_evaluates_and_exports(tmp_path, cli):
    """env=Breakout-MinAtar: PPO with network=cnn trains on the images, evaluates, and its
    policy exports to ONNX matching rlcli's act."""
    result = cli(["train", "algo=ppo", "env=Breakout-MinAtar", "network=cnn", "total_steps=1024", "eval_episodes=2",
                  "logger=quiet", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "final evaluation return" in result.stdout
    exported = cli(["export", f"run={tmp_path / 'run'}", "format=onnx"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "0 actions differing" in exported.stdout
    video = cli(["eval", f"run={tmp_path / 'run'}", "video=true"], tmp_path)
    assert video.returncode == 2
    assert "env.id=Breakout-MinAtar has no gymnasium twin to draw its states (allowed: video=false" in video.stderr


def test_rlcli_list_shows_them(cli, tmp_path):
    out = cli(["list", "envs"], tmp_path).stdout
    for game in ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar", "SpaceInvaders-MinAtar"):
        row = next(line for line in out.splitlines() if line.strip().startswith(game))
        assert row.split()[1:3] == ["jax", "backend"] and "also gymnasium" not in row
    ports = next(line for line in out.splitlines() if "jax backend ports:" in line)
    assert all(env_id in ports for env_id in jax_backend.GYMNAX)
    gymnax_row = next(line for line in out.splitlines() if line.strip().startswith("gymnax "))
    assert "jax backend" in gymnax_row


@pytest.mark.parametrize("overrides, message", [
    (["algo=ppo", "env=CartPole-v1"], "network=cnn needs image observations [H, W, C] but env.id='CartPole-v1' has "
                                      "observations of shape (4,) (allowed: network=mlp, or an image env"),
    (["algo=sac", "env=Breakout-MinAtar"], "network=cnn is not supported by algo=sac, whose actor and critics are "
                                           "MLPs (allowed: network=mlp;"),
])
def test_network_cnn_refusals_are_one_line(overrides, message):
    from rlcli.config import validate
    from rlcli.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(compose([*overrides, "network=cnn"]))
    assert message in str(err.value) and "\n" not in str(err.value)
