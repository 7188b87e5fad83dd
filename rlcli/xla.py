"""XLA programs of a run: seeds split over the host's devices, traced programs kept, packed
trees. (The process settings they rely on, host devices and the unrolled threefry, are in
rlcli.runtime.)

* Seeds over devices: `shard_seeds` splits the seed axis of the run's state over the
  process's devices (one CPU device per usable core, rlcli.runtime.set_host_devices): the
  seeds of `num_seeds=K` then train in parallel, one device per core, with no flags from the
  user. Where `jax.devices()` are accelerators, the same code would split the seeds over them
  (not yet tried on a multi-GPU machine).
* Traced programs kept: JAX's persistent compilation cache skips compiling on a rerun, but
  JAX must still trace every program to find its cache key (about 1.5 s for a PPO chunk).
  `lower_cached` keeps each traced program beside that cache as serialized StableHLO
  (`jax.export`, no pickle), keyed by everything that shapes it, and lowers a rerun's program
  from it without tracing.
* Compiling beside tracing and training: `Compiler` compiles a loop's programs in threads.
* Packed trees: every array passed to or returned from a jitted call costs its dispatch about
  7 us on the CPU (a 12-array parameter tree: 103 us, the same parameters as one array:
  25 us). A host loop that calls the device at every env step passes its state through
  `tree_packer` as one 1-D array per dtype.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("rlcli")

def seed_devices(num_seeds: int) -> int:
    """How many of this process's devices the seeds are split over: the most that divide
    `num_seeds` evenly (1 for one seed)."""
    import jax

    available = jax.device_count()
    return max(d for d in range(1, min(available, num_seeds) + 1) if num_seeds % d == 0)


def seed_sharding(num_seeds: int):
    """The sharding of a run's state (leading axis: seeds): split over `seed_devices(num_seeds)`
    devices, or, on one device, the default device."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

    count = seed_devices(num_seeds)
    if count == 1:
        return SingleDeviceSharding(jax.devices()[0])
    return NamedSharding(Mesh(np.array(jax.devices()[:count]), ("seeds",)), PartitionSpec("seeds"))


def shard_seeds(tree, num_seeds: int):
    """Place `tree` (leading axis: seeds) split over `seed_devices(num_seeds)` devices; the
    jitted programs that take it follow its sharding (each device runs its seeds)."""
    import jax

    if seed_devices(num_seeds) == 1:
        return tree
    return jax.device_put(tree, seed_sharding(num_seeds))


def seed_shapes(tree, num_seeds: int):
    """The shapes and dtypes of `tree` (arrays or jax.ShapeDtypeStruct, leading axis: seeds)
    with the sharding `shard_seeds` gives the arrays: what a program is lowered for before
    the arrays exist, or after they were donated."""
    import jax

    sharding = seed_sharding(num_seeds)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def devices_of(state) -> int:
    """How many devices hold the run's state (1 for host arrays)."""
    import jax

    leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    return max((len(x.sharding.device_set) for x in leaves), default=1)


# ---- traced programs kept beside the compilation cache -------------------------------------

PROGRAMS_DIR = "rlcli-programs"  # under JAX's compilation cache directory
# config keys that do not shape any program: seeds enter the programs as key arrays (tested)
_NOT_IN_PROGRAMS = ("seed", "logger", "checkpoint_interval", "checkpoint_keep", "compile_cache", "hydra")
_registered: set = set()


def package_versions(dists) -> dict:
    """{distribution: installed version, or None}."""
    from importlib import metadata

    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


@functools.lru_cache(maxsize=None)
def _source_digest() -> str:
    """sha256 of rlcli's Python sources: an edited source never meets a program traced before."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def program_key(name: str, cfg, args) -> str:
    """What shapes the program `name` traced for `args` under `cfg`: rlcli's sources, the
    versions of its libraries, the devices and XLA flags, every `jax.config` value, the config
    (less the keys of `_NOT_IN_PROGRAMS`), and the tree, shapes, dtypes and shardings of the
    arguments."""
    import jax
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_IN_PROGRAMS:
        conf.pop(key, None)
    leaves, tree = jax.tree.flatten(args)
    material = {
        "name": name, "rlcli": _source_digest(),
        "versions": package_versions(("jax", "jaxlib", "flax", "optax", "gymnax", "numpy")),
        "devices": [f"{d.platform}:{d.id}:{d.device_kind}" for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "config": conf, "tree": str(tree),
        # every process-wide jax.config value (x64, the PRNG implementation, matmul precision, ...)
        "jax_config": {k: repr(v) for k, v in sorted(jax.config.values.items())},
        "args": [(tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)),
                  str(getattr(x, "sharding", None))) for x in leaves],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _node_types(*treedefs) -> dict:
    """{class: aux data} of every node of `treedefs` that is not a builtin container."""
    found: dict = {}
    stack = list(treedefs)
    while stack:
        treedef = stack.pop()
        data = treedef.node_data()
        if data is not None and data[0] not in (tuple, list, dict, type(None)):
            found.setdefault(data[0], data[1])
        stack.extend(treedef.children())
    return found


def _register(cls, aux) -> None:
    """Let `jax.export` serialize node type `cls` under its module-qualified name: a NamedTuple,
    or a pytree class without static fields (aux () or None, as gymnax's env states); raises
    ValueError for others."""
    from jax import export

    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls in _registered:
        return
    namedtuple = issubclass(cls, tuple) and hasattr(cls, "_fields")
    if not namedtuple and aux not in ((), None):
        raise ValueError(f"{name} has static fields {aux!r}")

    def serialize(value):
        if value != aux:
            raise ValueError(f"{name} with static fields {value!r}")
        return b""

    try:
        if namedtuple:
            export.register_namedtuple_serialization(cls, serialized_name=name)
        else:
            export.register_pytree_node_serialization(cls, serialized_name=name, serialize_auxdata=serialize,
                                                      deserialize_auxdata=lambda _: aux)
    except ValueError:  # registered already, by this module or another
        pass
    _registered.add(cls)


def _register_listed(types: list) -> None:
    """Register the node types a kept program lists (module, qualified name, aux)."""
    import importlib

    for module, qualname, aux in types:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        _register(cls, {"()": (), "None": None}[aux])


def programs_dir() -> Path | None:
    """Where traced programs are kept: beside JAX's persistent compilation cache (None when it
    is off, as the programs would then compile cold on every run anyway)."""
    import jax

    directory = jax.config.jax_compilation_cache_dir
    if not directory or "://" in str(directory):
        return None
    return Path(directory) / PROGRAMS_DIR


def lower_cached(jitted, args: tuple, *, name: str, cfg, donate_argnums=()):
    """`jitted.lower(*args)`, through the kept programs: a program kept under the same
    `program_key` is read instead of traced; otherwise it is traced with `jax.export` and
    kept (written to a temporary file, then renamed), with the node types of its argument and
    result trees listed beside it (`<program>.types.json`, registered before it is read).
    Either way the returned program is `jax.export`'s, so the compilation cache holds the same
    program for both. With no compilation cache, or a program `jax.export` cannot serialize,
    it is `jitted.lower`."""
    import jax
    from jax import export

    directory = programs_dir()
    if directory is None:
        return jitted.lower(*args)
    path = directory / f"{name}-{program_key(name, cfg, args)}.jaxexport"
    types_path = path.with_name(path.name + ".types.json")
    exported = None
    if path.is_file():
        try:
            _register_listed(json.loads(types_path.read_text()))
            exported = export.deserialize(bytearray(path.read_bytes()))
        except Exception as err:  # unreadable or from another version: traced again below
            log.info("kept program %s not used (traced again): %s", path, err)
    if exported is None:
        try:
            exported = export.export(jitted)(*args)
            types = _node_types(exported.in_tree, exported.out_tree)
            for cls, aux in types.items():
                _register(cls, aux)
            data = exported.serialize()
            # what a rerun reads (a result's weak type, for one, is not kept): the same program
            # for the first run as for the next, and the same arguments for the programs after it
            exported = export.deserialize(bytearray(data))
        except Exception as err:
            log.info("program %s traced without export (not kept): %s", name, err)
            return jitted.lower(*args)
        listed = [[cls.__module__, cls.__qualname__, repr(aux)] for cls, aux in types.items()]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for target, content in ((types_path, json.dumps(listed).encode()), (path, data)):
                temporary = target.with_name(f".{target.name}.{os.getpid()}")
                temporary.write_bytes(content)
                temporary.replace(target)
        except OSError as err:
            log.info("program %s not kept: %s", path, err)
    return jax.jit(exported.call, donate_argnums=donate_argnums).lower(*args)


# ---- compiling beside tracing and training ----------------------------------------------------


class Compiler:
    """Compiles a loop's programs in threads, side by side and beside training: XLA's compiler
    releases the GIL, so on two or more cores a program compiles while the next is traced or
    while chunks run. `submit(name, lower)` traces now (`lower()`, Python) and compiles in a
    thread; `defer(name, lower)` does both only once `release()` is called (where training
    leaves a core free); `get(name, lower)` returns the compiled program, waiting for one
    submitted or released, or lowering and compiling it now. `programs` holds them by name."""

    def __init__(self, threads: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(threads)
        self.futures: dict = {}
        self.deferred: dict = {}
        self.programs: dict = {}

    def submit(self, name, lower) -> None:
        self.futures[name] = self.pool.submit(lower().compile)

    def defer(self, name, lower) -> None:
        self.deferred[name] = lower

    def release(self) -> None:
        for name, lower in self.deferred.items():
            self.futures[name] = self.pool.submit(lambda lower=lower: lower().compile())
        self.deferred.clear()

    def started(self) -> bool:
        return bool(self.futures or self.deferred or self.programs)

    def get(self, name, lower=None):
        if name not in self.programs:
            if name in self.deferred:
                self.release()
            future = self.futures.pop(name, None)
            if future is not None:
                self.programs[name] = future.result()
            elif lower is None:
                return None
            else:
                self.programs[name] = lower().compile()
        return self.programs[name]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---- trees as a few arrays ------------------------------------------------------------------


def tree_packer(example, max_packed: int = 1 << 16):
    """(pack, unpack) for trees shaped like `example`, both jittable. `pack(tree)` is
    `(flat, large)`: `flat` holds one 1-D array per dtype, the leaves of fewer than
    `max_packed` elements raveled one after another; `large` the other leaves as they are (a
    replay buffer would otherwise be copied whole at every pack). `unpack` inverts it."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    leaves, treedef = jax.tree.flatten(example)
    meta = [(tuple(np.shape(x)), np.dtype(x.dtype), int(np.size(x))) for x in leaves]  # shape, dtype, size
    dtypes = sorted({dtype for _, dtype, size in meta if size < max_packed}, key=str)

    def pack(tree):
        leaves = jax.tree.leaves(tree)
        flat = tuple(jnp.concatenate([jnp.ravel(x) for x, (_, d, size) in zip(leaves, meta)
                                      if size < max_packed and d == dtype]) for dtype in dtypes)
        return flat, tuple(x for x, (_, _, size) in zip(leaves, meta) if size >= max_packed)

    def unpack(packed):
        flat, large = packed
        flat, offset, large, out = dict(zip(dtypes, flat)), dict.fromkeys(dtypes, 0), iter(large), []
        for shape, dtype, size in meta:
            if size < max_packed:
                out.append(flat[dtype][offset[dtype]:offset[dtype] + size].reshape(shape))
                offset[dtype] += size
            else:
                out.append(next(large))
        return jax.tree.unflatten(treedef, out)

    return pack, unpack
