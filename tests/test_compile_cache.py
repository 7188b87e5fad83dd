"""JAX's persistent compilation cache (`compile_cache`): on by default, configurable, off with null."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import compose
from rlcli import config, runtime


# `rlcli train` with JAX's persistent compilation cache events counted (jax.monitoring, a public
# API): every compile request that goes through the cache, the programs found there, and the
# programs written to it
COUNTING = """
import atexit, collections, json, os, sys
from jax import monitoring
counts = collections.Counter()
monitoring.register_event_listener(lambda event, **kwargs: counts.update([event.rsplit("/", 1)[1]]))
atexit.register(lambda: open(os.environ["RLCLI_TEST_EVENTS"], "w").write(json.dumps(counts)))
from rlcli.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train(tmp_path, name, cache):
    """`rlcli train` (a2c, 2000 steps) in a fresh interpreter, with compile_cache=`cache` (None:
    left at its default) -> (requests, hits, writes): the compilations that asked the
    persistent cache, the programs loaded from it, the programs written to it."""
    import json
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env["RLCLI_TEST_EVENTS"] = str(tmp_path / f"{name}.events.json")
    args = ["train", "algo=a2c", "env=CartPole-v1", "total_steps=2000", "eval_episodes=1",
            "logger=quiet", f"hydra.run.dir={tmp_path / name}"]
    if cache is not None:
        args.append(f"compile_cache={cache}")
    result = subprocess.run([sys.executable, "-c", COUNTING, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    counts = json.loads((tmp_path / f"{name}.events.json").read_text())
    return (counts.get("compile_requests_use_cache", 0), counts.get("cache_hits", 0),
            counts.get("cache_misses", 0))


def _entries(directory):
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []


@pytest.mark.extended
def test_second_run_loads_every_program_from_the_cache_and_null_turns_it_off(tmp_path):
    """The default (auto) cache under $XDG_CACHE_HOME/rlcli/jax: the first run finds nothing
    there and writes the run's three programs (init, chunk, evaluation); an identical second
    run loads each of them from it (as many cache hits as the first run wrote programs) and
    writes nothing. With compile_cache=null the same run compiles without it: no hit, though
    the cache holds every program of the run, and nothing written. (JAX counts every
    compilation as a request, also with no cache directory: the few small programs compiled
    while the command line checks the config, before the cache is turned on, never hit.)"""
    requests, hits, writes = _train(tmp_path, "first", None)
    cache = tmp_path / "xdg" / "rlcli" / "jax"
    first = _entries(cache)
    assert (hits, writes) == (0, 3) and requests >= writes
    # kept beside them (rlcli/xla.py): one chunk of 2000 env steps = 50 updates of a2c's 8 envs x 5 steps
    kept = [name for name in first if name.endswith(".jaxexport")]
    assert sorted(name.split("-")[0] for name in kept) == ["chunk50", "eval", "init"]

    assert _train(tmp_path, "second", None) == (requests, writes, 0)
    assert _entries(cache) == first

    assert _train(tmp_path, "off", "null") == (requests, 0, 0)
    assert _entries(tmp_path / "xdg" / "rlcli") == first


def test_a_path_moves_it(tmp_path, monkeypatch):
    """compile_cache=<path> turns JAX's cache on in that directory, auto in
    $XDG_CACHE_HOME/rlcli/jax (the directory the test above finds filled), and a directory in
    JAX_COMPILATION_CACHE_DIR wins over both. (In this process JAX's cache was opened at the
    start, so only the setting is checked here; JAX keys its entries by the cache's own
    directory, so a copy of a filled cache elsewhere would find nothing.)"""
    import jax

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_dir_of(compose([])) == tmp_path / "xdg" / "rlcli" / "jax"
    assert runtime.cache_dir_of(compose([f"compile_cache={tmp_path / 'elsewhere'}"])) == tmp_path / "elsewhere"
    before = jax.config.jax_compilation_cache_dir
    try:
        runtime.use_compilation_cache(compose([f"compile_cache={tmp_path / 'elsewhere'}"]))
        assert jax.config.jax_compilation_cache_dir == before  # the environment's directory wins
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        jax.config.update("jax_compilation_cache_dir", None)
        runtime.use_compilation_cache(compose([f"compile_cache={tmp_path / 'elsewhere'}"]))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "elsewhere")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_bad_value(tmp_path):
    (tmp_path / "file").write_text("x")
    for value, message in [("''", "compile_cache='' is not allowed (allowed: auto, null, or a directory path)"),
                           (str(tmp_path / "file"), f"compile_cache='{tmp_path / 'file'}' is not allowed")]:
        with pytest.raises(config.ConfigError) as info:
            config.validate(compose([f"compile_cache={value}"]))
        assert str(info.value).startswith(message)
    assert runtime.cache_dir_of(compose(["compile_cache=null"])) is None


# ---- traced programs kept beside the cache (rlcli/xla.py: lower_cached) ----------------------

KEPT = ["algo=ppo", "env=CartPole-v1", "num_envs=4", "algo.num_steps=16", "total_steps=1280", "log_interval=640",
        "eval_episodes=2"]


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _numbers(records):
    return [{k: v for k, v in r.items() if k not in ("wall_time", "perf/steps_per_s")} for r in records]


@pytest.fixture
def traced():
    """{function name: times traced} from JAX's tracing event (jax.monitoring), while the test runs."""
    import collections

    from jax import monitoring

    names = collections.Counter()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            names[kwargs.get("fun_name")] += 1

    monitoring.register_event_duration_secs_listener(listener)
    yield names
    monitoring.unregister_event_duration_listener(listener)


@pytest.mark.extended
def test_kept_programs_are_read_instead_of_traced_and_give_the_same_numbers(tmp_path, monkeypatch, traced):
    """A run traces its init, chunk and evaluation programs once and keeps them (jax.export)
    beside the compilation cache. A run of another seed reads them: JAX traces none of rlcli's
    functions, only the three kept programs' `call` (jax.export's wrapper, one jit each), where
    the same run with the programs traced directly traces rlcli's. Its metrics are those of that
    direct run (the seed enters the programs as key arrays, which is why it is left out of the
    programs' key), and differ from the first seed's."""
    from jax import export

    from conftest import train
    from rlcli import xla

    assert xla.programs_dir() is not None  # conftest turns on the compilation cache
    directory = tmp_path / "programs"  # this test's own: the test session's is shared by workers
    monkeypatch.setattr(xla, "programs_dir", lambda: directory)
    _, seed0 = train(tmp_path, KEPT + ["seed=0"], name="seed0")
    kept = set(directory.glob("*.jaxexport"))
    assert sorted(p.name.split("-")[0] for p in kept) == ["chunk10", "eval", "init"]

    traced.clear()
    read = _count_calls(monkeypatch, export, "deserialize")
    _, from_kept = train(tmp_path, KEPT + ["seed=1"], name="seed1")
    assert dict(traced) == {"call": 3} and len(read) == 3
    assert set(directory.glob("*.jaxexport")) == kept

    traced.clear()
    monkeypatch.setattr(xla, "programs_dir", lambda: None)  # trace and lower directly, as with no cache
    _, direct = train(tmp_path, KEPT + ["seed=1"], name="seed1-direct")
    assert sum(traced.values()) >= 3 and "call" not in traced and len(read) == 3
    assert _numbers(from_kept) == _numbers(direct)
    assert _numbers(from_kept) != _numbers(seed0)


@pytest.mark.slow
def test_an_unreadable_kept_program_is_traced_again(tmp_path, monkeypatch):
    from jax import export

    from conftest import train
    from rlcli import xla

    overrides = KEPT + ["seed=3"]
    directory = tmp_path / "programs"
    monkeypatch.setattr(xla, "programs_dir", lambda: directory)
    _, first = train(tmp_path, overrides, name="first")
    kept = sorted(directory.glob("*.jaxexport"))
    assert len(kept) == 3
    for path in kept:
        path.write_bytes(b"not a program")
    traced = _count_calls(monkeypatch, export, "export")
    _, again = train(tmp_path, overrides, name="again")
    assert len(traced) == 3
    assert _numbers(again) == _numbers(first)
    assert all(export.deserialize(bytearray(path.read_bytes())) for path in kept)  # written anew


FRESH_PROCESS = """
import json, sys
from jax import export
calls = {"export": 0, "deserialize": 0}
for name in calls:
    def counted(*args, _name=name, _original=getattr(export, name), **kwargs):
        calls[_name] += 1
        return _original(*args, **kwargs)
    setattr(export, name, counted)
from rlcli import train as training
from conftest import compose
summary = training.train(compose(sys.argv[1:]), sys.argv[1].split("=", 1)[1])
print(json.dumps(calls))
"""


@pytest.mark.extended
def test_a_fresh_process_reads_the_kept_programs_without_tracing(tmp_path):
    """The node types of a kept program's trees (rlcli's states, optax's, gymnax's env state)
    are listed beside it and registered before it is read: a new interpreter, with none of
    them registered, reads the init, chunk and eval programs that an earlier process kept."""
    import json
    import sys

    cache = tmp_path / "cache"
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))

    def run(name, seed):
        (tmp_path / name).mkdir()
        args = [f"hydra.run.dir={tmp_path / name}", *KEPT, f"seed={seed}", "logger=quiet"]
        result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert run("first", 0) == {"export": 3, "deserialize": 3}  # traced, then read back as a rerun reads
    listed = sorted((cache / "rlcli-programs").glob("init-*.types.json"))
    assert len(listed) == 1 and ["rlcli.loops.jax", "RunnerState", "None"] in json.loads(listed[0].read_text())
    assert run("second", 1) == {"export": 0, "deserialize": 3}


def test_program_key_follows_what_shapes_the_programs(monkeypatch):
    import jax.numpy as jnp

    from rlcli import xla

    args = (jnp.zeros(3),)
    key = xla.program_key("chunk10", compose(KEPT), args)
    assert key == xla.program_key("chunk10", compose(KEPT + ["seed=5", "logger=quiet", "checkpoint_interval=7"]), args)
    assert key != xla.program_key("eval", compose(KEPT), args)
    assert key != xla.program_key("chunk10", compose(KEPT + ["algo.learning_rate=0.1"]), args)
    assert key != xla.program_key("chunk10", compose(KEPT), (jnp.zeros(4),))
    assert key != xla.program_key("chunk10", compose(KEPT), (jnp.zeros(3, jnp.int32),))
    monkeypatch.setattr(xla, "_source_digest", lambda: "an edited rlcli")
    assert key != xla.program_key("chunk10", compose(KEPT), args)


@pytest.mark.parametrize("flag, value", [("jax_enable_x64", True), ("jax_default_prng_impl", "rbg"),
                                         ("jax_default_matmul_precision", "highest")])
def test_program_key_follows_process_wide_jax_flags(flag, value):
    """A process-wide jax.config value that changes lowering gives another key, so a program
    traced under the old value is never read back under the new one."""
    import jax
    import jax.numpy as jnp

    from rlcli import xla

    args = (jnp.zeros(3),)
    key = xla.program_key("chunk10", compose(KEPT), args)
    before = jax.config.values[flag]
    jax.config.update(flag, value)
    try:
        assert xla.program_key("chunk10", compose(KEPT), args) != key
    finally:
        jax.config.update(flag, before)
    assert xla.program_key("chunk10", compose(KEPT), args) == key
