"""rlcli's errors and exit codes, and the one place that turns an error into a line and a code.

Exit codes: 0 done; 1 a failure while running (e.g. a write error); 2 bad input; 3 training
diverged (non-finite loss or parameters); 128 + signal number after SIGINT/SIGTERM, once a
checkpoint is written.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3


class ConfigError(ValueError):
    """Bad input. One-line message: key, bad value, what is allowed."""


class EnvConfigError(ValueError):
    """A bad env choice; the message is one line naming the key, the value and what is allowed."""


class CheckpointError(Exception):
    """One-line message: which checkpoint and why it cannot be used (bad input: exit 2)."""


class RunError(Exception):
    """A run that cannot go on: a one-line message and the process exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """SIGINT/SIGTERM: a checkpoint was written and the run stopped (a BaseException, so a
    sweep stops too rather than going on to its next job)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def print_error(command: str, message: str) -> None:
    print(f"rlcli {command}: error: {message}", file=sys.stderr)


def report(command: str, err: BaseException) -> int | None:
    """Print the one-line message of an rlcli error and return its exit code (None: not ours)."""
    if isinstance(err, (ConfigError, CheckpointError)):
        print_error(command, str(err))
        return EXIT_BAD_INPUT
    if isinstance(err, RunError):
        print_error(command, str(err))
        return err.exit_code
    if isinstance(err, Interrupted):
        print(f"rlcli {command}: {err}", file=sys.stderr)
        return err.exit_code
    return None
