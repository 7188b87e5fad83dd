"""`rlcli <command> [hydra overrides]`.

Commands: `train`. The config is validated in Hydra's `on_run_start` callback, before Hydra
creates the run directory, so a bad value costs one line on stderr, exit code 2, and nothing
on disk.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

USAGE = """usage: rlcli <command> [options] [overrides]

commands:
  train    train a policy: rlcli train algo=a2c env=CartPole-v1 [key=value ...]
           (rlcli train --help lists the config groups and every key)

Runs are written to outputs/<date>/<time>-<algo>-<env>/. See README.md."""

EXIT_BAD_INPUT = 2


def config_dir() -> Path:
    """conf/ ships inside the wheel as rlcli/conf; in a source checkout it is ../conf."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError("rlcli: cannot find the config directory (rlcli/conf or conf/)")


def fail(command: str, message: str) -> None:
    print(f"rlcli {command}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object


class ValidateBeforeRun(Callback):
    """Validates the composed config before Hydra writes anything for a single run."""

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        from rlcli.config import ConfigError, validate

        cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            validate(cfg)
        except ConfigError as err:
            fail("train", str(err))


_task_started = False


def _train_task(cfg) -> float:
    global _task_started
    _task_started = True
    from hydra.core.hydra_config import HydraConfig

    from rlcli import runner
    from rlcli.config import ConfigError

    try:
        summary = runner.train(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:  # multirun jobs are validated here
        raise SystemExit(f"rlcli train: error: {err}") from None
    return summary["final_eval_return_mean"]


def train(args: list[str]) -> int:
    import logging

    import hydra

    # JAX logs a warning when it probes for a TPU runtime that a CPU/GPU machine lacks
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main = hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(_train_task)
    saved_argv = sys.argv
    sys.argv = ["rlcli train", *args]
    try:
        main()
    except SystemExit as exit_:
        # Hydra reports a bad override or an unknown group option, then exits 1, before the
        # task starts: that is bad input, so exit 2.
        if exit_.code == 1 and not _task_started:
            return EXIT_BAD_INPUT
        if exit_.code in (0, None):
            return 0
        raise
    finally:
        sys.argv = saved_argv
    return 0


COMMANDS = {"train": train}


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
