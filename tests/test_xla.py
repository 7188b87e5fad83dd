"""Process-level XLA settings (rlcli/xla.py): seeds sharded over host devices, the unrolled
threefry lowering, trees packed into a few arrays."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compose, rlcli_executable, train
from rlcli import runtime, xla

RANDOM = """
import jax, jax.numpy as jnp, numpy as np
key = jax.random.PRNGKey(7)
out = {
    "split": jax.random.key_data(jax.random.split(key, 5)) if hasattr(jax.random, "key_data") else jax.random.split(key, 5),
    "uniform": jax.random.uniform(key, (6,)),
    "categorical": jax.random.categorical(key, jnp.log(jnp.array([0.2, 0.3, 0.5])), shape=(9,)),
    "permutation": jax.random.permutation(key, 10),
    "normal": jax.jit(lambda k: jax.random.normal(k, (4,)))(key),
}
"""


def _random_numbers() -> dict:
    scope: dict = {}
    exec(RANDOM, scope)
    return {k: np.asarray(v).tolist() for k, v in scope["out"].items()}


@pytest.mark.parametrize("key, count, expected", [
    # Random123's known-answer vectors of Threefry-2x32 with 20 rounds (as in JAX's own tests)
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_the_unrolled_hash_gives_the_known_answers(key, count, expected):
    args = [jnp.asarray(np.uint32(v)) for v in (*key, *count)]
    assert tuple(int(x) for x in runtime.threefry2x32_unrolled(*args)) == expected


def test_unrolled_threefry_gives_jaxs_own_bits_without_a_loop():
    """With rlcli's lowering the random numbers are bit for bit those of JAX's own lowering
    (computed in a fresh interpreter that never imports rlcli), and a key split compiles to a
    program without a while loop."""
    assert runtime.unroll_threefry()
    reference = subprocess.run(
        [sys.executable, "-c", RANDOM + "import json; print(json.dumps({k: np.asarray(v).tolist() "
         "for k, v in out.items()}))"], capture_output=True, text=True, timeout=300, check=True)
    assert _random_numbers() == json.loads(reference.stdout.strip().splitlines()[-1])
    text = jax.jit(lambda k: jax.random.split(k, 3)).lower(jax.random.PRNGKey(0)).compile().as_text()
    assert " while(" not in text


def test_set_host_devices_adds_replaces_and_respects_the_users_flag(monkeypatch):
    monkeypatch.setattr(os, "environ", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", "NPROC": "3"})
    runtime.set_host_devices()  # NPROC (set by threads=3 or by the user): 3 devices
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=3"
    del os.environ["NPROC"]
    runtime.set_host_devices()  # ours: replaced, one per usable core
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                       f"--xla_force_host_platform_device_count={runtime.usable_cores()}")
    monkeypatch.setattr(os, "environ", {"XLA_FLAGS": "--xla_force_host_platform_device_count=5", "NPROC": "2"})
    runtime.set_host_devices()  # the user's: kept
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=5"


def test_seed_devices_divide_the_seeds(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    assert [xla.seed_devices(k) for k in (1, 2, 3, 4, 6, 8, 9)] == [1, 2, 3, 4, 3, 4, 3]


@pytest.mark.extended
def test_the_cli_trains_seeds_on_two_host_devices_without_flags(tmp_path):
    """`rlcli train ... threads=2 num_seeds=2` with no XLA_FLAGS: the process asks for two CPU
    devices and each seed's state lives on its own; every seed's metrics equal those of its
    single-seed run on one device (to float32 rounding; the single-seed runs are in this
    process, where a run of one seed is not sharded)."""
    common = ["algo=ppo", "env=CartPole-v1", "total_steps=4096", "num_envs=4", "algo.num_steps=64",
              "log_interval=1024", "eval_episodes=2", "logger=quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime._DEVICES_MARK)}
    result = subprocess.run([rlcli_executable(), "train", *common, "threads=2", "num_seeds=2",
                             f"hydra.run.dir={tmp_path / 'two'}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "the seeds train on 2 devices in parallel" in result.stderr + result.stdout
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["seed_devices"] == 2
    from rlcli.logger import read_metrics

    both = read_metrics(tmp_path / "two")
    for seed in (0, 1):
        summary, single = train(tmp_path, [*common, f"seed={seed}"], name=str(seed))
        assert summary["seed_devices"] == 1
        mine = [r for r in both if r["seed_index"] == seed]
        assert len(mine) == len(single) == 4
        for a, b in zip(mine, single):
            keys = set(b) - {"wall_time", "perf/steps_per_s", "seed_index"}
            assert {"loss/total", "policy/entropy", "episode/return"} <= keys == set(a) - {"wall_time", "perf/steps_per_s", "seed_index"}
            for key in keys:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_in_process_runs_shard_seeds_over_the_test_sessions_devices(tmp_path):
    """The test session asks for two host devices (conftest.py), as the CLI does on a
    two-core machine: a 2-seed run's summary says so."""
    assert jax.device_count() == 2
    summary, _ = train(tmp_path, ["algo=a2c", "env=CartPole-v1", "total_steps=1024", "num_envs=4",
                                  "num_seeds=2", "eval_episodes=1"])
    assert summary["seed_devices"] == 2
    assert jnp.asarray(summary["final_eval"]["return_mean"]).shape == (2,)


def test_tree_packer_round_trips_mixed_dtypes_and_keeps_large_leaves_apart():
    """One 1-D array per dtype of the small leaves, in leaf order, scalars included; a leaf of
    max_packed elements or more passes through as itself; unpack(pack(tree)) is the tree bit for
    bit, also under jit."""
    from typing import NamedTuple

    class State(NamedTuple):
        params: dict
        count: jax.Array
        key: jax.Array
        done: jax.Array
        buffer: jax.Array

    tree = State({"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7, "b": jnp.float32(-1.5)},
                 jnp.int32(42), jax.random.split(jax.random.PRNGKey(3), 2), jnp.array([True, False]),
                 jnp.ones((40, 2), jnp.float32))
    pack, unpack = xla.tree_packer(tree, max_packed=64)
    flat, large = pack(tree)
    by_dtype = {str(x.dtype): np.asarray(x) for x in flat}
    assert sorted(by_dtype) == ["bool", "float32", "int32", "uint32"]
    # leaves in jax.tree order: params (dict keys sorted: b, w), count, key, done
    np.testing.assert_array_equal(by_dtype["float32"], np.r_[np.float32(-1.5), np.asarray(tree.params["w"]).ravel()])
    np.testing.assert_array_equal(by_dtype["int32"], [42])
    np.testing.assert_array_equal(by_dtype["uint32"], np.asarray(tree.key).ravel())
    np.testing.assert_array_equal(by_dtype["bool"], [True, False])
    assert len(large) == 1 and large[0] is tree.buffer
    for back in (unpack((flat, large)), jax.jit(lambda t: unpack(pack(t)))(tree)):
        assert jax.tree.structure(back) == jax.tree.structure(tree)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_seed_and_eval_keys_equal_per_seed_prng_keys_in_one_call():
    from types import SimpleNamespace

    from rlcli import rollout

    # jax.random.PRNGKey(seed + i) for a Python int, which wraps at 2^32 (here from 2^32 - 2)
    for seed in (0, 7, 2**31 - 1, 2**32 - 2):
        cfg = SimpleNamespace(seed=seed, num_seeds=4)
        expected = np.stack([np.asarray(jax.random.PRNGKey(seed + i)) for i in range(4)])
        np.testing.assert_array_equal(np.asarray(rollout.seed_keys(cfg)), expected)
        for index in (0, 3):
            expected = np.stack([np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed + i), 1_000_003 + index))
                                 for i in range(4)])
            np.testing.assert_array_equal(np.asarray(rollout.eval_keys(cfg, index)), expected)


def test_init_seeds_maps_on_the_cpu_and_batches_on_an_accelerator(monkeypatch):
    from rlcli import rollout

    def init_one(key):
        return jax.random.normal(key, (3,))

    def primitives(keys):
        return {eqn.primitive.name for eqn in jax.make_jaxpr(lambda k: rollout.init_seeds(init_one, k))(keys).eqns}

    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(4)])
    expected = np.stack([np.asarray(jax.random.normal(k, (3,))) for k in keys])
    on_cpu, cpu_ops = rollout.init_seeds(init_one, keys), primitives(keys)
    monkeypatch.setattr(rollout.jax, "default_backend", lambda: "gpu")
    batched, gpu_ops = rollout.init_seeds(init_one, keys), primitives(keys)
    np.testing.assert_allclose(np.asarray(on_cpu), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(batched), expected, rtol=1e-6)
    assert "scan" in cpu_ops and "scan" not in gpu_ops  # a sequential loop on the CPU only


def test_per_seed_runs_one_seed_unbatched_and_vmaps_more():
    from rlcli import rollout

    fn = lambda x, y: {"s": x.sum() + y, "x": 2 * x}  # noqa: E731
    one = rollout.per_seed(fn, 1)(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([10.0]))
    np.testing.assert_array_equal(np.asarray(one["s"]), [16.0])
    np.testing.assert_array_equal(np.asarray(one["x"]), [[2.0, 4.0, 6.0]])
    two = rollout.per_seed(fn, 2)(jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]), jnp.array([10.0, 20.0]))
    np.testing.assert_array_equal(np.asarray(two["s"]), [16.0, 21.0])
    # one seed: the product runs on the seed's [2, 3] slice, not batched over a seed axis of 1
    eqns = jax.make_jaxpr(rollout.per_seed(lambda x: x @ x.T, 1))(jnp.ones((1, 2, 3))).eqns
    assert [e.outvars[0].aval.shape for e in eqns if e.primitive.name == "dot_general"] == [(2, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("num_seeds", [pytest.param(1, marks=pytest.mark.extended), pytest.param(2, marks=pytest.mark.extended)])
def test_programs_compiled_beside_init_match_programs_compiled_after_it(num_seeds):
    """`init(prepare=True)` lowers the chunk and evaluation programs from the init program's
    output shapes and compiles them while init compiles; the last, shorter chunk program
    compiles once training starts. Every chunk and evaluation gives the numbers of the
    programs compiled from the arrays after init (`init()`, then `compile`)."""
    from rlcli import train as training

    cfg = compose(["algo=ppo", "env=CartPole-v1", "num_envs=4", "algo.num_steps=16", "total_steps=640",
                   "log_interval=256", "eval_episodes=2", f"num_seeds={num_seeds}", "compile_cache=null"])
    parts = training.setup(cfg)
    assert parts.sizes.num_updates % parts.sizes.updates_per_log  # a last chunk program of its own
    results = []
    for prepare in (True, False):
        backend = training.make_loop(parts)
        state = backend.init(prepare=prepare)
        backend.compile(state)
        out, done = [], 0
        while done < parts.sizes.num_updates:
            n = min(parts.sizes.updates_per_log, parts.sizes.num_updates - done)
            state, chunk = backend.chunk(state, n)
            out.append(jax.tree.map(np.asarray, chunk))
            done += n
        out.append(backend.evaluate(state, 0))
        chunks = sorted(name for name in backend.programs if isinstance(name, int))
        assert chunks == [parts.sizes.num_updates % parts.sizes.updates_per_log, parts.sizes.updates_per_log]
        assert ("init" in backend.programs) == prepare and "eval" in backend.programs
        backend.close()
        results.append(out)
    for a, b in zip(*results):
        jax.tree.map(np.testing.assert_array_equal, a, b)
