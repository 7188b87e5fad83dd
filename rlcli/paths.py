"""Where rlcli reads its configs and writes its directories.

Directories that a command writes are claimed exclusively (`claim_dir`): `os.mkdir` either
creates the directory or fails because it exists, atomically, so two processes started in
the same second never share one. A name rlcli chose itself (a run directory from the time of
day, `<run>-reproduced`, `<run>/diagnose`) gets the first free suffix `-1`, `-2`, ... when it
is taken; a directory the user named must be new or empty.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlcli.errors import ConfigError


def config_dir() -> Path:
    """conf/ (the tuned values, the sweep search spaces and Hydra's settings; rlcli.schema holds
    the train config) ships inside the wheel as rlcli/conf; in a source checkout it is ../conf."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "hydra" / "job_logging" / "rlcli.yaml").is_file():
            return candidate
    raise FileNotFoundError("rlcli: cannot find the config directory (rlcli/conf or conf/)")


def check_output_dir(key: str, path: str | Path) -> None:
    """Refuse a directory that cannot be created, before anything is written."""
    target = Path(path).absolute()
    parent = target
    while not parent.exists():
        parent = parent.parent
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key}={path} cannot be used: it is a file (allowed: a writable directory)")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} cannot be created: {parent} is not a writable directory "
                             "(allowed: a path under a writable directory)")


def claim_dir(key: str, path: str | Path, named_by_user: bool) -> Path:
    """Create `path` for this process alone and return it. If it exists: a directory the user
    named is used only when empty (else ConfigError); a name rlcli chose gets the first free
    suffix (`path-1`, `path-2`, ...)."""
    path = Path(path)
    check_output_dir(key, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            if named_by_user:
                if candidate.is_dir() and not any(candidate.iterdir()):
                    return candidate
                raise ConfigError(f"{key}={path} already exists and is not empty (allowed: a new or "
                                     "empty directory)") from None
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")


def release_if_empty(path: Path) -> None:
    """Remove a claimed directory that nothing was written into (a command that failed early)."""
    try:
        path.rmdir()
    except OSError:
        pass


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
