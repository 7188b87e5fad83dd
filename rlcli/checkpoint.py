"""Checkpoints of the whole learner state with orbax (no pickle): parameters, optimizer
state, RNG key, update counter and, on the jax backend, the environment state, plus a small
JSON record (env steps, wall time). Orbax writes each step into a temporary directory and
renames it when complete, so a crash never leaves a half-written checkpoint in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


def manager(directory: str | Path, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Save asynchronously under `step` (env steps per seed); call `mngr.wait_until_finished()`
    before reading it back or exiting."""
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def restore(directory: str | Path, like: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore (state, meta) of `step` (default: the latest); `like` gives the tree structure,
    shapes and dtypes (e.g. a freshly initialised state)."""
    with manager(directory, keep=1_000_000) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta
