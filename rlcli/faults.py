"""Faults while training: NaN detection inside the compiled programs, divergence reports,
stop signals, and the one-line reasons of failed writes. The errors and exit codes
themselves are in rlcli.errors."""

from __future__ import annotations

import re
import signal
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rlcli.errors import EXIT_DIVERGED, Interrupted, RunError
from rlcli.types import ChunkOut


def first_nonfinite(stacked: dict, xp=jnp) -> dict:
    """For metrics stacked over updates (axis 0), the index of the first non-finite value, or
    -1 (numpy on the host loop, jax inside the compiled chunk)."""
    out = {}
    for name, values in stacked.items():
        bad = ~xp.isfinite(values)
        out[name] = xp.where(bad.any(axis=0), xp.argmax(bad, axis=0), -1)
    return out


def all_finite(tree, xp=jnp):
    return xp.all(xp.stack([xp.all(xp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# host loops: [S] bool, every parameter of seed i finite (one program, not an eager op per leaf)
all_params_finite = jax.jit(jax.vmap(all_finite))


def checked(fn):
    """`debug.nan_check`: checkify `fn` so that the first primitive producing a NaN is reported
    with its source line (slower; only for debugging)."""
    from jax.experimental import checkify

    return checkify.checkify(fn, errors=checkify.nan_checks)


def raise_checked(result):
    """Unwrap the result of a `checked` function, raising RunError at a NaN; plain results pass."""
    from jax.experimental import checkify

    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], checkify.Error):
        error, result = result
        if error.get():
            raise RunError(f"debug.nan_check: {_describe_nan(error.get_exception())}", EXIT_DIVERGED)
    return result


def _describe_nan(exc) -> str:
    """'<primitive> at <file:line> (<function>)' for the innermost frame outside jax, plus the
    innermost rlcli frame when that is another one."""
    frames = [f for f in getattr(getattr(exc, "traceback_info", None), "frames", [])
              if "/jax/" not in f.file_name and "/jaxlib/" not in f.file_name]

    def where(frame) -> str:
        parts = Path(frame.file_name).parts
        short = "/".join(parts[-3:]) if "site-packages" in parts else str(Path(frame.file_name).name)
        if "rlcli" in parts:
            short = "/".join(parts[parts.index("rlcli"):])
        return f"{short}:{frame.line_num} ({frame.function_name})"

    text = f"the first NaN was produced by the primitive '{getattr(exc, 'prim', '?')}'"
    if frames:
        text += f" at {where(frames[0])}"
        ours = next((f for f in frames if "rlcli" in Path(f.file_name).parts), None)
        if ours is not None and ours is not frames[0]:
            text += f", called from {where(ours)}"
    return text


class StopSignals:
    """While training, the first SIGINT or SIGTERM asks the loop to stop after the current
    chunk and write a checkpoint; a second one interrupts at once (Interrupted, exit code 128 +
    that signal, no checkpoint of the current chunk). Only the main thread can own signal
    handlers, elsewhere this does nothing."""

    def __init__(self, run_dir: Path | None = None):
        self.received: int | None = None
        self._previous: dict = {}
        self._run_dir = run_dir

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            resume = f" (continue with: rlcli resume run={self._run_dir})" if self._run_dir else ""
            raise Interrupted(f"stopped at once by a second {signal.Signals(signum).name}; no checkpoint was "
                              f"written for the current chunk, the newest complete one stays{resume}", signum)
        self.received = signum
        sys.stderr.write(f"rlcli: {signal.Signals(signum).name} received: stopping after the "
                         "current chunk and writing a checkpoint (send it again to stop at once)\n")

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def first_divergence(out: ChunkOut, seeds, updates_before: int, num_updates: int) -> tuple[int, str, int] | None:
    """(update, metrics, seed) of the first update in the chunk with a non-finite metric (all
    such metrics of that update, comma-separated), or None."""
    found: dict[tuple[int, int], list[str]] = {}
    for name, index in out.first_nonfinite.items():
        index = np.asarray(index)
        for i in np.flatnonzero(index >= 0):
            found.setdefault((updates_before + int(index[i]) + 1, seeds[i]), []).append(name)
    for i in np.flatnonzero(~np.asarray(out.params_finite)):
        found.setdefault((updates_before + num_updates, seeds[i]), []).append("params")
    if not found:
        return None
    update, seed = min(found)
    return update, ", ".join(sorted(found[update, seed])), seed


def os_error(err: Exception) -> str:
    """'[Errno N] reason' from an OSError or from the text of tensorstore's wrapped one."""
    if isinstance(err, OSError):
        return f"[Errno {err.errno}] {err.strerror}" if err.errno else str(err)
    match = re.search(r":\s*([^:\[\]]+?)\s*\[os_error_code='?(\d+)'?\]", str(err))
    if match:
        return f"[Errno {match.group(2)}] {match.group(1)}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def resume_hint(run_dir: Path, last_saved: int | None) -> str:
    if last_saved is None:
        return "no checkpoint was written"
    return f"the last good checkpoint is at env step {last_saved} (continue with: rlcli resume run={run_dir})"
