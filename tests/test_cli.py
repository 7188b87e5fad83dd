"""The real command line: run directories, bad input, help."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import compose

SHORT = ["total_steps=2000", "log_interval=400", "checkpoint_interval=800", "eval_episodes=2",
         "num_seeds=2", "logger.csv=true"]


def only_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend, vectorization", [("jax", "auto"), ("gymnasium", "auto"),
                                                       pytest.param("gymnasium", "sync", marks=pytest.mark.extended)])
def test_short_run_writes_every_file(tmp_path, cli, backend, vectorization):
    """(gymnasium backend: `auto` steps CartPole's numpy-vectorised env, `sync` 8 copies.)"""
    result = cli(["train", "algo=a2c", "env=CartPole-v1", f"env.backend={backend}",
                  f"env.vectorization={vectorization}", *SHORT], tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)
    assert run.name.endswith("-a2c-CartPole-v1")

    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (run / ".hydra" / name).is_file()
    saved = (run / ".hydra" / "config.yaml").read_text()
    assert f"backend: {backend}" in saved and "total_steps: 2000" in saved

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 2000 steps / (8 envs x 5 steps) = 50 updates; a record every 10 updates, per seed
    assert [r["env_steps"] for r in records if r["seed_index"] == 0] == [400, 800, 1200, 1600, 2000]
    assert {r["seed"] for r in records} == {0, 1}
    assert all(np.isfinite(r["loss/total"]) for r in records)
    assert "eval/return_mean" in records[-1]
    assert (run / "metrics.csv").read_text().count("\n") == len(records) + 1

    for seed_index in (0, 1):
        assert list((run / "tb" / f"seed_{seed_index}").glob("events.out.tfevents.*"))
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "train.log").is_file()

    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [800, 1600, 2000][-3:]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["backend"] == backend and summary["seeds"] == [0, 1]
    assert len(summary["final_eval"]["return_mean"]) == 2
    assert summary["total_steps"] == 2000 and summary["num_updates"] == 50
    for key in ("wall_time_s", "compile_time_s", "steps_per_second"):
        assert summary[key] > 0
    assert summary["versions"]["jax"] and summary["versions"]["gymnasium"]


@pytest.mark.slow
def test_checkpoint_holds_whole_learner_state(shared_run):
    """The latest checkpoint of the session's shared run (2 seeds) restores params, optimizer
    state, RNG key and update counter, and the restored params act like the run's final policy."""
    import jax

    from conftest import SHARED_RUN
    from rlcli import algos, checkpoint, config, envs
    from rlcli.loops.jax import make as make_jax_loop

    run = shared_run
    cfg = compose(SHARED_RUN)
    sizes = config.validate(cfg)
    spec = envs.make_spec("CartPole-v1", "jax")
    backend = make_jax_loop(cfg, spec, algos.make("a2c", spec, cfg, sizes.num_updates), sizes)
    fresh = backend.init()
    state, meta = checkpoint.restore(run / "checkpoints", backend.checkpoint_state(fresh))
    assert meta["env_steps"] == 2000 and meta["update"] == 50
    assert np.asarray(state["learner"].update_step).tolist() == [50, 50]
    assert set(state) == {"learner", "env_state", "obs", "key", "episodes", "norm"}
    # the parameters moved away from their initial values, and the optimizer state has counts
    moved = jax.tree.map(lambda a, b: float(abs(a - b).max()), state["learner"].params, fresh.learner.params)
    assert max(jax.tree.leaves(moved)) > 0
    assert not np.array_equal(np.asarray(state["key"]), np.asarray(fresh.key))

    # the restored state acts as the run's final policy: the run's last evaluation (number
    # eval_index - 1, the final one) played again with it gives each seed's return the run
    # logged, which the untrained policy does not
    from rlcli import train as training

    loop = training.make_loop(training.setup(cfg))
    restored, meta = training.restore_checkpoint(loop, run / "checkpoints")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["eval/return_mean"] for r in sorted(records, key=lambda r: r["seed_index"]) if r["env_steps"] == 2000]
    assert len(logged) == 2
    returns, _ = loop.evaluate(restored, meta["eval_index"] - 1)
    assert np.asarray(returns).mean(axis=1).tolist() == pytest.approx(logged, rel=1e-6)
    untrained, _ = loop.evaluate(loop.init(), meta["eval_index"] - 1)
    assert np.asarray(untrained).mean(axis=1).tolist() != pytest.approx(logged, rel=1e-6)
    loop.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", pytest.param("gymnasium", marks=pytest.mark.extended)])
def test_pendulum_gaussian_policy_and_finished_episodes_only(tmp_path, cli, backend):
    result = cli(["train", "env=Pendulum-v1", f"env.backend={backend}", "total_steps=3200",
                  "log_interval=400", "eval_episodes=1"], tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # a diagonal Gaussian in 1-D has entropy log(sigma) + log(2 pi e)/2 = 1.4189 at log-std 0
    assert abs(records[0]["policy/entropy"] - 1.4189) < 0.05
    # Pendulum episodes are cut at exactly 200 steps; 8 envs x 200 = 1600 env steps, so all 8
    # envs finish an episode in the records at 1600 and 3200 and none elsewhere, where no
    # return may be logged at all
    by_steps = {r["env_steps"]: r for r in records}
    assert sorted(by_steps) == list(range(400, 3201, 400))
    for steps, record in by_steps.items():
        if steps % 1600 == 0:
            assert record["episode/count"] == 8 and record["episode/length"] == 200
            assert record["episode/return"] < 0
        else:
            assert record["episode/count"] == 0
            assert "episode/return" not in record and "episode/length" not in record


def test_help_lists_groups_and_keys(tmp_path, cli):
    """rlcli train --help names every group's options and, for the composed config, every key
    with its value there, its help and what is allowed, from the one declaration of each key
    (rlcli.schema): the algorithm's own keys with algo=ppo, a tuned value for its pair, an
    override from the command line."""
    from rlcli import schema
    from rlcli.algos import ppo

    result = cli(["train", "algo=ppo", "algo.clip_coef=0.3", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for group in schema.GROUPS:
        assert f"  {group}=" in out and all(name in out for name in schema.choices(group)), group
    assert "ppo*" in out and "CartPole-v1*" in out and "gae*" in out
    for name, key in ppo.KEYS.items():  # the algorithm's keys, each with its help and rule
        assert f"\n  {name}=" in out and key.help.split()[0] in out and key.rule.allowed in out, name
    assert "\n  algo.clip_coef=0.3\n" in out  # the command line's value
    assert "\n  algo.update_epochs=20\n" in out  # conf/tuned/ppo_CartPole-v1.yaml's, not the default 4
    assert "\n  seed=0\n" in out and "\n  algo.name=ppo\n" in out
    assert "algo.buffer_size" not in out  # sac's key: not this composition's
    bad = cli(["train", "algo=ppx", "--help"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "ppx" in bad.stderr
    top = cli(["--help"], tmp_path)
    assert top.returncode == 0 and "train" in top.stdout
    unknown = cli(["bogus"], tmp_path)
    assert unknown.returncode == 2 and "unknown command 'bogus'" in unknown.stderr
    # python -m rlcli: the same command and exit codes
    import subprocess
    import sys

    module = subprocess.run([sys.executable, "-m", "rlcli", "bogus"], capture_output=True, text=True, cwd=tmp_path)
    assert module.returncode == 2 and module.stderr == unknown.stderr


def test_tuned_values_beat_defaults_and_lose_to_the_command_line(tmp_path):
    """conf/tuned/<algo>_<env>.yaml overrides the train and algo defaults for that pair
    only; command-line overrides win over it (checked on a copy of conf/ with an extra file)."""
    import shutil

    from hydra import compose as hydra_compose, initialize_config_dir

    from rlcli.paths import config_dir
    from rlcli.schema import register

    register()
    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    (conf / "tuned" / "a2c_Acrobot-v1.yaml").write_text(
        "# @package _global_\nnum_envs: 3\ntotal_steps: 1234\nalgo:\n  ent_coef: 0.25\n")

    def composed(*overrides):
        with initialize_config_dir(str(conf), version_base="1.3"):
            return hydra_compose("train", overrides=list(overrides))

    tuned = composed("env=Acrobot-v1")
    assert (tuned.num_envs, tuned.total_steps, tuned.algo.ent_coef) == (3, 1234, 0.25)
    cli = composed("env=Acrobot-v1", "num_envs=5", "algo.ent_coef=0.5")
    assert (cli.num_envs, cli.algo.ent_coef) == (5, 0.5)
    other = composed("env=MountainCar-v0")
    assert (other.num_envs, other.total_steps, other.algo.ent_coef) == (8, 1000000, 0.0)


@pytest.mark.parametrize("spaces, env, space", [(("continuous",), "CartPole-v1", "discrete"),
                                                (("discrete",), "Pendulum-v1", "continuous")])
def test_an_algorithm_is_refused_on_an_action_space_it_cannot_handle(monkeypatch, spaces, env, space):
    """Every shipped algorithm handles both spaces, so the rule is checked on a2c restricted
    to one: a continuous-only algorithm on a discrete env and the reverse."""
    from rlcli.algos import a2c
    from rlcli.config import ConfigError, validate

    monkeypatch.setattr(a2c, "ACTION_SPACES", spaces)
    message = (f"algo=a2c needs a {spaces[0]} action space but env.id='{env}' has a {space} one "
               f"(allowed with algo=a2c: environments with {spaces[0]} actions)")
    with pytest.raises(ConfigError) as err:
        validate(compose(["algo=a2c", f"env={env}"]))
    assert str(err.value) == message
    validate(compose(["algo=a2c", "env=Pendulum-v1" if space == "discrete" else "env=CartPole-v1"]))
