"""Process-level XLA settings that make rlcli's programs fast on a CPU.

* Host devices: one jitted program runs on about one core of XLA's CPU client, so the
  process asks XLA for one CPU device per core it may use
  (`--xla_force_host_platform_device_count`, set before JAX starts its backend; with
  `threads=T` or NPROC=T, T devices), and `shard_seeds` splits the seed axis of the run's
  state over them: the seeds of `num_seeds=K` then train in parallel, one device per core,
  with no flags from the user. Where `jax.devices()` are accelerators, the same code would
  split the seeds over them (not yet tried on a multi-GPU machine).
* Unrolled threefry: JAX lowers its threefry2x32 hash (every `jax.random` call) to a
  five-iteration while loop on the CPU, to compile faster; in rlcli's scanned programs that
  loop runs at every env step, and its iterations cost more than the hash. `unroll_threefry`
  lowers it straight-line, as JAX does on GPUs: the same bits, faster runs and compiles.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("rlcli")

HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
_MARK = "RLCLI_HOST_DEVICES"  # set beside our flag, so that a child process knows the flag is ours


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
    if HOST_DEVICES_FLAG in flags and _MARK not in os.environ:
        return  # the user's own
    nproc = os.environ.get("NPROC", "")
    count = int(nproc) if nproc.isdigit() and int(nproc) > 0 else usable_cores()
    flags = re.sub(rf"\s*{HOST_DEVICES_FLAG}=\S*", "", flags).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICES_FLAG}={count}".strip()
    os.environ[_MARK] = str(count)


def seed_devices(num_seeds: int) -> int:
    """How many of this process's devices the seeds are split over: the most that divide
    `num_seeds` evenly (1 for one seed)."""
    import jax

    available = jax.device_count()
    return max(d for d in range(1, min(available, num_seeds) + 1) if num_seeds % d == 0)


def shard_seeds(tree, num_seeds: int):
    """Place `tree` (leading axis: seeds) split over `seed_devices(num_seeds)` devices; the
    jitted programs that take it follow its sharding (each device runs its seeds)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    count = seed_devices(num_seeds)
    if count == 1:
        return tree
    mesh = Mesh(np.array(jax.devices()[:count]), ("seeds",))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("seeds")))


def devices_of(state) -> int:
    """How many devices hold the run's state (1 for host arrays)."""
    import jax

    leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    return max((len(x.sharding.device_set) for x in leaves), default=1)


_unrolled = False


def unroll_threefry() -> bool:
    """Lower jax.random's threefry2x32 hash without a loop on the CPU (idempotent). Returns
    whether the unrolled lowering is in place; with a JAX whose internals moved it logs
    why and keeps JAX's own lowering (same numbers, slower)."""
    global _unrolled
    if not _unrolled:
        try:
            from jax._src.interpreters import mlir
            from jax._src.random import threefry2x32

            mlir.register_lowering(threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_lowering_rule,
                                   platform="cpu")
            _unrolled = True
        except (ImportError, AttributeError) as err:
            log.debug("keeping JAX's rolled threefry lowering: %s", err)
    return _unrolled
