"""Reliability through the real command line: bad input, kills, signals, divergence, write
errors, failing sweep jobs, resume."""

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import main_in_process, rlcli_executable, run_cli

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
    (["env=CartPol-v1"], ["env=CartPol-v1", "Breakout-MinAtar, CartPole-v1, Freeway-MinAtar",
                          "did you mean env=CartPole-v1"]),
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


# a few cases, one of each kind, run as real `rlcli` processes: exit code, stderr and nothing
# written as a user sees them; the others run through rlcli.cli.main in this process
SUBPROCESS_CASES = {("train", "algo.gamma=1.5"), ("train", "-m", "algo=a2c,ppo", "algo.learning_rate=0.1,-1"),
                    ("resume", "run={run}", "algo.gamma=2"), ("resume", "run={copy}", "corrupted")}
CASES = ([("train", overrides, None, expected) for overrides, expected in TRAIN_CASES]
         + [("resume", args, kind, expected) for args, kind, expected in RESUME_CASES])
CASE_IDS = [" ".join(c[0]) for c in TRAIN_CASES] + [" ".join(c[0]) or "no run=" for c in RESUME_CASES]
# (a renamed case would otherwise quietly run in process only)
assert SUBPROCESS_CASES <= {(c[0], *c[1]) for c in CASES} | {(c[0], *c[1], c[2]) for c in CASES}


def _in_a_process(case) -> bool:
    command, args, kind, _ = case
    return (command, *args) in SUBPROCESS_CASES or (command, *args, kind) in SUBPROCESS_CASES


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if _in_a_process(c) else c for c in CASES],
                         ids=CASE_IDS)
def test_bad_input_one_line_exit_2_nothing_written(finished_run, tmp_path, monkeypatch, capsys, case):
    command, args, kind, expected = case
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    copy = _prepare(kind, finished_run, tmp_path) if kind not in (None, "finished") else None
    watched = None if command == "train" else copy or finished_run
    argv = [command, *(a.format(run=finished_run, copy=copy, tmp=cwd) for a in args)]
    watched_before = snapshot(watched) if watched else None
    result = run_cli(argv, cwd) if _in_a_process(case) else main_in_process(argv, cwd, monkeypatch, capsys)
    code, stdout, stderr = result.returncode, result.stdout, result.stderr
    assert code == 2, (argv, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"rlcli {command}: error: ")
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in stderr + stdout
    if watched is None:
        assert list(cwd.iterdir()) == []  # no run directory, nothing at all
    else:
        assert snapshot(watched) == watched_before


def documented_errors() -> list[tuple[list[str], str]]:
    """The bad-input examples of docs/commands.md: a `$ rlcli ...` line followed by its error line."""
    import shlex

    from conftest import REPO

    lines = (REPO / "docs" / "commands.md").read_text().splitlines()
    return [(shlex.split(command[len("$ rlcli "):]), answer) for command, answer in zip(lines, lines[1:])
            if command.startswith("$ rlcli ") and answer.startswith("rlcli ") and ": error: " in answer]


@pytest.mark.slow
@pytest.mark.parametrize("argv, documented", documented_errors(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_the_documented_error_lines_are_what_rlcli_prints(tmp_path, monkeypatch, capsys, shared_run, argv, documented):
    """`outputs/x` in the examples is a run like the session's shared run (2 seeds, checkpoints
    at 800, 1600 and 2000)."""
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "x").symlink_to(shared_run)
    done = main_in_process(argv, tmp_path, monkeypatch, capsys)
    code, stderr = done.returncode, done.stderr
    assert code == 2 and stderr.strip() == documented


def test_the_docs_show_error_examples():
    assert len(documented_errors()) >= 7  # the examples the test above checks were found


# ---- resume -----------------------------------------------------------------------------------


def _frozen(proc) -> bool:
    """SIGSTOP `proc` and wait until it is stopped; False if it exited first."""
    os.kill(proc.pid, signal.SIGSTOP)
    stat = Path(f"/proc/{proc.pid}/stat")
    while True:
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in "tT":
            return True
        if state in "ZX":
            return False
        time.sleep(0.001)


def kill_when(proc, ready, moment, what: str, timeout: float = 180):
    """Wait until `ready()` (looked at while `proc` runs), then freeze `proc` (SIGSTOP) every
    2 ms of its running and look at its run directory; at the first freeze where `moment()`
    returns something true, SIGKILL it there (still frozen) and return that: what `moment`
    sees is the state the kill leaves. None if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    while time.time() < deadline and proc.poll() is None and _frozen(proc):
        seen = moment()
        if seen:
            proc.kill()
            proc.wait()
            return seen
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert time.time() < deadline, f"no kill {what} in {timeout} s: {proc.stderr_path.read_text()[-2000:]}"
    return None


def temporary_dirs(run: Path) -> list[Path]:
    """The temporary directories of checkpoint writes in progress (or cut off by a kill)."""
    ckpt = run / "checkpoints"
    return [p for p in ckpt.iterdir() if ".orbax-checkpoint-tmp" in p.name] if ckpt.is_dir() else []


def logged_update(run: Path) -> int:
    return max((r["update"] for r in records(run)), default=0) if (run / "metrics.jsonl").exists() else 0


@pytest.mark.slow
def test_kill_9_between_checkpoints_inside_a_write_and_while_compiling_then_resume_matches(
        finished_run, tmp_path, monkeypatch, capsys):
    """Three SIGKILLs, each where it is meant to land: `rlcli train` between checkpoints, a
    resume inside a checkpoint write (RLCLI_TEST_PAUSE_IN_SAVE holds the write open before its
    temporary directory is renamed), a resume while it compiles. Each kill loses at most one
    checkpoint interval, each resume starts from the newest complete checkpoint, and the
    finished run's metrics equal those of the same run never interrupted (finished_run)."""
    per_update = 8 * 5  # num_envs x algo.num_steps
    interval, last = 800 // per_update, 2000  # updates between checkpoints; SHORT's total_steps

    def launch(args, **env):
        with open(tmp_path / "stderr.txt", "w") as stderr:
            proc = subprocess.Popen([rlcli_executable(), *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env={**os.environ, **env})
        proc.stderr_path = tmp_path / "stderr.txt"
        return proc

    def newest_checkpoint() -> int:
        return max(checkpoint_steps(run), default=0)

    def train_log(text: str) -> int:
        return (run / "train.log").read_text().count(text) if (run / "train.log").exists() else 0

    # between checkpoints: one is complete (not yet the last), no write is in progress. The
    # window is a few chunks of 7 ms or so: a run that ends before a freeze lands in it is
    # started again in a new directory
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        proc = launch(["train", *SHORT, f"hydra.run.dir={run}"])
        if kill_when(proc, lambda: checkpoint_steps(run),
                     lambda: 0 < newest_checkpoint() < last and not temporary_dirs(run), "between checkpoints"):
            break
    else:
        pytest.fail("three runs ended before a kill landed between their checkpoints")
    restored = newest_checkpoint()
    assert 0 <= logged_update(run) - restored // per_update <= interval

    # inside a write: the resume's first save is held open; the kill finds its temporary directory
    resume = ["resume", f"run={run}"]
    proc = launch(resume, RLCLI_TEST_PAUSE_IN_SAVE="600")
    cut = kill_when(proc, lambda: temporary_dirs(run), lambda: temporary_dirs(run), "inside a checkpoint write")
    assert train_log(f"resuming from the checkpoint at env step {restored} ") == 1
    assert len(cut) == 1 and cut[0].exists()  # left by the kill
    writing = int(cut[0].name.split(".")[0])
    assert writing == min(restored + 800, last) and writing not in checkpoint_steps(run)
    assert newest_checkpoint() == restored
    assert 0 < logged_update(run) - restored // per_update <= interval

    # while compiling: the resume restored the checkpoint (JAX's compilation cache off, so that
    # compiling takes a while) and has not trained
    compiled = train_log("compiled in")
    proc = launch(resume, JAX_ENABLE_COMPILATION_CACHE="false")
    resumed = f"resuming from the checkpoint at env step {restored} "
    assert kill_when(proc, lambda: train_log(resumed) == 2, lambda: train_log("compiled in") == compiled,
                     "while compiling")
    assert logged_update(run) == restored // per_update  # cut back to the checkpoint; nothing new
    assert newest_checkpoint() == restored

    done = main_in_process(resume, tmp_path, monkeypatch, capsys)
    code, stderr = done.returncode, done.stderr
    assert code == 0, stderr
    assert train_log(f"resuming from the checkpoint at env step {restored} ") == 3
    assert temporary_dirs(run) == []  # the cut-off write was cleaned up
    assert numbers(records(run)) == numbers(records(finished_run))  # bit for bit on CPU


@pytest.mark.slow
@pytest.mark.parametrize("signum, sweep", [(signal.SIGINT, False), pytest.param(signal.SIGTERM, False, marks=pytest.mark.extended),
                                           pytest.param(signal.SIGINT, True, marks=pytest.mark.extended)],
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


@pytest.mark.extended
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_at_once_without_the_checkpoint(tmp_path, signum):
    """The first signal waits for the checkpoint; one held open (RLCLI_TEST_PAUSE_IN_SAVE=600)
    would keep the run for ten minutes. The second stops it at once: exit 128 + signal, one
    line naming it, no traceback, the checkpoint being written not committed."""
    run = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([rlcli_executable(), "train", *SHORT, f"hydra.run.dir={run}"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "RLCLI_TEST_PAUSE_IN_SAVE": "600"})
    deadline = time.time() + 120
    while time.time() < deadline and not temporary_dirs(run):  # inside the first checkpoint write
        time.sleep(0.02)
    assert temporary_dirs(run), (tmp_path / "stderr.txt").read_text()
    proc.send_signal(signum)
    time.sleep(0.5)
    assert proc.poll() is None  # the first signal waits for the checkpoint
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    lines = (tmp_path / "stderr.txt").read_text().strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    # the first signal's notice, written while the save held stderr, still reaches the user
    assert lines[-2].startswith(f"rlcli: {signal.Signals(signum).name} received: stopping after the current chunk")
    assert lines[-1].startswith(f"rlcli train: stopped at once by a second {signal.Signals(signum).name}")
    assert f"rlcli resume run={run}" in lines[-1]
    assert checkpoint_steps(run) == [] and [p.name for p in temporary_dirs(run)] == ["800.orbax-checkpoint-tmp"]


@pytest.mark.extended
def test_gymnasium_resume_continues_the_metrics_without_gaps_or_duplicates(tmp_path, cli):
    run = tmp_path / "run"
    first = cli(["train", *SHORT, "env.backend=gymnasium", f"hydra.run.dir={run}"], tmp_path)
    assert first.returncode == 0, first.stderr
    # a torn last line, as a kill in the middle of a write leaves it
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"seed_index": 0, "upd')
    again = cli(["resume", f"run={run}", "total_steps=3200"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["env_steps"] for r in records(run)] == [400, 800, 1200, 1600, 2000, 2400, 2800, 3200]
    assert "total_steps: 3200" in (run / ".hydra" / "config.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_update"] == 50 and summary["total_steps"] == 3200
    assert checkpoint_steps(run)[-1] == 3200
    done = cli(["resume", f"run={run}"], tmp_path)
    assert done.returncode == 0 and "already complete" in done.stdout


# ---- divergence, write errors, sweeps -------------------------------------------------------------


@pytest.mark.slow
def test_non_finite_loss_stops_at_the_first_bad_update_and_keeps_the_checkpoint(finished_run, tmp_path,
                                                                                 monkeypatch, capsys):
    """The run resumes from its checkpoint at update 50 with learning rate 1e30 and a record per
    update: update 51 takes its loss at the checkpoint's good parameters (finite) and moves them
    to ~1e30; update 52's value loss overflows. The error names update 52 and the metrics its
    record lacks (non-finite values are not logged) and keeps the checkpoints."""
    import inspect
    import math
    import re

    from rlcli import losses

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    per_update, restored = 8 * 5, max(checkpoint_steps(run))
    done = main_in_process(["resume", f"run={run}", "total_steps=4000", "algo.learning_rate=1e30",
                            f"log_interval={per_update}"], tmp_path, monkeypatch, capsys)
    code, stderr = done.returncode, done.stderr
    assert code == 3, stderr
    line = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    first_bad = restored // per_update + 2
    rows = {r["update"]: r for r in records(run)}
    assert max(rows) == first_bad and math.isfinite(rows[first_bad - 1]["loss/value"])
    assert min(u for u, r in rows.items() if "loss/value" not in r) == first_bad
    named = re.search(r"training diverged: (.+) not finite at update", line)
    assert named and "loss/value" in named[1].split(", "), line
    for metric in set(named[1].split(", ")) - {"params"}:  # each is missing from that record only
        assert metric in rows[first_bad - 1] and metric not in rows[first_bad], metric
    assert f"at update {first_bad} (env step {first_bad * per_update}, seed 0)" in line
    assert f"the last good checkpoint is at env step {restored}" in line
    assert checkpoint_steps(run) == [800, 1600, 2000]

    # the first NaN: with parameters of ~1e30 the variances of the explained variance overflow and
    # their ratio is inf / inf, its one division (losses.py; a loss's inf alone is no NaN)
    done = main_in_process(["train", "algo.learning_rate=1e30", "total_steps=2000", "logger=quiet",
                            "debug.nan_check=true", f"hydra.run.dir={tmp_path / 'traced'}"],
                           tmp_path, monkeypatch, capsys)
    code, stderr = done.returncode, done.stderr
    assert code == 3, stderr
    source, first = inspect.getsourcelines(losses.explained_variance)
    division = [first + i for i, text in enumerate(source) if " / " in text and not text.strip().startswith('"')]
    assert len(division) == 1
    assert (f"debug.nan_check: the first NaN was produced by the primitive 'div' at rlcli/losses.py:{division[0]} "
            "(explained_variance)") in stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the rlcli process, forked once JAX runs here
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


@pytest.mark.slow
def test_sweep_with_a_failing_job_finishes_the_others_and_lists_the_failure(tmp_path, cli):
    """Every job's config is valid (a bad one refuses the whole sweep: TRAIN_CASES); the
    middle job diverges while running."""
    result = cli(["train", "-m", "algo.learning_rate=0.0007,1e30,0.001", *SHORT,
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 1
    import csv

    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep_summary.csv")))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "training diverged: loss/total" in rows[1]["error"]
    assert float(rows[0]["final_return"]) > 0 and float(rows[2]["wall_time_s"]) > 0
    assert "3 job(s), 1 not ok" in result.stdout
