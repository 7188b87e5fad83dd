"""What the commands share: reading a run directory's config with overrides, logging set up
as a run's, Hydra's errors as one line, and plain-text tables."""

from __future__ import annotations

import difflib
from pathlib import Path

from rlcli.errors import ConfigError
from rlcli.paths import config_dir
from rlcli.rules import flat_keys


def composition_error(err: Exception, args: list[str]) -> str:
    """One line for a Hydra parse or composition error."""
    from hydra.errors import MissingConfigException, OverrideParseException

    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if isinstance(err, OverrideParseException):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        bad = next((a for a in args if not parses(OverridesParser.create(), a)), None)
        reason = "; ".join(line for line in lines if not line.startswith(("See https", "Error parsing")))
        return (f"malformed override {bad!r}: {reason} (allowed: key=value, group=option, "
                "+key=value, key=a,b,c with -m)")
    if isinstance(err, MissingConfigException) and getattr(err, "options", None):
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        close = difflib.get_close_matches(option, err.options, n=1)
        hint = f"; did you mean {group}={close[0]}?" if close else ""
        if group in ("hydra/launcher", "hydra/sweeper"):
            hint += ("; Optuna and the joblib, submitit and Ray launchers are install extras: "
                     'pip install "rlcli[sweeps]"')
        return f"{group}={option} is not an option of {group} (allowed: one of {', '.join(err.options)}){hint}"
    if lines and lines[0].startswith("Could not override '"):
        key = lines[0].split("'")[1]
        from rlcli.config import compose_default

        close = difflib.get_close_matches(key, flat_keys(compose_default()), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"{key} is not a config key ({hint}allowed: the keys listed by rlcli train --help; +{key}=... adds a new key)"
    return " ".join(lines[:2]) or type(err).__name__


def parses(parser, arg: str) -> bool:
    try:
        parser.parse_overrides([arg])
        return True
    except Exception:
        return False


def quiet_logging() -> None:
    import logging
    import warnings

    # JAX logs a warning when it probes for a TPU runtime that a CPU/GPU machine lacks
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    # a failed checkpoint write is reported once, as one line; orbax's asyncio tasks would
    # also log it, with tracebacks, and a full disk would make every log write complain
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.raiseExceptions = False
    # importing optuna (hydra/sweeper=optuna) makes alembic log its plugin setup
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # JAX warns at every fork once it runs; subprocess (the Ray launcher starting its
    # processes) forks and execs at once, which is safe
    warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning, "subprocess")


def configure_logging(run_dir: Path) -> None:
    """The same console and train.log handlers as a Hydra run (conf/hydra/job_logging)."""
    import logging.config

    from omegaconf import OmegaConf

    spec = OmegaConf.load(config_dir() / "hydra" / "job_logging" / "rlcli.yaml")
    spec.handlers.file.filename = str(run_dir / "train.log")
    logging.config.dictConfig(OmegaConf.to_container(spec, resolve=False))
    quiet_logging()


def load_run(args: list[str]):
    """(run_dir, saved config with the overrides applied) from `run=<dir> [key=value ...]`;
    raises ConfigError (one line) for a missing run, a malformed or unknown override."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlcli import checkpoint

    pairs = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise ConfigError(f"malformed argument {arg!r} (allowed: run=<run dir> and key=value overrides)")
        pairs.append((key, value))
    runs = [value for key, value in pairs if key == "run"]
    if len(runs) != 1 or not runs[0]:
        raise ConfigError("run= is required once (allowed: run=<run dir written by rlcli train>)")
    run_dir = Path(runs[0])
    saved = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"run={runs[0]} does not exist (allowed: a run directory written by rlcli train)")
    if not saved.is_file():
        raise ConfigError(f"run={runs[0]} is not a run directory: it has no .hydra/config.yaml "
                          "(allowed: a run directory written by rlcli train)")
    if not checkpoint.steps(run_dir / "checkpoints"):
        raise ConfigError(f"run={runs[0]} has no checkpoint (allowed: a run directory with "
                          "checkpoints/; the run stopped before its first checkpoint)")
    try:
        cfg = OmegaConf.load(saved)
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise ConfigError(f"run={runs[0]}: .hydra/config.yaml cannot be read: {str(err).splitlines()[0]}") from None
    from rlcli.schema import complete

    complete(cfg)  # keys declared after the run was written: their defaults
    OmegaConf.set_struct(cfg, True)
    for key, value in pairs:
        if key == "run":
            continue
        try:
            cfg.merge_with(OmegaConf.from_dotlist([f"{key}={value}"]))
        except OmegaConfBaseException:
            close = difflib.get_close_matches(key, flat_keys(cfg), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{key} is not a config key of this run ({hint}allowed: a key of "
                              f"{saved})") from None
    return run_dir, cfg


def checkpointed_run(parsed):
    """(run_dir, typed config) of a command's `run=` with its `checkpoint=` and `seed_index=`
    options checked against the run (eval, export); raises ConfigError (one line)."""
    from rlcli import checkpoint, config

    values, given = parsed.values, parsed.given
    run_dir, cfg = load_run([f"run={given['run']}"] if "run" in given else [])
    config.validate(cfg)
    cfg = config.typed(cfg)
    available = checkpoint.steps(run_dir / "checkpoints")
    if values["checkpoint"] is not None and values["checkpoint"] not in available:
        raise ConfigError(f"checkpoint={given['checkpoint']} is not a checkpoint of run={run_dir} (allowed: "
                          f"one of {', '.join(map(str, available))})")
    if values["seed_index"] is not None and values["seed_index"] >= cfg.num_seeds:
        raise ConfigError(f"seed_index={given['seed_index']} is out of range: the run has num_seeds={cfg.num_seeds} "
                          f"(allowed: an integer in [0, {cfg.num_seeds - 1}])")
    return run_dir, cfg


def parse_and_run(command, parse, run, args: list[str]):
    """A command's `--help`, or `run(parse(args))` with logging quiet: (exit code, None, None)
    after --help (0) or an rlcli error (its one line printed by `errors.report`), else (None,
    options, result). Other exceptions propagate."""
    from rlcli import arguments
    from rlcli.errors import report

    if arguments.wants_help(args):
        print(arguments.usage(command))
        return 0, None, None
    quiet_logging()
    try:
        opts = parse(args)
        return None, opts, run(opts)
    except Exception as err:
        code = report(command.name, err)
        if code is None:
            raise
        return code, None, None


def aligned(header: list[str], rows: list[list[str]]) -> str:
    """Text columns padded to a common width, two spaces apart, header first."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])
