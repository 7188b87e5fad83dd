"""Process settings: the only module that touches `os.environ` or `jax.config`.

* Threads: `threads=T` caps XLA's CPU thread pool (NPROC) for jobs that run side by side.
* Host devices: one jitted program runs on about one core of XLA's CPU client, so the
  process asks XLA for one CPU device per core it may use
  (`--xla_force_host_platform_device_count`, set before JAX starts its backend; with
  `threads=T` or NPROC=T, T devices), and the seeds of `num_seeds=K` are split over them
  (rlcli.xla.shard_seeds).
* JAX's persistent compilation cache (`compile_cache`).
* Unrolled threefry: JAX lowers its threefry2x32 hash (every `jax.random` call) to a
  five-iteration while loop on the CPU, to compile faster; in rlcli's scanned programs that
  loop runs at every env step, and its iterations cost more than the hash.
  `unroll_threefry` registers a straight-line lowering of the same hash on the CPU, as JAX
  does on GPUs, through JAX's public extension API: the same bits, faster runs and compiles.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from rlcli.errors import ConfigError
from rlcli.rules import format_value, optional_int_at_least

HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
_DEVICES_MARK = "RLCLI_HOST_DEVICES"  # set beside our flag, so that a child process knows the flag is ours


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_host_devices() -> None:
    """Ask XLA for one CPU device per core this process may use, by adding the flag to
    XLA_FLAGS; call it before JAX starts its backend. The count is NPROC when it is set (by
    `threads=`, or by the user: the size of XLA's CPU thread pool), else the usable cores. A
    count the user put in XLA_FLAGS is left alone; one this module set (in a parent process)
    is replaced."""
    flags = os.environ.get("XLA_FLAGS", "")
    if HOST_DEVICES_FLAG in flags and _DEVICES_MARK not in os.environ:
        return  # the user's own
    nproc = os.environ.get("NPROC", "")
    count = int(nproc) if nproc.isdigit() and int(nproc) > 0 else usable_cores()
    flags = re.sub(rf"\s*{HOST_DEVICES_FLAG}=\S*", "", flags).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICES_FLAG}={count}".strip()
    os.environ[_DEVICES_MARK] = str(count)


_UNSET = object()
_applied = _UNSET  # the `threads` this process last applied (None: no limit)
_THREADS_MARK = "RLCLI_THREADS"  # set with the variables below, so that a child process knows they are ours


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps a process at `threads` compute threads: NPROC sizes the thread
    pool of XLA's CPU client (read when JAX starts its backend), and JAX does not preallocate
    75% of GPU memory, so that jobs can share a GPU."""
    return {"NPROC": str(threads), "XLA_PYTHON_CLIENT_PREALLOCATE": "false", _THREADS_MARK: str(threads)}


def threads_of(cfg) -> int | None:
    """The config's `threads`: None (no limit; also when the key is missing, as in runs saved
    before it existed) or an int >= 1; anything else raises ConfigError."""
    value = cfg.get("threads")
    rule = optional_int_at_least(1)
    if not rule.ok(value):
        raise ConfigError(f"threads={format_value(value)} is not allowed (allowed: {rule.allowed})")
    return None if value is None else int(value)


def _jax_started() -> bool:
    """Whether this process has started a JAX backend (its thread pool is then fixed)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(bridge is not None and bridge.backends_are_initialized())


def limit_threads(cfg) -> None:
    """Apply the config's `threads` to this process: call it before the process starts JAX's
    backend (importing jax is fine). Once the backend runs, the same value is accepted and
    another raises ConfigError, as the pool cannot be resized. With `threads: null` the
    variables that an rlcli parent process set (and this process inherited) are removed."""
    global _applied
    threads = threads_of(cfg)
    if _jax_started():
        if _applied == threads or (_applied is _UNSET and threads is None):
            return
        had = "no limit" if _applied in (_UNSET, None) else f"threads={_applied}"
        raise ConfigError(
            f"threads={'null' if threads is None else threads} cannot be applied: this process "
            f"already started JAX with {had} (allowed: the same threads for all jobs of a "
            "process; for different values a launcher with a process per job, e.g. "
            "hydra/launcher=submitit_local)")
    if threads is not None:
        os.environ.update(thread_env(threads))
    elif _THREADS_MARK in os.environ:
        for key in thread_env(int(os.environ[_THREADS_MARK])):
            os.environ.pop(key, None)
    set_host_devices()  # one CPU device per core it may use: seeds train in parallel
    _applied = threads


def cache_dir_of(cfg) -> Path | None:
    """The config's `compile_cache` as a directory: `auto` (also when the key is missing, as in
    runs saved before it existed) is $XDG_CACHE_HOME/rlcli/jax (~/.cache/rlcli/jax), null
    turns the cache off, any other string is the directory; anything else raises ConfigError."""
    value = cfg.get("compile_cache", "auto")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"compile_cache={format_value(value)} is not allowed (allowed: "
                                 "auto, null, or a directory path)")
    if value == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "rlcli" / "jax"
    path = Path(os.path.expanduser(value))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"compile_cache={value!r} is not allowed (allowed: auto, null, or a "
                                 "directory path; this one is a file)")
    return path


def use_compilation_cache(cfg) -> None:
    """Turn on JAX's persistent compilation cache in the config's `compile_cache` directory, so
    a second run of the same programs (a sweep's next job, a rerun, `rlcli eval`) loads them
    instead of compiling: every program is cached, however fast it compiled. The first
    directory set in a process stays (JAX opens its cache once); JAX_COMPILATION_CACHE_DIR in
    the environment wins over the config."""
    import jax

    directory = cache_dir_of(cfg)
    if directory is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_unrolled = False


def _rotate_left(x, bits: int):
    import numpy as np
    from jax import lax

    return lax.shift_left(x, np.uint32(bits)) | lax.shift_right_logical(x, np.uint32(32 - bits))


def threefry2x32_unrolled(key1, key2, x1, x2):
    """The Threefry-2x32 hash with 20 rounds (Salmon et al. 2011), straight-line: the bits of
    `jax.extend.random.threefry_2x32` (tests/test_runtime.py)."""
    import numpy as np

    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
    x = [x1 + ks[0], x2 + ks[1]]
    for i in range(5):
        for r in rotations[i % 2]:
            x[0] = x[0] + x[1]
            x[1] = x[0] ^ _rotate_left(x[1], r)
        x = [x[0] + ks[(i + 1) % 3], x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)]
    return tuple(x)


def unroll_threefry() -> bool:
    """Lower jax.random's threefry2x32 hash without a loop on the CPU (idempotent); True once
    the lowering is registered."""
    global _unrolled
    if not _unrolled:
        from jax.extend.random import threefry2x32_p
        from jax.interpreters import mlir

        mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32_unrolled, multiple_results=True),
                               platform="cpu")
        _unrolled = True
    return _unrolled
