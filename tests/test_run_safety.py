"""Runs that survive what users do to them: a resumed run reproduces leg by leg, a damaged
newest checkpoint falls back to the one before it, and runs started together never share a
directory."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rlcli import checkpoint, paths
from rlcli.errors import ConfigError
from rlcli.logger import read_metrics

# 20 env steps per update (A2C: 4 envs x 5 steps); records every 400 steps, checkpoints every 400
SMALL = ["algo=a2c", "env=CartPole-v1", "num_envs=4", "log_interval=400", "checkpoint_interval=400",
         "eval_episodes=2", "logger=quiet"]


def _records(run: Path) -> list[tuple]:
    return [(r["update"], r["seed_index"]) for r in read_metrics(run)]


@pytest.mark.slow
def test_train_resume_to_a_larger_budget_then_reproduce_is_exact(tmp_path, cli):
    """The first leg's final evaluation (at 1200 env steps) stays in the metrics of a run
    resumed to 2000; a straight 2000-step run has none there. Reproduce replays both legs and
    matches every value bit for bit."""
    run = tmp_path / "run"
    assert cli(["train", *SMALL, "total_steps=1200", f"hydra.run.dir={run}"], tmp_path).returncode == 0
    resumed = cli(["resume", f"run={run}", "total_steps=2000"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    evals = [r["update"] for r in read_metrics(run) if "eval/return_mean" in r]
    assert evals == [60, 100]  # the end of each leg: 1200 / 20 and 2000 / 20 updates
    legs = json.loads((run / "legs.json").read_text())["legs"]
    assert [(leg["start_update"], leg["config"]["total_steps"]) for leg in legs] == [(0, 1200), (60, 2000)]

    result = cli(["reproduce", f"run={run}"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in its 2 legs (resumed at updates 60)" in result.stderr
    report = json.loads((tmp_path / "run-reproduced" / "reproduce.json").read_text())
    assert report["match"] and report["tolerance"] == "exact"
    assert report["records"] == len(read_metrics(run)) == 5  # 400 ... 2000 env steps
    assert _records(tmp_path / "run-reproduced") == _records(run)


@pytest.mark.slow
def test_a_run_stopped_and_resumed_reproduces_through_its_stop(tmp_path, cli):
    """A leg that ended at a checkpoint before its budget (a stop, a kill) is replayed up to
    that checkpoint: `train(stop_at_update=...)`, then resumed, as the original was."""
    from conftest import compose
    from rlcli import train as training

    run = tmp_path / "run"
    run.mkdir()
    cfg = compose([*SMALL, "total_steps=2000", "eval_interval=800"])
    assert training.train(cfg, run, stop_at_update=40) is None  # stopped at 800 env steps
    assert checkpoint.steps(run / "checkpoints")[-1] == 800 and not (run / "summary.json").exists()
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(json.dumps(training.config_container(cfg)))
    assert cli(["resume", f"run={run}"], tmp_path).returncode == 0
    result = cli(["reproduce", f"run={run}"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in its 2 legs (resumed at updates 40)" in result.stderr


def _damage_data(step_dir: Path) -> None:
    files = [f for f in (step_dir / "state").rglob("d/*") if f.is_file()]
    assert files
    for data in files:
        data.write_bytes(os.urandom(data.stat().st_size))


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, cli):
    run = tmp_path / "run"
    assert cli(["train", *SMALL, "total_steps=1600", f"hydra.run.dir={run}"], tmp_path).returncode == 0
    assert checkpoint.steps(run / "checkpoints") == [800, 1200, 1600]
    _damage_data(run / "checkpoints" / "1600")

    evaluated = cli(["eval", f"run={run}"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    notice = [line for line in evaluated.stderr.splitlines() if "cannot be read" in line]
    assert notice == [f"rlcli: the checkpoint at env step 1600 in {run / 'checkpoints'} cannot be read "
                      "(its array data of 1600); using the one at env step 1200"]
    assert json.loads((run / "eval.json").read_text())["checkpoint"] == 1200

    resumed = cli(["resume", f"run={run}", "total_steps=2000"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout + resumed.stderr
    assert "the checkpoint at env step 1600" in out and "using the one at env step 1200" in out
    for internal in ("Traceback", "pybind11", "Exception", "tensorstore"):
        assert internal not in out
    # one more interval lost at most: training went on from 1200, and wrote 1600 again
    assert "resuming from the checkpoint at env step 1200" in out
    assert checkpoint.steps(run / "checkpoints")[-2:] == [1600, 2000]
    assert (run / "checkpoints" / "1600.damaged").is_dir()
    assert _records(run) == [(u, 0) for u in (20, 40, 60, 80, 100)]  # no gap, no duplicate


@pytest.mark.extended
def test_a_damaged_record_and_every_checkpoint_damaged(tmp_path, cli):
    """A checkpoint whose JSON record is garbage is skipped too; when none can be read, eval
    exits 2 with one line that names the newest."""
    run = tmp_path / "run"
    assert cli(["train", *SMALL, "total_steps=800", f"hydra.run.dir={run}"], tmp_path).returncode == 0
    assert checkpoint.steps(run / "checkpoints") == [400, 800]
    (run / "checkpoints" / "800" / "meta" / "metadata").write_text("{not json")
    ok = cli(["eval", f"run={run}", "episodes=1"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "(its record (meta/metadata) of 800); using the one at env step 400" in ok.stderr
    _damage_data(run / "checkpoints" / "400")
    bad = cli(["eval", f"run={run}", "episodes=1"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"rlcli eval: error: no checkpoint in {run / 'checkpoints'} can be read (the newest: checkpoint "
        f"{run / 'checkpoints' / '800'} is damaged: its record (meta/metadata) cannot be read)"]


@pytest.mark.extended
def test_two_runs_started_together_get_two_complete_directories(tmp_path):
    """Every default run-directory name of the next two minutes is taken beforehand (a
    directory holding one file), so two processes started at once must both take suffixed names
    (their race for a free name is the one of `paths.claim_dir`, whose many contenders
    test_claim_dir_gives_each_caller_its_own_directory holds); each ends up with a complete
    directory of its own, and the taken ones are left alone."""
    taken = []
    now = time.time()
    for second in range(120):
        stamp = time.localtime(now + second)
        name = tmp_path / "outputs" / time.strftime("%Y-%m-%d", stamp) / (
            time.strftime("%H-%M-%S", stamp) + "-a2c-CartPole-v1")
        name.mkdir(parents=True, exist_ok=True)
        (name / "someone-else.txt").write_text("x")
        taken.append(name)
    from conftest import rlcli_executable

    args = [rlcli_executable(), "train", *SMALL, "total_steps=400", "threads=1"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.communicate(timeout=600)[1], p.returncode)[::-1] for p in procs]
    assert all(code == 0 for code, _ in results), results
    runs = sorted(p.parent for p in (tmp_path / "outputs").rglob("summary.json"))
    # two directories, each a taken name with a suffix (both processes may have read the same
    # second, -1 and -2 of one name, or two seconds, -1 of each)
    assert len(runs) == 2 and all(run.parent / run.name.rsplit("-", 1)[0] in taken for run in runs), runs
    assert all(run.name.rsplit("-", 1)[1] in ("1", "2") for run in runs), runs
    for run in runs:
        assert sorted(p.name for p in run.iterdir()) == [
            ".hydra", "checkpoints", "curve.png", "legs.json", "metrics.jsonl", "summary.json", "tb", "train.log"]
        assert _records(run) == [(20, 0)]
        assert checkpoint.steps(run / "checkpoints") == [400]
    for name in taken:
        assert [p.name for p in name.iterdir()] == ["someone-else.txt"]


def test_claim_dir_gives_each_caller_its_own_directory(tmp_path):
    """Sixteen threads claim the same name at once: sixteen distinct directories."""
    got, barrier = [], threading.Barrier(16)

    def claim():
        barrier.wait()
        got.append(paths.claim_dir("out", tmp_path / "run", named_by_user=False))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == sorted(["run"] + [f"run-{i}" for i in range(1, 16)])


def test_a_named_directory_must_be_new_or_empty(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    assert paths.claim_dir("out", tmp_path / "empty", named_by_user=True) == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    try:
        paths.claim_dir("out", tmp_path / "full", named_by_user=True)
        raise AssertionError("claimed a non-empty directory")
    except ConfigError as err:
        assert str(err) == f"out={tmp_path / 'full'} already exists and is not empty (allowed: a new or empty directory)"
    result = cli(["train", f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"rlcli train: error: hydra.run.dir={tmp_path / 'full'} already exists and is "
                                     "not empty (allowed: a new or empty directory)")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["f"]


@pytest.mark.extended
def test_reproduce_twice_gets_a_second_directory(tmp_path, cli):
    run = tmp_path / "run"
    assert cli(["train", *SMALL, "total_steps=400", f"hydra.run.dir={run}"], tmp_path).returncode == 0
    for name in ("run-reproduced", "run-reproduced-1"):
        result = cli(["reproduce", f"run={run}"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads((tmp_path / name / "reproduce.json").read_text())["match"]


def test_a_checkpoint_written_before_the_optional_fields_restores(tmp_path):
    """Checkpoints written before LearnerState.hparams and EnvCarry's recurrent fields existed
    (a learner of three fields) restore into today's state: the arrays from the checkpoint, the
    traced hyperparameters from the fresh state (the config), the None fields as None."""
    from typing import Any, NamedTuple

    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp

    from rlcli.rollout import EnvCarry
    from rlcli.types import LearnerState

    class OldLearner(NamedTuple):
        params: Any
        opt_state: Any
        update_step: Any

    class OldWorkers(NamedTuple):
        env_state: Any
        obs: Any
        key: Any
        episodes: Any

    old = {"learner": OldLearner({"w": np.arange(3.0)}, (np.ones(2),), np.int32(7)),
           "workers": OldWorkers(np.zeros(2), np.full(2, 5.0), np.array([1, 2], np.uint32), np.ones(1))}
    with checkpoint.manager(tmp_path, 3) as mngr:
        mngr.save(100, args=ocp.args.Composite(state=ocp.args.StandardSave(old), meta=ocp.args.JsonSave(
            {"env_steps": 100, "update": 1})))
    like = {"learner": LearnerState({"w": jnp.zeros(3)}, (jnp.zeros(2),), jnp.int32(0),
                                    {"ent_coef": jnp.float32(0.25)}),
            "workers": EnvCarry(jnp.ones(2), jnp.zeros(2), jnp.zeros(2, jnp.uint32), jnp.zeros(1))}
    state, meta = checkpoint.restore(tmp_path, like)
    assert meta["update"] == 1 and isinstance(state["learner"], LearnerState)
    np.testing.assert_array_equal(state["learner"].params["w"], [0.0, 1.0, 2.0])
    assert int(state["learner"].update_step) == 7 and float(state["learner"].hparams["ent_coef"]) == 0.25
    assert isinstance(state["workers"], EnvCarry) and state["workers"].policy_state is None
    np.testing.assert_array_equal(state["workers"].obs, [5.0, 5.0])
    # and what rlcli saves today has that same tree
    assert checkpoint.storable(like).keys() == old.keys()
    assert set(checkpoint.storable(like)["learner"]) == set(OldLearner._fields)
