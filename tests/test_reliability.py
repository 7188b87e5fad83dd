"""Reliability through the real command line: bad input, kills, signals, divergence, write
errors, failing sweep jobs, resume."""

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import rlcli_executable, run_cli

VOLATILE = ("wall_time", "perf/steps_per_s")


def records(run: Path) -> list[dict]:
    from rlcli.logger import read_metrics

    return read_metrics(run)


def numbers(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def snapshot(directory: Path) -> dict:
    """Every file under `directory` with its size and modification time."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


def checkpoint_steps(run: Path) -> list[int]:
    from rlcli import checkpoint

    return checkpoint.steps(run / "checkpoints")


SHORT = ["total_steps=2000", "log_interval=400", "checkpoint_interval=800", "eval_episodes=2",
         "logger=quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A short finished jax run (checkpoints at 800, 1600, 2000)."""
    root = tmp_path_factory.mktemp("finished")
    result = run_cli(["train", *SHORT, f"hydra.run.dir={root / 'run'}"], root)
    assert result.returncode == 0, result.stderr
    return root / "run"


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------

TRAIN_CASES = [
    # (overrides, text the line must contain: the key and value, and what is allowed)
    (["algo.gamma=1.5"], ["algo.gamma=1.5", "[0, 1]"]),
    (["algo.gamma=-0.1"], ["algo.gamma=-0.1", "[0, 1]"]),
    (["estimator=gae", "estimator.lambda=-0.1"], ["estimator.lambda=-0.1", "[0, 1]"]),
    (["estimator=gae", "estimator.lambda=1.5"], ["estimator.lambda=1.5", "[0, 1]"]),
    (["estimator=gae", "estimator.lambda=abc"], ["estimator.lambda='abc'", "[0, 1]"]),
    (["algo.learning_rate=0"], ["algo.learning_rate=0", "> 0"]),
    (["algo.learning_rate=-1"], ["algo.learning_rate=-1", "> 0"]),
    (["algo.learning_rate=1e-3x"], ["algo.learning_rate='1e-3x'", "> 0"]),
    (["algo.max_grad_norm=0"], ["algo.max_grad_norm=0", "> 0"]),
    (["algo.rmsprop_decay=1.0"], ["algo.rmsprop_decay=1.0", "[0, 1)"]),
    (["algo.vf_coef=-0.5"], ["algo.vf_coef=-0.5", ">= 0"]),
    (["algo.num_steps=0"], ["algo.num_steps=0", ">= 1"]),
    (["algo.optimizer=adagrad"], ["algo.optimizer='adagrad'", "adam, rmsprop, sgd"]),
    (["num_envs=0"], ["num_envs=0", ">= 1"]),
    (["num_envs=1.5"], ["num_envs=1.5", "integer"]),
    (["num_seeds=0"], ["num_seeds=0", ">= 1"]),
    (["seed=-1"], ["seed=-1", ">= 0"]),
    (["seed=abc"], ["seed='abc'", "integer"]),
    (["total_steps=0"], ["total_steps=0", ">= 1"]),
    (["total_steps=39"], ["total_steps=39", "one update", "8 x 5 = 40"]),
    (["estimator.n=0"], ["estimator.n=0", ">= 1"]),
    (["eval_episodes=0"], ["eval_episodes=0", ">= 1"]),
    (["eval_interval=-5"], ["eval_interval=-5", "null or an integer"]),
    (["eval_deterministic=sometimes"], ["eval_deterministic='sometimes'", "true or false"]),
    (["log_interval=0"], ["log_interval=0", ">= 1"]),
    (["checkpoint_interval=-5"], ["checkpoint_interval=-5", ">= 1"]),
    (["checkpoint_keep=0"], ["checkpoint_keep=0", ">= 1"]),
    (["network.hidden_sizes=[64,0]"], ["network.hidden_sizes=[64,0]", "integers >= 1"]),
    (["network.hidden_sizes=5"], ["network.hidden_sizes=5", "list of integers"]),
    (["network.activation=swish"], ["network.activation='swish'", "tanh"]),
    (["network.shared=maybe"], ["network.shared='maybe'", "true or false"]),
    (["logger.progress=fancy"], ["logger.progress='fancy'", "bar"]),
    (["debug.nan_check=maybe"], ["debug.nan_check='maybe'", "true or false"]),
    (["env.backend=cuda"], ["env.backend='cuda'", "auto, jax, gymnasium"]),
    (["env.vectorization=threads"], ["env.vectorization='threads'", "auto, sync, async, vector"]),
    (["env=Acrobot-v1", "env.backend=gymnasium", "env.vectorization=vector"],
     ["env.vectorization='vector'", "env.id='Acrobot-v1'", "auto, sync, async", "CartPole-v1"]),
    (["env.id=CartPol-v1"], ["env.id='CartPol-v1'", "CartPole-v1"]),
    (["env=gymnasium", "env.id=Acrobot-v2"], ["env.id='Acrobot-v2'", "Acrobot-v1"]),
    (["env.backend=jax", "env.id=LunarLander-v3"], ["env.backend=jax", "CartPole-v1"]),
    (["env=CartPol-v1"], ["env=CartPol-v1", "CartPole-v1, HalfCheetah-v5", "did you mean env=CartPole-v1"]),
    (["algo=nope"], ["algo=nope", "one of a2c"]),
    (["algo.learning_rat=0.1"], ["algo.learning_rat", "not a config key", "algo.learning_rate"]),
    (["algo.gamma"], ["malformed override 'algo.gamma'", "key=value"]),
    (["algo.learning_rate=[1,"], ["malformed override 'algo.learning_rate=[1,'", "key=value"]),
    (["hydra.run.dir=/dev/null/run"], ["hydra.run.dir=/dev/null/run", "writable directory"]),
    (["algo=ppo", "algo.num_minibatches=3"], ["algo.num_minibatches=3", "does not divide", "8 x 32 = 256"]),
    (["algo=ppo", "algo.clip_coef=0"], ["algo.clip_coef=0", "> 0"]),
    (["algo=ppo", "algo.target_kl=-1"], ["algo.target_kl=-1", "null or a number > 0"]),
    (["algo=ppo", "algo.update_epochs=0"], ["algo.update_epochs=0", ">= 1"]),
    (["estimator=none"], ["estimator=none does not fit algo=a2c", "td, nstep, gae"]),
    (["normalize.obs=maybe"], ["normalize.obs='maybe'", "true or false"]),
    (["normalize.clip_obs=0"], ["normalize.clip_obs=0", "> 0"]),
    (["algo=sac", "normalize.obs=true"], ["normalize.obs=true", "algo=sac", "normalize.obs=false"]),
    (["algo=sac", "algo.use_sde=true"], ["algo.use_sde=true", "continuous action space", "algo.use_sde=false"]),
    (["algo=sac", "estimator=gae"], ["estimator=gae does not fit algo=sac", "estimator=none"]),
    # a sweep: every job is composed and validated before the first one starts
    (["-m", "algo=a2c,ppo", "algo.learning_rate=0.1,-1"],
     ["job 1 of 4 (algo=a2c algo.learning_rate=-1)", "algo.learning_rate=-1", "> 0"]),
    (["-m", "algo=a2c,ppx", "seed=3"], ["job 1 of 2 (algo=ppx seed=3)", "did you mean algo=ppo"]),
    (["-m", "seed=0,1", "hydra.sweep.dir=/dev/null/sweep"], ["hydra.sweep.dir=/dev/null/sweep", "writable directory"]),
    # an Optuna sweep: the overrides its trials share are checked
    (["-m", "+sweep=ppo_CartPole-v1", "algo.learning_rat=3"], ["algo.learning_rat is not a config key",
                                                            "did you mean algo.learning_rate"]),
]

RESUME_CASES = [
    # (arguments with {run}: the finished run, {copy}: a prepared copy of it; text the line must contain)
    (["run={tmp}/nowhere"], "finished", ["run=", "nowhere does not exist", "run directory"]),
    ([], "finished", ["run= is required", "run=<run dir"]),
    (["{run}"], "finished", ["malformed argument", "(allowed: run= and changes of the saved config"]),
    (["run={tmp}"], "finished", ["has no .hydra/config.yaml", "run directory"]),
    (["run={copy}"], "no_checkpoint", ["has no checkpoint", "checkpoints/"]),
    (["run={run}", "network.hidden_sizes=[32]"], "finished",
     ["network.hidden_sizes=[32] (the run has [64,64])", "does not fit the checkpoint", "network"]),
    (["run={copy}"], "corrupted", ["no checkpoint in", "can be read", "2000 is damaged: its array data cannot be read"]),
    (["run={run}", "algo.gamma=2"], "finished", ["algo.gamma=2", "[0, 1]"]),
    (["run={run}", "algo.gama=0.9"], "finished", ["algo.gama is not a config key", "algo.gamma"]),
    (["run={run}", "total_steps=400"], "finished", ["total_steps=400", "2000 env steps already trained", ">= 2000"]),
]


def _prepare(kind: str, finished: Path, tmp: Path) -> Path:
    copy = tmp / "copy"
    shutil.copytree(finished, copy)
    if kind == "no_checkpoint":
        shutil.rmtree(copy / "checkpoints")
    elif kind == "corrupted":  # every checkpoint (a damaged newest one alone is skipped: test_run_safety.py)
        for data in (copy / "checkpoints").rglob("state/**/d/*"):
            data.write_bytes(os.urandom(data.stat().st_size))
    return copy


@pytest.fixture(scope="module")
def bad_input_results(finished_run, tmp_path_factory):
    """Every bad input run through the real CLI, two at a time."""
    jobs = []
    for i, (overrides, expected) in enumerate(TRAIN_CASES):
        cwd = tmp_path_factory.mktemp(f"train{i}")
        jobs.append((("train", *overrides), cwd, None, expected))
    for i, (args, kind, expected) in enumerate(RESUME_CASES):
        tmp = tmp_path_factory.mktemp(f"resume{i}")
        copy = _prepare(kind, finished_run, tmp) if kind != "finished" else None
        args = [a.format(run=finished_run, copy=copy, tmp=tmp) for a in args]
        jobs.append((("resume", *args), tmp, copy or finished_run, expected))
    before = snapshot(finished_run)

    def run(job):
        args, cwd, watched, expected = job
        watched_before = snapshot(watched) if watched else None
        result = run_cli(list(args), cwd)
        return args, cwd, watched, watched_before, expected, result

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, jobs))
    assert snapshot(finished_run) == before  # no failed resume touched the run
    return results


CASE_IDS = [" ".join(c[0]) for c in TRAIN_CASES] + [" ".join(c[0]) or "no run=" for c in RESUME_CASES]


@pytest.mark.parametrize("index", range(len(TRAIN_CASES) + len(RESUME_CASES)), ids=CASE_IDS)
def test_bad_input_one_line_exit_2_nothing_written(bad_input_results, index):
    args, cwd, watched, watched_before, expected, result = bad_input_results[index]
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rlcli {args[0]}: error: ")
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in result.stderr + result.stdout
    if watched is None:
        assert list(cwd.iterdir()) == []  # no run directory, nothing at all
    else:
        assert snapshot(watched) == watched_before


def test_bad_input_table_size():
    assert len(TRAIN_CASES) + len(RESUME_CASES) >= 30


# ---- resume -----------------------------------------------------------------------------------


def test_kill_9_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    """10 SIGKILLs at random moments (during start-up, training and checkpoint writes); each
    `rlcli resume` succeeds from the last complete checkpoint, loses at most one checkpoint
    interval, and the finished run's metrics equal those of a run never interrupted."""
    config = ["total_steps=60000", "log_interval=400", "checkpoint_interval=800", "eval_episodes=2",
              "eval_interval=4000", "logger=quiet"]
    interval_updates = 800 // 40
    reference = tmp_path / "reference"
    assert run_cli(["train", *config, f"hydra.run.dir={reference}"], tmp_path).returncode == 0

    run = tmp_path / "run"
    rng = random.Random(20261121)
    kills, during_write, lost = 0, 0, []
    command = [rlcli_executable(), "train", *config, f"hydra.run.dir={run}"]
    while kills < 10:
        start_records = len(records(run)) if (run / "metrics.jsonl").exists() else 0
        launched = time.time()
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills == 0 or rng.random() < 0.7:
            # wait until it trains (and, the first time, has a checkpoint), then a random moment
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if (run / "metrics.jsonl").exists() and len(records(run)) > start_records and (
                        kills > 0 or checkpoint_steps(run)):
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            time.sleep(rng.uniform(0.5, 6.0))  # during start-up or compilation
        if proc.poll() is not None:
            break  # it finished before the kill
        proc.kill()
        proc.wait()
        kills += 1
        if (run / "checkpoints").is_dir():  # a temporary directory this process left: killed mid-write
            during_write += any(".orbax-checkpoint-tmp" in p.name and p.stat().st_mtime >= launched
                                for p in (run / "checkpoints").iterdir())
        logged = max((r["update"] for r in records(run)), default=0) if (run / "metrics.jsonl").exists() else 0
        restored = max(checkpoint_steps(run)) // 40
        lost.append(logged - restored)
        assert logged - restored <= interval_updates, (logged, restored)
        command = [rlcli_executable(), "resume", f"run={run}"]
    assert kills == 10
    final = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert numbers(records(run)) == numbers(records(reference))  # bit for bit on CPU
    assert max(lost) <= interval_updates
    print(f"kills {kills}, during a checkpoint write {during_write}, updates lost at most {max(lost)}")


@pytest.mark.parametrize("signum, sweep", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "SIGINT in a sweep"])
def test_signal_writes_a_checkpoint_and_says_how_to_resume(tmp_path, signum, sweep):
    """In a sweep the running job checkpoints, the sweep stops and its summary lists the jobs
    so far (the interrupted one as incomplete)."""
    run = tmp_path / "sweep" / "0" if sweep else tmp_path / "run"
    where = ["-m", "seed=0,1", f"hydra.sweep.dir={run.parent}"] if sweep else [f"hydra.run.dir={run}"]
    proc = subprocess.Popen([rlcli_executable(), "train", "total_steps=2000000", "log_interval=2000",
                             "logger=quiet", *where], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and records(run)):
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(signum).name}" in last and f"rlcli resume run={run}" in last
    steps = checkpoint_steps(run)
    assert steps and steps[-1] == records(run)[-1]["env_steps"] < 2_000_000
    if sweep:
        import csv

        rows = list(csv.DictReader(open(run.parent / "sweep_summary.csv")))
        assert [(r["job"], r["status"]) for r in rows] == [("0", "incomplete")]
        assert "1 job(s), 1 not ok" in stdout


def test_gymnasium_resume_continues_the_metrics_without_gaps_or_duplicates(tmp_path):
    run = tmp_path / "run"
    first = run_cli(["train", *SHORT, "env.backend=gymnasium", f"hydra.run.dir={run}"], tmp_path)
    assert first.returncode == 0, first.stderr
    # a torn last line, as a kill in the middle of a write leaves it
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"seed_index": 0, "upd')
    again = run_cli(["resume", f"run={run}", "total_steps=3200"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["env_steps"] for r in records(run)] == [400, 800, 1200, 1600, 2000, 2400, 2800, 3200]
    assert "total_steps: 3200" in (run / ".hydra" / "config.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_update"] == 50 and summary["total_steps"] == 3200
    assert checkpoint_steps(run)[-1] == 3200
    done = run_cli(["resume", f"run={run}"], tmp_path)
    assert done.returncode == 0 and "already complete" in done.stdout


# ---- divergence, write errors, sweeps -------------------------------------------------------------


def test_non_finite_loss_stops_at_the_first_bad_update_and_keeps_the_checkpoint(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    result = run_cli(["resume", f"run={run}", "total_steps=4000", "algo.learning_rate=1e30"], tmp_path)
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    # the checkpoint at update 50 holds good params; the first update with lr 1e30 moves them
    # to ~1e30, and the next one's value loss overflows
    assert "training diverged: " in line and "loss/value" in line and "at update 52 (env step 2080, seed 0)" in line
    assert "the last good checkpoint is at env step 2000" in line
    assert checkpoint_steps(run) == [800, 1600, 2000]
    assert "Traceback" not in result.stderr

    traced = run_cli(["train", "algo.learning_rate=1e30", "total_steps=2000", "logger=quiet",
                      "debug.nan_check=true", f"hydra.run.dir={tmp_path / 'traced'}"], tmp_path)
    assert traced.returncode == 3
    assert ("debug.nan_check: the first NaN was produced by the primitive 'div' at "
            "rlcli/losses.py") in traced.stderr.strip().splitlines()[-1]


def test_write_error_while_saving_keeps_the_previous_checkpoint(finished_run, tmp_path):
    """A real write error from the OS: files may not grow past 20 kB (RLIMIT_FSIZE), which the
    checkpoint's data files exceed and the metrics do not."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run([rlcli_executable(), "resume", f"run={run}", "total_steps=4000"], cwd=tmp_path,
                            capture_output=True, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("rlcli resume: error: cannot write the checkpoint at env step 2400")
    assert "File too large" in line and "the last good checkpoint is at env step 2000" in line
    assert checkpoint_steps(run) == [800, 1600, 2000]
    again = run_cli(["resume", f"run={run}", "total_steps=4000"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["env_steps"] for r in records(run)][-3:] == [3200, 3600, 4000]


def test_sweep_with_a_failing_job_finishes_the_others_and_lists_the_failure(tmp_path):
    """Every job's config is valid (a bad one refuses the whole sweep: TRAIN_CASES); the
    middle job diverges while running."""
    result = run_cli(["train", "-m", "algo.learning_rate=0.0007,1e30,0.001", *SHORT,
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 1
    import csv

    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep_summary.csv")))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "training diverged: loss/total" in rows[1]["error"]
    assert float(rows[0]["final_return"]) > 0 and float(rows[2]["wall_time_s"]) > 0
    assert "3 job(s), 1 not ok" in result.stdout
