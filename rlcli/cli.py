"""`rlcli <command> [options] [overrides]`.

Commands: `train`, `resume` (here), and `eval`, `reproduce`, `export`, `plot`, `diagnose` and
`list` (rlcli.commands.evaluate, .reproduce, .export, .plot, .diagnose, .catalog). Before Hydra
runs a single `train`, the overrides are parsed, the config is composed and validated and the
run directory's parent is checked, so bad input costs one line on stderr, exit code 2, and
nothing on disk.

Exit codes: 0 done; 1 a failure while running (e.g. a write error); 2 bad input; 3 training
diverged (non-finite loss or parameters); 128 + signal number after SIGINT/SIGTERM, once a
checkpoint is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = """usage: rlcli <command> [options] [overrides]

commands:
  train    train a policy: rlcli train algo=a2c env=CartPole-v1 [key=value ...]
           (rlcli train --help lists the config groups and every key; -m sweeps)
  resume   continue a run from its latest checkpoint: rlcli resume run=<run dir> [total_steps=N]
  eval     evaluate a run's checkpoint, optionally recording videos: rlcli eval run=<run dir>
  reproduce  train a run's saved config again and compare the metrics: rlcli reproduce run=<run dir>
  export   a trained policy as NumPy, ONNX or StableHLO, checked against rlcli's act:
           rlcli export run=<run dir> format=npz|onnx|stablehlo
  plot     learning curves with 95% bootstrap bands across seeds: rlcli plot <run or multirun dirs>
  diagnose   variance and accuracy of each policy-gradient estimator and baseline for one policy:
           rlcli diagnose env=CartPole-v1 | rlcli diagnose run=<run dir>
  list     the algorithms, estimators and environments, with their seed equations

Every command takes --help.

Runs are written to outputs/<date>/<time>-<algo>-<env>/. See README.md."""

from rlcli import arguments
from rlcli.arguments import Command, Option, text_of
from rlcli.commands.common import composition_error, configure_logging, load_run, quiet_logging
from rlcli.errors import EXIT_BAD_INPUT, CheckpointError, ConfigError, Interrupted, report
from rlcli.errors import print_error as _error
from rlcli.paths import config_dir
from rlcli.rules import flat_keys, non_empty_text

__all__ = ["EXIT_BAD_INPUT", "config_dir", "main", "report"]


# ---- checks before Hydra runs -----------------------------------------------------------------


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of a basic-sweeper multirun (the cartesian product of
    the `key=a,b,c` lists, as Hydra's BasicSweeper forms it). Where another sweeper (e.g.
    `hydra/sweeper=optuna`) or a range/interval sweep chooses the jobs itself, one list: the
    overrides that every job shares (the search space left out)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if (any(o.get_key_element().startswith(("hydra/sweeper", "+sweep", "sweep")) for o in parsed)
            or any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed)):
        return [[arg for arg, o in zip(overrides, parsed) if not o.is_sweep_override()]]
    return BasicSweeper.split_arguments(parsed, None)[0]


def preflight(args: list[str]) -> tuple[int | None, str | None, Path | None]:
    """Parse, compose and validate `rlcli train` overrides as Hydra will; on bad input print one
    line and return (exit code, None, None). For a sweep (-m) every job of the basic sweeper is
    composed and validated before the first one starts; a bad job refuses the whole sweep.
    Under another sweeper the overrides its jobs share are checked. Once all is well, the run
    (or sweep) directory is claimed for this process alone (`paths.claim_dir`): (None,
    'hydra.run.dir' or 'hydra.sweep.dir', the directory)."""
    from rlcli.config import compose, validate
    from rlcli.paths import claim_dir
    from rlcli.runtime import limit_threads

    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if any(f not in ("-m", "--multirun") for f in flags):
        return None, None, None  # --help, --cfg, --info ...: Hydra's own
    job = ""
    try:
        jobs = sweep_jobs(overrides) if flags else [overrides]
        from omegaconf import OmegaConf

        for number, job_overrides in enumerate(jobs):
            if len(jobs) > 1:
                job = f"job {number} of {len(jobs)} ({' '.join(job_overrides)}): "
            cfg = compose(job_overrides, return_hydra_config=True)
            if number == 0:  # this process runs the job (a sweep's basic launcher: all jobs)
                limit_threads(cfg)
            validate(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
        key = "hydra.sweep.dir" if flags else "hydra.run.dir"
        named = any(o.lstrip("+").startswith(key + "=") for o in overrides)
        claimed = claim_dir(key, str(OmegaConf.select(cfg, key)), named_by_user=named)
    except ConfigError as err:
        _error("train", job + str(err))
        return EXIT_BAD_INPUT, None, None
    except Exception as err:  # Hydra's parse and composition errors
        _error("train", job + composition_error(err, overrides))
        return EXIT_BAD_INPUT, None, None
    return None, key, claimed


# ---- train ------------------------------------------------------------------------------------

_task_started = False
_failed_jobs: list[str] = []
_sweep_dir: Path | None = None  # a sweep's directory, once it starts


def _train_task(cfg) -> float:
    """The Hydra task. A single run turns an rlcli error into its exit code; a sweep job
    records it (error.txt in the job directory, the sweep summary) and the sweep goes on."""
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from rlcli import train as training
    from rlcli.commands import sweeps as sweep
    from rlcli.runtime import limit_threads

    global _task_started
    _task_started = True
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        limit_threads(cfg)
        return training.train(cfg, run_dir)["final_eval_return_mean"]
    except Interrupted as err:  # a sweep stops as well, and summarises the jobs so far
        if hydra_cfg.mode == RunMode.MULTIRUN:
            print(sweep.table(sweep.summarize(Path(hydra_cfg.sweep.dir))))
        raise SystemExit(report("train", err)) from None
    except Exception as err:
        code = report("train", err)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if code is None:
                raise
            raise SystemExit(code) from None
        if code is None:  # not an rlcli error: one line here, the traceback in train.log
            logging.getLogger("rlcli").exception("job failed")
            _error("train", f"{type(err).__name__}: {err}".splitlines()[0])
        message = (str(err).splitlines() or [type(err).__name__])[0]
        (run_dir / "error.txt").write_text(message + "\n")
        _failed_jobs.append(str(run_dir))
        return sweep.failed_job_return(hydra_cfg, message)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object


class SweepSummary(Callback):
    """At the end of a sweep: sweep_summary.csv in the sweep directory and a printed table, one
    row per job (overrides, status, final evaluation return, wall time, error)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        from rlcli.commands import sweeps as sweep

        rows = sweep.summarize(Path(config.hydra.sweep.dir))
        print(sweep.table(rows))
        # jobs may have run in other processes (joblib, submitit, Ray): count failures here
        _failed_jobs.extend(row["job"] for row in rows if row["status"] != "ok")


def train_help(args: list[str]) -> int:
    """`rlcli train [overrides] --help`: the groups and every key of the config the overrides
    compose, from the keys' declarations (rlcli.schema)."""
    from rlcli.config import compose
    from rlcli.schema import help_text

    overrides = [a for a in args if not a.startswith("-")]
    try:
        cfg = compose(overrides)
    except Exception as err:  # Hydra's parse and composition errors
        _error("train", composition_error(err, overrides))
        return EXIT_BAD_INPUT
    print(help_text(cfg))
    return 0


def train(args: list[str]) -> int:
    import hydra

    from rlcli.paths import release_if_empty
    from rlcli.schema import register

    if arguments.wants_help(args):
        return train_help(args)
    quiet_logging()
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    register()
    code, dir_key, claimed = preflight(args)
    if code is not None:
        return code
    main = hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(_train_task)
    saved_argv = sys.argv
    # -m may stand anywhere among the overrides (Hydra's parser wants it before them)
    multirun = [a for a in args if a in ("-m", "--multirun")]
    overrides = [a for a in args if a not in multirun]
    if claimed is not None:  # the directory preflight claimed replaces the user's or the default
        quoted = str(claimed).replace("\\", "\\\\").replace("'", "\\'")
        overrides = [a for a in overrides if not a.lstrip("+").startswith(dir_key + "=")]
        overrides.append(f"{dir_key}='{quoted}'")
    sys.argv = ["rlcli train", *multirun, *overrides]
    try:
        main()
    except SystemExit as exit_:
        # Hydra reports a bad override or an unknown group option, then exits 1, before the
        # task starts: that is bad input, so exit 2. (Jobs in other processes leave
        # _task_started unset here; their directories show that they started.)
        from rlcli.commands import sweeps as sweep

        if exit_.code == 1 and not _task_started and not (_sweep_dir and sweep.job_dirs(_sweep_dir)):
            return EXIT_BAD_INPUT
        if exit_.code in (0, None):
            return 1 if _failed_jobs else 0
        if isinstance(exit_.code, int):
            return exit_.code
        raise
    finally:
        sys.argv = saved_argv
        if claimed is not None:  # Hydra stopped before writing anything
            release_if_empty(claimed)
    return 1 if _failed_jobs else 0


# ---- resume -----------------------------------------------------------------------------------


def _config_difference(run_dir: Path, cfg) -> str:
    """`key=new (the run has old)` for the keys the overrides changed."""
    from omegaconf import OmegaConf

    from rlcli.rules import format_value

    old = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    changed = []
    for key in flat_keys(cfg):
        a, b = OmegaConf.select(old, key), OmegaConf.select(cfg, key)
        if a != b:
            changed.append(f"{key}={format_value(b)} (the run has {format_value(a)})")
    return ", ".join(changed)


RESUME = Command(
    "resume", "run=<run dir> [key=value ...]",
    """Continues the run in <run dir> from its newest readable checkpoint with the run's saved config
(.hydra/config.yaml), appending to its metrics. On the jax backend a resumed run gives the same
metrics as one never interrupted; on the gymnasium backend the episodes in flight restart.
run=<multirun dir> resumes every job of a sweep in turn (finished jobs say so; jobs without a
checkpoint are skipped).""",
    (Option("run", None, non_empty_text(), "the run directory written by rlcli train", text_of),),
    overrides="changes of the saved config, e.g. total_steps=1000000 to train longer (the network and "
              "algorithm must stay the same)",
)


def resume(args: list[str]) -> int:
    if arguments.wants_help(args):
        print(arguments.usage(RESUME))
        return 0
    from rlcli import train as training
    from rlcli.config import validate
    from rlcli.runtime import limit_threads

    try:
        parsed = arguments.parse(RESUME, args)
        run = [f"run={parsed.given['run']}"] if "run" in parsed.given else []
        run_dir, cfg = load_run(run + parsed.overrides)
        limit_threads(cfg)
        validate(cfg)
    except ConfigError as err:
        return report("resume", err)
    configure_logging(run_dir)
    try:
        training.train(cfg, run_dir, resume=True)
    except CheckpointError as err:
        changed = _config_difference(run_dir, cfg) if "does not fit" in str(err) else ""
        if changed:
            err = CheckpointError(f"{changed} does not fit the checkpoint of run={run_dir} "
                                  "(allowed: the run's own network and algorithm settings)")
        return report("resume", err)
    except (Exception, Interrupted) as err:
        code = report("resume", err)
        if code is None:
            raise
        return code
    return 0


def _lazy(module: str):
    """A command whose module is imported only when it runs."""
    def command(args: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(args)
    return command


def _multirun(args: list[str]) -> tuple[Path, list[Path]] | None:
    """(sweep dir, its job run dirs) when `run=` names a multirun directory, else None."""
    from rlcli.commands.sweeps import job_dirs

    runs = [a.partition("=")[2] for a in args if a.startswith("run=")]
    if len(runs) != 1 or not Path(runs[0]).is_dir() or (Path(runs[0]) / ".hydra" / "config.yaml").is_file():
        return None
    jobs = job_dirs(Path(runs[0]))
    return (Path(runs[0]), jobs) if jobs else None


def each_job(name: str, command):
    """`command` (resume, eval, reproduce, export) on a run directory, or on every job of a multirun
    directory in turn: jobs without a checkpoint (failed early) are skipped and named; bad
    arguments stop at the first job (one line, exit 2); otherwise the exit code is the worst
    job's. `reproduce` writes job J to <sweep dir>-reproduced/J (or <out>/J), `export` to <out>/J when out= is given."""
    def run(args: list[str]) -> int:
        from rlcli import checkpoint

        found = None if any(a in ("-h", "--help") for a in args) else _multirun(args)
        if found is None:
            return command(args)
        sweep_dir, jobs = found
        rest = [a for a in args if not a.startswith("run=")]
        out = next((Path(a.partition("=")[2]) for a in rest if a.startswith("out=")), None)
        rest = [a for a in rest if not a.startswith("out=")]
        ready = [job for job in jobs if checkpoint.steps(job / "checkpoints")]
        for job in jobs:
            if job not in ready:
                print(f"rlcli {name}: job {job.name} of {sweep_dir} has no checkpoint: skipped", file=sys.stderr)
        if not ready:
            _error(name, f"run={sweep_dir} is a multirun directory none of whose {len(jobs)} job(s) has a "
                         "checkpoint (allowed: a run or multirun directory with checkpoints)")
            return EXIT_BAD_INPUT
        codes = []
        for job in ready:
            print(f"rlcli {name}: job {job.name} of {sweep_dir}", file=sys.stderr)
            where = []
            if name == "reproduce":
                where = [f"out={(out or sweep_dir.with_name(sweep_dir.name + '-reproduced')) / job.name}"]
            elif name == "export" and out is not None:
                where = [f"out={out / job.name}"]
            codes.append(command([f"run={job}", *rest, *where]))
            if codes[-1] == EXIT_BAD_INPUT and len(codes) == 1:
                return EXIT_BAD_INPUT  # the arguments are bad for every job
        print(f"rlcli {name}: {len(ready)} job(s) of {sweep_dir}: " + ", ".join(
            f"{job.name}: exit {code}" for job, code in zip(ready, codes)), file=sys.stderr)
        return max(codes)
    return run


COMMANDS = {"train": train, "resume": each_job("resume", resume),
            "eval": each_job("eval", _lazy("rlcli.commands.evaluate")),
            "reproduce": each_job("reproduce", _lazy("rlcli.commands.reproduce")),
            "export": each_job("export", _lazy("rlcli.commands.export")),
            "plot": _lazy("rlcli.commands.plot"), "list": _lazy("rlcli.commands.catalog"),
            "diagnose": _lazy("rlcli.commands.diagnose")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else EXIT_BAD_INPUT
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rlcli: error: unknown command {command!r} (allowed: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
