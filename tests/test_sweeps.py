"""Sweeps past the basic launcher, through the real command line: Optuna, and the joblib,
submitit and Ray launchers (jobs in other processes), the per-job thread limit (`threads`),
and the Slurm example config. Needs the extras: pip install -e ".[optuna,joblib,submitit,ray]"."""

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml


# three jobs: two train, the third diverges at once (learning rate 1e30); tiny budgets
JOBS = ["algo.learning_rate=0.0007,0.001,1e30", "total_steps=1024", "num_envs=4", "eval_episodes=2",
        "logger=quiet"]
# the launchers' sweeps: the fewest jobs that show both outcomes, one trains and one diverges
TWO_JOBS = ["algo.learning_rate=0.001,1e30", *JOBS[1:]]


def rows(sweep_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(sweep_dir / "sweep_summary.csv", encoding="utf-8")))


def xla_pool_sizes(pid: int) -> dict[int, int]:
    """{pid: number of XLA CPU pool threads} for `pid` and its descendants that started JAX."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    family, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    sizes = {}
    for p in family:
        try:
            names = [(t / "comm").read_text() for t in Path(f"/proc/{p}/task").iterdir()]
        except OSError:
            continue
        pool = sum(name.startswith("tf_XLAEigen") for name in names)
        if pool:
            sizes[p] = pool
    return sizes


def run_sweep(args: list[str], cwd: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """`rlcli train -m <args>`; also returns the largest XLA pool seen in each of its processes
    (sampled every 50 ms)."""
    from conftest import rlcli_executable

    proc = subprocess.Popen([rlcli_executable(), "train", "-m", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[int, int] = {}

    def sample():
        while proc.poll() is None:
            for pid, size in xla_pool_sizes(proc.pid).items():
                seen[pid] = max(size, seen.get(pid, 0))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate(timeout=timeout)
    sampler.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), seen


def check_two_jobs(result, sweep_dir: Path) -> None:
    """One job trained, the diverged one is listed as failed, and the exit code says so (the
    jobs ran in other processes: the parent learns of the failure from the job directories)."""
    assert result.returncode == 1, result.stderr[-3000:]
    table = rows(sweep_dir)
    assert [r["job"] for r in table] == ["0", "1"]
    assert [r["status"] for r in table] == ["ok", "failed"], table
    assert float(table[0]["final_return"]) > 0 and float(table[0]["wall_time_s"]) > 0
    assert table[1]["error"].startswith("training diverged: ")
    assert (sweep_dir / "1" / "error.txt").read_text().startswith("training diverged: ")
    assert "2 job(s), 1 not ok" in result.stdout


def check_one_thread_each(pools: dict[int, int], jobs: int) -> None:
    """Every process that started JAX had a one-thread XLA CPU pool: the parent (which checks
    the configs) and at least `jobs` job processes."""
    assert len(pools) >= 1 + jobs, pools
    assert set(pools.values()) == {1}, pools


# ---- launchers -----------------------------------------------------------------------------------


@pytest.mark.extended
def test_joblib_runs_jobs_side_by_side_with_one_thread_each(tmp_path):
    sweep = tmp_path / "sweep"
    result, pools = run_sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1", *TWO_JOBS,
                               f"hydra.sweep.dir={sweep}"], tmp_path)
    check_two_jobs(result, sweep)
    check_one_thread_each(pools, jobs=2)


@pytest.mark.extended
def test_submitit_local_runs_each_job_in_its_own_process(tmp_path):
    sweep = tmp_path / "sweep"
    result, pools = run_sweep(["hydra/launcher=submitit_local", "threads=1", *TWO_JOBS,
                               f"hydra.sweep.dir={sweep}"], tmp_path)
    check_two_jobs(result, sweep)
    check_one_thread_each(pools, jobs=2)
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2


@pytest.mark.extended
def test_ray_runs_jobs_on_a_local_ray_instance(tmp_path):
    sweep = tmp_path / "sweep"
    result, pools = run_sweep(["hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2",
                               "threads=1", *TWO_JOBS, f"hydra.sweep.dir={sweep}"], tmp_path)
    check_two_jobs(result, sweep)
    check_one_thread_each(pools, jobs=2)


# ---- optuna --------------------------------------------------------------------------------------


@pytest.mark.extended
def test_optuna_maximises_the_final_return_and_records_a_failed_trial(tmp_path, cli):
    """Three trials of the shipped PPO search, the learning rate narrowed to a choice with a
    diverging value (TPE with seed 2 draws both values in three trials, optuna 2.10): each
    trial that drew 1e30 (its overrides in the summary) is listed as failed, the others finish
    and the best of them is Optuna's best."""
    sweep = tmp_path / "sweep"
    result = cli(["train", "-m", "+sweep=ppo_CartPole-v1", "hydra.sweeper.n_trials=3",
                  "hydra.sweeper.sampler.seed=2", "algo.learning_rate=choice(0.001,1e30)",
                  "num_seeds=1", *JOBS[1:], f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    table = rows(sweep)
    drew = [float(dict(o.split("=", 1) for o in r["overrides"].split())["algo.learning_rate"]) for r in table]
    assert len(table) == 3 and set(drew) == {0.001, 1e30}, drew  # both values drawn
    assert [r["status"] for r in table] == ["failed" if lr == 1e30 else "ok" for lr in drew], table
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"algo.learning_rate", "algo.ent_coef", "algo.num_steps",
                                        "estimator.lambda"}
    finished = [r for r in table if r["status"] == "ok"]
    returns = [float(r["final_return"]) for r in finished]
    assert best["best_value"] == pytest.approx(max(returns), abs=1e-3)
    winner = finished[returns.index(max(returns))]["overrides"].split()
    assert all(f"{key}={value}" in winner for key, value in best["best_params"].items())
    assert f"3 job(s), {drew.count(1e30)} not ok" in result.stdout


# ---- the thread limit ----------------------------------------------------------------------------

POOL = """
import os, sys
from omegaconf import OmegaConf
from rlcli import runtime
from rlcli.config import ConfigError
runtime.limit_threads(OmegaConf.create({"threads": None if sys.argv[1] == "null" else int(sys.argv[1])}))
import jax
jax.jit(lambda x: x @ x)(jax.numpy.ones((64, 64))).block_until_ready()
pool = sum(open(f"/proc/self/task/{t}/comm").read().startswith("tf_XLAEigen")
           for t in os.listdir("/proc/self/task"))
try:
    runtime.limit_threads(OmegaConf.create({"threads": 5}))
    again = "accepted"
except ConfigError as err:
    again = str(err)
print(pool, os.environ.get("NPROC"), again, sep="|")
"""


def pool_size(threads: str, env: dict | None = None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", POOL, threads], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split("|")


def test_threads_sets_the_size_of_the_xla_cpu_pool():
    pool, nproc, again = pool_size("3")  # more than this machine's cores: the key decides
    assert (pool, nproc) == ("3", "3")
    assert again.startswith("threads=5 cannot be applied: this process already started JAX with threads=3")


def test_threads_null_drops_a_limit_inherited_from_an_rlcli_parent():
    inherited = {"NPROC": "1", "RLCLI_THREADS": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    pool, nproc, _ = pool_size("null", inherited)
    assert (int(pool), nproc) == (len(os.sched_getaffinity(0)), "None")
    pool, nproc, _ = pool_size("null", {"NPROC": "1"})  # the user's own setting stays
    assert (pool, nproc) == ("1", "1")


def test_bad_threads_is_refused_before_anything_runs(tmp_path, cli):
    result = cli(["train", "threads=0", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "rlcli train: error: threads=0 is not allowed (allowed: null or an integer >= 1)"
    assert not (tmp_path / "run").exists()


# ---- the Slurm example ---------------------------------------------------------------------------


def test_slurm_example_renders_an_sbatch_script(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm_example.yaml, mapped to submitit's Slurm executor as the
    launcher maps it, gives the sbatch lines it documents (a stand-in `srun` lets submitit
    build its executor off a cluster)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from rlcli.config import compose

    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose(["hydra/launcher=slurm_example", "hydra.launcher.partition=cpu", f"hydra.sweep.dir={tmp_path}"],
                  return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ["#SBATCH --partition=cpu", "#SBATCH --cpus-per-task=4", "#SBATCH --time=120",
                 "#SBATCH --mem=8GB", "export XLA_PYTHON_CLIENT_PREALLOCATE=false"]:
        assert line in script.splitlines(), script
