"""`rlcli eval`: evaluation of a run's checkpoint against the evaluations the training run
recorded itself, videos against the evaluation episodes they replay, the gymnasium-twin
rendering of the JAX ports against gymnasium stepping on its own, and bad input."""

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import train_run

# 2000 steps of 4 envs x 5 steps: 100 updates, a record every 400 steps, an evaluation and a
# checkpoint every 800 (evaluation 0 at 800, 1 at 1600, 2 at 2000, the final one)
JAX_RUN = ["algo=a2c", "env=CartPole-v1", "total_steps=2000", "num_envs=4", "num_seeds=2",
           "log_interval=400", "eval_interval=800", "checkpoint_interval=800", "eval_episodes=4",
           "normalize.obs=true", "logger=quiet"]
GYM_RUN = ["algo=a2c", "env=gymnasium", "env.id=CartPole-v1", "env.backend=gymnasium",
           "total_steps=1000", "num_envs=4", "eval_episodes=3", "logger=quiet"]


def train(root: Path, overrides: list[str]) -> Path:
    return train_run(root / "run", overrides)


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("eval-jax"), JAX_RUN)


@pytest.fixture(scope="module")
def gym_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("eval-gym"), GYM_RUN)


def evaluate(run: Path, *args: str) -> dict:
    from rlcli.commands.evaluate import main

    assert main([f"run={run}", *args]) == 0
    return json.loads((run / "eval.json").read_text())


def training_evals(run: Path, env_steps: int) -> dict[int, float]:
    """eval/return_mean per seed index of the training run's evaluation at `env_steps`."""
    from rlcli.logger import read_metrics

    return {r["seed_index"]: r["eval/return_mean"] for r in read_metrics(run) if r["env_steps"] == env_steps}


LINE = re.compile(r"^(.+): return (-?[\d.]+) ± ([\d.]+), length ([\d.]+) ± ([\d.]+)$", re.M)


@pytest.mark.slow
def test_final_checkpoint_repeats_the_final_evaluation(jax_run, capsys):
    """Evaluation 2 (eval_seed=2) of the restored final checkpoint, with its observation
    statistics, gives the numbers the run printed into summary.json; eval.json holds what was
    printed."""
    result = evaluate(jax_run, "eval_seed=2")
    summary = json.loads((jax_run / "summary.json").read_text())["final_eval"]
    assert (result["checkpoint"], result["episodes"], result["deterministic"], result["eval_seed"]) == (2000, 4, True, 2)
    assert [s["seed_index"] for s in result["seeds"]] == [0, 1]
    for i, seed in enumerate(result["seeds"]):
        assert len(seed["returns"]) == len(seed["lengths"]) == 4
        assert seed["return_mean"] == pytest.approx(summary["return_mean"][i], rel=1e-6)
        assert seed["return_std"] == pytest.approx(summary["return_std"][i], rel=1e-5)
        assert seed["length_mean"] == pytest.approx(summary["length_mean"][i], rel=1e-6)
        assert seed["return_mean"] == pytest.approx(np.mean(seed["returns"]))
        assert seed["returns"] == [float(x) for x in seed["lengths"]]  # CartPole: +1 per step
    pooled = np.concatenate([s["returns"] for s in result["seeds"]])
    assert result["return_mean"] == pytest.approx(pooled.mean()) and result["return_std"] == pytest.approx(pooled.std())

    printed = {m[0]: [float(x) for x in m[1:]] for m in LINE.findall(capsys.readouterr().out)}
    assert list(printed) == ["seed 0 (seed_index 0)", "seed 1 (seed_index 1)", "all (2 seeds, 8 episodes)"]
    for numbers, stats in zip(printed.values(), [*result["seeds"], result]):
        expected = [stats[k] for k in ("return_mean", "return_std", "length_mean", "length_std")]
        assert numbers == pytest.approx(expected, abs=0.005)


@pytest.mark.slow
def test_older_checkpoint_one_seed_with_videos(jax_run):
    """checkpoint=800 of seed 1 repeats the run's evaluation at env step 800; its GIFs replay
    evaluation episodes 0 and 1: the same return and length, length + 1 frames."""
    from PIL import Image, ImageSequence

    result = evaluate(jax_run, "checkpoint=800", "seed_index=1", "video=true", "video_episodes=2")
    assert result["checkpoint"] == 800 and [s["seed_index"] for s in result["seeds"]] == [1]
    seed = result["seeds"][0]
    assert seed["return_mean"] == pytest.approx(training_evals(jax_run, 800)[1], rel=1e-6)
    assert seed["return_mean"] != pytest.approx(training_evals(jax_run, 2000)[1], rel=1e-6)

    assert sorted(p.name for p in (jax_run / "videos").iterdir()) == [
        "step800-seed1-episode0.gif", "step800-seed1-episode1.gif"]
    assert not list(jax_run.glob(".videos-*"))  # the staging directory is gone
    for k, video in enumerate(result["videos"]):
        assert (video["seed_index"], video["episode"]) == (1, k)
        assert (video["return"], video["length"]) == (seed["returns"][k], seed["lengths"][k])
        assert video["frames"] == video["length"] + 1
        with Image.open(jax_run / video["file"]) as gif:
            frames = [(np.asarray(f.convert("RGB")), f.info["duration"]) for f in ImageSequence.Iterator(gif)]
        # CartPole plays at 50 fps: 20 ms a frame; identical consecutive frames are stored once
        assert sum(duration for _, duration in frames) == 20 * video["frames"]
        assert frames[0][0].shape == (400, 600, 3) and len(frames) > 2
        assert all((a != b).any() for (a, _), (b, _) in zip(frames, frames[1:]))


@pytest.mark.extended
def test_gymnasium_backend_mp4(gym_run):
    """A gymnasium-backend run: evaluation repeats the final one; MP4 videos replay evaluation
    episodes 0 and 1 with length + 1 frames that differ."""
    import imageio.v2 as imageio

    result = evaluate(gym_run, "video=true", "video_episodes=2", "video_format=mp4")
    summary = json.loads((gym_run / "summary.json").read_text())["final_eval"]
    seed = result["seeds"][0]
    assert seed["return_mean"] == pytest.approx(summary["return_mean"][0], rel=1e-6)
    for k, video in enumerate(result["videos"]):
        assert video["file"] == f"videos/step1000-seed0-episode{k}.mp4"
        assert (video["return"], video["length"]) == (seed["returns"][k], seed["lengths"][k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # JAX's os.fork warning as ffmpeg starts
            with imageio.get_reader(gym_run / video["file"]) as reader:
                frames = [np.asarray(f) for f in reader]
                assert reader.get_meta_data()["fps"] == 50
        assert len(frames) == video["frames"] == video["length"] + 1
        assert frames[0].shape == (400, 600, 3) and np.abs(frames[0].astype(int) - frames[-1]).max() > 100


def gymnax_state(env_id: str, s: np.ndarray):
    """The gymnax state of gymnasium's state vector s, field by field as each port names them."""
    import jax.numpy as jnp
    from gymnax.environments.classic_control import (acrobot, cartpole, continuous_mountain_car,
                                                     mountain_car, pendulum)

    s = [jnp.float32(x) for x in s]
    return {
        "CartPole-v1": lambda: cartpole.EnvState(x=s[0], x_dot=s[1], theta=s[2], theta_dot=s[3], time=0),
        "Acrobot-v1": lambda: acrobot.EnvState(joint_angle1=s[0], joint_angle2=s[1], velocity_1=s[2],
                                               velocity_2=s[3], time=0),
        "MountainCar-v0": lambda: mountain_car.EnvState(position=s[0], velocity=s[1], time=0),
        "MountainCarContinuous-v0": lambda: continuous_mountain_car.EnvState(position=s[0], velocity=s[1], time=0),
        "Pendulum-v1": lambda: pendulum.EnvState(theta=s[0], theta_dot=s[1], last_u=jnp.float32(0), time=0),
    }[env_id]()


ACTIONS = {
    "CartPole-v1": [0, 1, 1, 0, 1, 0, 0, 1] * 2,
    "Acrobot-v1": [0, 1, 2, 2, 1, 0] * 3,
    "MountainCar-v0": [2, 2, 0, 0, 1] * 3,
    "MountainCarContinuous-v0": [np.array([0.7], np.float32), np.array([-1.0], np.float32)] * 8,
    "Pendulum-v1": [np.array([1.5], np.float32), np.array([-2.0], np.float32), np.array([0.3], np.float32)] * 5,
}


@pytest.mark.parametrize("env_id", list(ACTIONS))
def test_twin_render_equals_gymnasium(env_id):
    """gymnasium's env and the JAX port start in the same state and take the same actions;
    the twin's drawing of every JAX state is pixel-equal to gymnasium's own frame."""
    import gymnasium
    import jax

    from rlcli.envs import jax_backend, render

    twin = render.make_env(env_id)  # (this also points SDL at its offscreen drivers)
    reference = gymnasium.make(env_id, render_mode="rgb_array")
    reference.reset(seed=3)
    env = jax_backend.make(env_id)
    state = gymnax_state(env_id, np.asarray(reference.unwrapped.state))
    frames = [reference.render()]
    assert np.array_equal(render.render_twin(twin, env_id, state), frames[-1])
    for action in ACTIONS[env_id]:
        reference.step(action)
        state, step = env.step(jax.random.PRNGKey(0), state, jax.numpy.asarray(action))
        assert not (step.terminated or step.truncated)
        frames.append(reference.render())
        assert np.array_equal(render.render_twin(twin, env_id, state), frames[-1])
    assert not np.array_equal(frames[0], frames[-1]) and len({f.tobytes() for f in frames}) >= 4  # it moves


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*")}


BAD = [
    (["checkpoint=999"], "checkpoint=999 is not a checkpoint of run=", "one of 800, 1600, 2000"),
    (["seed_index=2"], "seed_index=2 is out of range", "an integer in [0, 1]"),
    (["episodes=0"], "episodes=0 is not allowed", "an integer >= 1"),
    (["video=true", "video_format=avi"], "video_format=avi is not allowed", "one of gif, mp4"),
    (["video=true", "video_episodes=5"], "video_episodes=5 is more than episodes=4", "an integer in [1, 4]"),
    (["episode=3"], "did you mean episodes=3?", "run=, episodes=, deterministic="),
    (["deterministic=maybe"], "deterministic=maybe is not allowed", "true or false"),
]


@pytest.mark.parametrize("args,says,allowed", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input(jax_run, capsys, args, says, allowed):
    from rlcli.commands.evaluate import main

    before = snapshot(jax_run)
    assert main([f"run={jax_run}", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("rlcli eval: error: ")
    assert says in err and f"(allowed: {allowed}" in err
    assert snapshot(jax_run) == before


def test_bad_run_dir(jax_run, tmp_path, capsys):
    """An unknown directory; a run directory without a checkpoint; video=true without the
    rendering package (gymnasium raises DependencyNotInstalled): one line, nothing written."""
    from unittest import mock

    import gymnasium

    from rlcli.commands.evaluate import main

    assert main([f"run={tmp_path / 'nowhere'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    shutil.copytree(jax_run / ".hydra", tmp_path / "stopped" / ".hydra")
    assert main([f"run={tmp_path / 'stopped'}"]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    before = snapshot(jax_run)
    missing = gymnasium.error.DependencyNotInstalled('pygame is not installed, run `pip install "gymnasium[classic-control]"`')
    with mock.patch("gymnasium.make", side_effect=missing):
        assert main([f"run={jax_run}", "video=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "video=true: rendering CartPole-v1 needs a package" in err
    assert "(allowed: video=false, or pip install 'rlcli[video]')" in err
    assert snapshot(jax_run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["stopped"]
