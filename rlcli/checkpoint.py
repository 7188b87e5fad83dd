"""Checkpoints of the whole learner state with orbax (no pickle): parameters, optimizer
state, RNG key, update counter and, on the jax backend, the environment state, plus a small
JSON record (env steps, update, evaluation count, wall time).

Saves are synchronous: `save` returns once the step is on disk. Orbax writes each step into a
temporary directory and renames it when complete, so a kill or a full disk never leaves a
half-written checkpoint in place of a good one, and at most one checkpoint interval of
training is lost. Temporary directories left by a killed save are removed on the next open.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(Exception):
    """One-line message: which checkpoint and why it cannot be used."""


def manager(directory: str | Path, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True),
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Save under `step` (env steps per seed); returns when the checkpoint is complete."""
    with _quiet_stderr():
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def steps(directory: str | Path) -> list[int]:
    """The complete checkpoints in `directory`, oldest first (none if it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file())


def read_meta(directory: str | Path, step: int) -> dict:
    """The JSON record of checkpoint `step` (raises CheckpointError if unreadable)."""
    import json

    path = Path(directory) / str(step) / "meta" / "metadata"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {Path(directory) / str(step)} is corrupted "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else path})") from None


def restore(directory: str | Path, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore (state, meta) of `step` (default: the latest); `like` gives the tree structure,
    shapes and dtypes (e.g. a freshly initialised state). Raises CheckpointError with a
    one-line reason if the checkpoint is missing, corrupted or of another shape."""
    directory = Path(directory)
    available = steps(directory)
    if step is None:
        if not available:
            raise CheckpointError(f"no checkpoint in {directory}")
        step = available[-1]
    elif step not in available:
        raise CheckpointError(f"no checkpoint {step} in {directory} (available: "
                              f"{', '.join(map(str, available)) or 'none'})")
    meta = read_meta(directory, step)
    try:
        with _quiet_stderr(), manager(directory, keep=1_000_000) as mngr:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
    except Exception as err:
        text = str(err).split(" [tensorstore_spec")[0].strip()
        if "not compatible with the stored shape" in text or "tree structure" in text.lower():
            raise CheckpointError(f"checkpoint {directory / str(step)} does not fit this config: "
                                  f"{text.splitlines()[0]}") from None
        detail = text[text.rfind("Error "):] if "Error " in text else (text.splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {directory / str(step)} is corrupted "
                              f"({type(err).__name__}: {detail[:200]})") from None
    return restored.state, meta


@contextlib.contextmanager
def _quiet_stderr():
    """When a save or restore fails, tensorstore's reader threads go on completing futures for orbax's
    closed event loop and print a traceback each, straight to file descriptor 2. Send fd 2 to
    a scratch file meanwhile, so the user sees the one-line error instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        except BaseException:
            time.sleep(0.5)  # let the stray callbacks finish while fd 2 points at the scratch file
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
