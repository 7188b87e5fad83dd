import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# two CPU devices, as `rlcli train` asks for on a two-core machine: in-process runs with an even
# num_seeds shard their seeds over both (rlcli/xla.py)
# (marked as rlcli's own, so that a `rlcli` subprocess sets its count from its `threads`)
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    os.environ["RLCLI_HOST_DEVICES"] = "2"
# the many short `rlcli` processes of the tests compile the same programs: share JAX's
# persistent compilation cache between them (a fresh directory per test session). Every
# program is written, also the small ones (a run's key and checkpoint helpers, one-operation
# programs of eager code), which later runs and processes then load. (Keeping only those that
# took 0.3 s or more saved 5 s in one eager test but showed no gain over the whole suite.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rlcli-test-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

REPO = Path(__file__).resolve().parents[1]


def compose(overrides=()):
    """The train config as `rlcli train <overrides>` composes it."""
    from rlcli.config import compose as compose_train

    return compose_train(overrides)


def train(tmp_path, overrides=(), name="run"):
    """Run rlcli.train.train in-process into tmp_path/name; returns (summary, records)."""
    from rlcli import train as training
    from rlcli.logger import read_metrics

    run_dir = tmp_path / name
    run_dir.mkdir()
    summary = training.train(compose(["logger=quiet", *overrides]), run_dir)
    return summary, read_metrics(run_dir)


def train_run(run_dir, overrides):
    """`rlcli train <overrides>` in this process into run_dir, a run directory as the command
    writes it (.hydra/ included); the root logger's handlers (Hydra sets a console and a
    train.log one) are put back afterwards."""
    import logging

    from rlcli.cli import main

    root_logger = logging.getLogger()
    handlers = root_logger.handlers[:]
    try:
        assert main(["train", *overrides, f"hydra.run.dir={run_dir}"]) == 0
    finally:
        for handler in set(root_logger.handlers) - set(handlers):
            handler.close()
        root_logger.handlers[:] = handlers
    return run_dir


def rlcli_executable():
    found = shutil.which("rlcli", path=os.path.dirname(sys.executable)) or shutil.which("rlcli")
    assert found, "the rlcli console script is not installed (pip install -e .)"
    return found


def run_cli(args, cwd, timeout=600, env=None):
    return subprocess.run([rlcli_executable(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _python_warning_filters() -> None:
    """The warning filters of a plain `python` process (what an `rlcli` process shows on
    stderr), in place of pytest's."""
    import warnings

    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)


def main_in_process(args, cwd, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`rlcli <args>` through rlcli.cli.main in this process, in `cwd`, as `run_cli` gives it
    from a process of its own (exit code, stdout, stderr) without the 3-5 s of starting Python
    and importing JAX. A warning the case raises (until its garbage is collected) counts as a
    line on stderr, as it would in its own process; the root logger's handlers are put back.
    What needs a process of its own (a signal, a kill, `threads=`, processes started
    together, the exit status the shell sees) uses `run_cli`."""
    import gc
    import logging
    import warnings

    from rlcli import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(cli, "_task_started", False)
    monkeypatch.setattr(cli, "_failed_jobs", [])
    monkeypatch.setattr(cli, "_sweep_dir", None)
    root = logging.getLogger()
    handlers = root.handlers[:]
    capsys.readouterr()
    # `rlcli resume` configures logging with logging.config.dictConfig, which closes every existing
    # handler; absl's (orbax imports absl) then closes its stream unless it is the current
    # sys.stderr. In a process that is the real stderr; here it was whatever pytest had put there
    # when absl was imported (pytest's own capture file), so point it at this case's stderr.
    from absl import logging as absl_logging

    monkeypatch.setattr(absl_logging.get_absl_handler().python_handler, "stream", sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        _python_warning_filters()
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        finally:
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:] = handlers
        gc.collect()  # e.g. a coroutine a failed restore left never awaited warns now, not in a later case
    out, err = capsys.readouterr()
    for warning in caught:
        err += warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return subprocess.CompletedProcess(["rlcli", *args], code, out, err)


@pytest.fixture
def cli(monkeypatch, capsys):
    """`cli(args, cwd)`: `rlcli <args>` run in this process (`main_in_process`)."""
    def run(args, cwd, timeout=None):
        return main_in_process(args, cwd, monkeypatch, capsys)
    return run


# The shared run: one small finished `rlcli train` run directory, built once per test session
# and shared by the xdist workers (the first to need it builds it under a file lock), for the
# tests that only read a run directory. Tests must not change it: copy it (shutil.copytree)
# first, or give commands an `out=` elsewhere.
SHARED_RUN = ["algo=a2c", "env=CartPole-v1", "num_seeds=2", "total_steps=2000", "log_interval=400",
              "checkpoint_interval=800", "eval_episodes=2", "logger=quiet"]


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """A finished a2c CartPole-v1 run of SHARED_RUN: 2 seeds, metrics every 400 env steps,
    checkpoints at 800, 1600 and 2000."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's directory, the same for every xdist worker
    run = root / "shared-run" / "run"
    with open(root / "shared-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "summary.json").exists():
            if run.parent.exists():
                shutil.rmtree(run.parent)
            run.parent.mkdir()
            result = run_cli(["train", *SHARED_RUN, f"hydra.run.dir={run}"], run.parent)
            assert result.returncode == 0, result.stderr
    return run



@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """An extended test is also a slow one: `pytest -m "not slow"` (the quick tier) leaves it out."""
    for item in items:
        if item.get_closest_marker("extended") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
