"""`rlcli reproduce` and `rlcli list` through the real command line."""

import json

import pytest

from rlcli.commands.reproduce import compare


@pytest.fixture
def run(shared_run):
    """The session's shared run (tests/conftest.py): 2 seeds x 5 records (400 ... 2000 env steps)."""
    return shared_run


@pytest.mark.slow
def test_reproduce_matches_bit_for_bit_on_cpu(run, cli, tmp_path):
    out = tmp_path / "reproduced"
    result = cli(["reproduce", f"run={run}", f"out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "reproduce.json").read_text())
    original = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 2 seeds x 5 records (400, 800, 1200, 1600, 2000 env steps), every value compared
    assert report["match"] and report["tolerance"] == "exact" and report["records"] == 10 == len(original)
    assert report["values"] == sum(len(r) - 2 for r in original)  # all but the two timings
    assert report["original_git_commit"] == report["reproduced_git_commit"]
    assert "bit for bit: 10 records" in result.stdout
    # the new directory is a run directory of its own: it can be resumed, evaluated, reproduced
    assert (out / ".hydra" / "config.yaml").read_text() == (run / ".hydra" / "config.yaml").read_text()
    assert (out / "summary.json").is_file() and (out / "checkpoints").is_dir()


@pytest.mark.slow
def test_a_reproduce_process_shards_the_seeds_as_the_run_did(run, tmp_path):
    """A real `rlcli reproduce` process, in an environment without the test session's device
    flags: it must give itself one CPU device per core (NPROC=2 here, as the run's two devices)
    before JAX starts, so that the run's two seeds are sharded as when they trained; on one
    device the vmapped seeds round differently and the match is not bit for bit."""
    import os

    from conftest import run_cli

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RLCLI_HOST_DEVICES", "RLCLI_THREADS")}
    env["NPROC"] = "2"
    out = tmp_path / "reproduced"
    result = run_cli(["reproduce", f"run={run}", f"out={out}"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["seed_devices"] == 2
    assert "the metrics match bit for bit: 10 records" in result.stdout


@pytest.mark.slow
def test_reproduce_reports_the_first_difference(run, cli, tmp_path):
    """A run whose metrics were changed after the fact no longer reproduces: exit 1, and the
    message names the update, the seed and the key; rtol= accepts a small difference."""
    import shutil

    lines = (run / "metrics.jsonl").read_text().splitlines()
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    record = json.loads(lines[5])
    record["loss/value"] *= 1 + 1e-6
    lines[5] = json.dumps(record)
    (changed / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = cli(["reproduce", f"run={changed}"], tmp_path)
    assert result.returncode == 1, result.stderr
    where = f"first at update {record['update']}, seed index {record['seed_index']}, loss/value"
    assert where in result.stdout
    report = json.loads((tmp_path / "changed-reproduced" / "reproduce.json").read_text())
    assert not report["match"] and report["first_difference"]["key"] == "loss/value"
    # the same comparison within a tolerance
    ours = [json.loads(line) for line in lines]
    theirs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert compare(ours, theirs, rtol=1e-4)["match"]
    assert not compare(ours, theirs, rtol=1e-8)["match"]
    assert not compare(ours, theirs[:-1], rtol=None)["match"]  # a missing record


@pytest.mark.parametrize("args, message", [
    (["run=/nonexistent/run"], "run=/nonexistent/run does not exist"),
    (["run={run}", "rtol=-1"], "rtol=-1 is not allowed (allowed: a number > 0)"),
    (["run={run}", "seed=3"], "seed=3 is not an argument of rlcli reproduce (allowed: run=, out=, rtol=)"),
    (["run={run}", "out={run}"], "already exists and is not empty"),
])
def test_reproduce_bad_input(run, cli, tmp_path, args, message):
    before = sorted(p.name for p in run.parent.iterdir())
    result = cli(["reproduce", *[a.format(run=run) for a in args]], tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == before


def test_list_names_every_choice_with_its_seed_reference(cli, tmp_path):
    from rlcli import schema

    result = cli(["list"], tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("algo", "estimator", "env"):
        for name in schema.choices(group):
            assert f"\n  {name} " in result.stdout
    assert "generalized advantage estimation (000 eq. 4.2.10)" in result.stdout
    assert "obs (4,), actions Discrete(2), 500 steps" in result.stdout  # CartPole-v1
    assert "obs (3,), actions Box(1), 200 steps" in result.stdout  # Pendulum-v1
    every = cli(["list", "envs", "--all"], tmp_path)
    assert "FrozenLake-v1" in every.stdout and "FrozenLake-v1" not in result.stdout
    bad = cli(["list", "agents"], tmp_path)
    assert bad.returncode == 2 and "'agents' is not a section (allowed: algos, estimators, envs" in bad.stderr


@pytest.mark.parametrize("command", ["train", "resume", "eval", "reproduce", "plot", "diagnose", "list"])
def test_every_command_has_help(cli, tmp_path, command):
    result = cli([command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"rlcli {command}" in result.stdout


@pytest.mark.extended
def test_resume_eval_and_reproduce_take_a_multirun_directory(cli, tmp_path):
    """Each command runs on every job of a sweep; a job without a checkpoint is skipped and
    named; reproduce writes job J to <sweep>-reproduced/J, export (with out=) to <out>/J."""
    import shutil

    sweep = tmp_path / "sweep"
    from conftest import SHARED_RUN

    one_seed = [a for a in SHARED_RUN if not a.startswith("num_seeds")]
    result = cli(["train", "-m", "seed=0,1", *one_seed, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    # a job that failed before its first checkpoint
    shutil.copytree(sweep / "1" / ".hydra", sweep / "2" / ".hydra")

    evaluated = cli(["eval", f"run={sweep}"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"job 2 of {sweep} has no checkpoint: skipped" in evaluated.stderr
    for job in ("0", "1"):
        report = json.loads((sweep / job / "eval.json").read_text())
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert report["seeds"][0]["return_mean"] == summary["final_eval"]["return_mean"][0]
    assert not (sweep / "2" / "eval.json").exists()

    exported = cli(["export", f"run={sweep}", "format=npz", f"out={tmp_path / 'policies'}"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert [json.loads((tmp_path / "policies" / job / "export.json").read_text())["seed"] for job in ("0", "1")] == [0, 1]
    assert not (tmp_path / "policies" / "2").exists()

    resumed = cli(["resume", f"run={sweep}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (resumed.stdout + resumed.stderr).count("already complete") == 2

    reproduced = cli(["reproduce", f"run={sweep}"], tmp_path)
    assert reproduced.returncode == 0, reproduced.stderr
    for job in ("0", "1"):
        assert json.loads((tmp_path / "sweep-reproduced" / job / "reproduce.json").read_text())["match"]

    bad = cli(["eval", f"run={sweep}", "episodes=0"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.count("rlcli eval: error: episodes=0 is not allowed") == 1
