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
import warnings
from pathlib import Path
from typing import Any, Callable

import orbax.checkpoint as ocp

from rlcli.errors import CheckpointError


def manager(directory: str | Path, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True, temporary_path_class=_paused_before_commit()),
    )


PAUSE_IN_SAVE = "RLCLI_TEST_PAUSE_IN_SAVE"


def _paused_before_commit():
    """Test seam (tests/test_reliability.py): with RLCLI_TEST_PAUSE_IN_SAVE=<seconds> in the
    environment, every save waits that long once its temporary directory is written and before
    it is renamed into place, so that a test can kill the process inside a checkpoint write.
    Unset (always, outside the tests): None, orbax's own atomic rename."""
    seconds = float(os.environ.get(PAUSE_IN_SAVE) or 0)
    if seconds <= 0:
        return None
    import asyncio

    class PausedBeforeCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
        async def finalize(self, *args, **kwargs):
            await asyncio.sleep(seconds)
            return await super().finalize(*args, **kwargs)

    return PausedBeforeCommit


def _optional(node) -> bool:
    """A NamedTuple with optional fields: `hparams` (LearnerState) or a field that is None."""
    return (isinstance(node, tuple) and hasattr(node, "_fields")
            and ("hparams" in node._fields or any(v is None for v in node)))


def storable(tree):
    """The tree as a checkpoint holds it: in NamedTuples with optional fields (rlcli's
    LearnerState, EnvCarry), fields that are None are left out, and so are a learner's traced
    `hparams`, which come from the config (a resumed run takes the config's values, as
    constants compiled in would). Checkpoints written before those fields existed have the
    same tree."""
    if _optional(tree):
        return {k: storable(v) for k, v in tree._asdict().items() if v is not None and k != "hparams"}
    if isinstance(tree, dict):
        return {k: storable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(storable(v) for v in tree)
    if isinstance(tree, tuple):
        return type(tree)(*(storable(v) for v in tree))
    return tree


def from_storable(stored, like):
    """Undo `storable` with the tree `like` (a fresh state): the left-out fields come from it."""
    if _optional(like):
        return type(like)(**{k: (v if v is None or k == "hparams" else from_storable(stored[k], v))
                             for k, v in like._asdict().items()})
    if isinstance(like, dict):
        return {k: from_storable(stored[k], v) for k, v in like.items()}
    if isinstance(like, (list, tuple)) and not hasattr(like, "_fields"):
        return type(like)(from_storable(s, v) for s, v in zip(stored, like))
    if isinstance(like, tuple):
        return type(like)(*(from_storable(s, v) for s, v in zip(stored, like)))
    return stored


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Save under `step` (env steps per seed); returns when the checkpoint is complete."""
    with quiet_stderr():
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(storable(state)), meta=ocp.args.JsonSave(meta)))


def steps(directory: str | Path) -> list[int]:
    """The complete checkpoints in `directory`, oldest first (none if it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file())


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read back: `step`, and `part`, what cannot be read."""

    def __init__(self, directory: Path, step: int, part: str):
        super().__init__(f"checkpoint {Path(directory) / str(step)} is damaged: {part} cannot be read")
        self.step, self.part = step, part


def read_meta(directory: str | Path, step: int) -> dict:
    """The JSON record of checkpoint `step` (raises DamagedCheckpoint if unreadable)."""
    import json

    path = Path(directory) / str(step) / "meta" / "metadata"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise DamagedCheckpoint(directory, step, "its record (meta/metadata)") from None


def restore(directory: str | Path, like: Any, step: int | None = None,
            notice: Callable[[str], None] | None = None) -> tuple[Any, dict]:
    """Restore (state, meta) of `step`, or of the newest checkpoint that can be read; `like`
    gives the tree structure, shapes and dtypes (e.g. a freshly initialised state). Without
    `step`, damaged newer checkpoints are skipped with one line naming them, given to `notice`
    (default: printed to stderr). Raises
    CheckpointError with a one-line reason if the checkpoint is missing, damaged (every one,
    without `step`) or of another shape."""
    directory = Path(directory)
    available = steps(directory)
    if step is not None:
        if step not in available:
            raise CheckpointError(f"no checkpoint {step} in {directory} (available: "
                                  f"{', '.join(map(str, available)) or 'none'})")
        return _restore_step(directory, like, step)
    if not available:
        raise CheckpointError(f"no checkpoint in {directory}")
    damaged: list[DamagedCheckpoint] = []
    for step in reversed(available):
        try:
            state, meta = _restore_step(directory, like, step)
        except DamagedCheckpoint as err:
            damaged.append(err)
            continue
        if damaged:
            plural = "s" * (len(damaged) > 1)
            (notice or _print_notice)(
                f"the checkpoint{plural} at env step{plural} {', '.join(str(err.step) for err in damaged)} in "
                f"{directory} cannot be read ({'; '.join(f'{err.part} of {err.step}' for err in damaged)}); "
                f"using the one at env step {step}")
        return state, meta
    raise CheckpointError(f"no checkpoint in {directory} can be read (the newest: {damaged[0]})")


def _print_notice(text: str) -> None:
    print(f"rlcli: {text}", file=sys.stderr)


def set_aside_after(directory: str | Path, step: int) -> list[Path]:
    """Rename the checkpoints newer than `step` (damaged ones a resume skipped) to
    `<step>.damaged`, so that training writes those steps anew; returns the new paths."""
    moved = []
    for newer in (s for s in steps(directory) if s > step):
        source = Path(directory) / str(newer)
        target, n = source.with_name(f"{newer}.damaged"), 1
        while target.exists():
            target, n = source.with_name(f"{newer}.damaged-{n}"), n + 1
        source.rename(target)
        moved.append(target)
    return moved


def _restore_step(directory: Path, like: Any, step: int) -> tuple[Any, dict]:
    meta = read_meta(directory, step)
    try:
        with quiet_stderr(), manager(directory, keep=1_000_000) as mngr:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(storable(like)), meta=ocp.args.JsonRestore()))
    except Exception as err:
        text = str(err).split(" [tensorstore_spec")[0].strip()
        if "not compatible with the stored shape" in text or "tree structure" in text.lower():
            raise CheckpointError(f"checkpoint {directory / str(step)} does not fit this config: "
                                  f"{text.splitlines()[0]}") from None
        ignore_stray_coroutines()
        raise DamagedCheckpoint(directory, step, "its array data") from None
    return from_storable(restored.state, like), meta


def ignore_stray_coroutines() -> None:
    """A failed restore can leave one of orbax's metadata coroutines never awaited; when it is
    collected (often at exit) Python warns on stderr, which would add lines to the one-line
    error. Silence that one warning for the rest of the process."""
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)


@contextlib.contextmanager
def quiet_stderr():
    """When a save or restore fails, tensorstore's reader threads go on completing futures for orbax's
    closed event loop and print a traceback each, straight to file descriptor 2. Send fd 2 to
    a scratch file meanwhile, so the user sees the one-line error instead; lines rlcli itself
    wrote meanwhile (a stop signal's notice) are passed on."""
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
            scratch.seek(0)  # rlcli's own lines written meanwhile (a signal's notice) still reach the user
            for line in scratch:
                if line.startswith(b"rlcli"):
                    os.write(2, line)
