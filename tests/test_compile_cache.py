"""JAX's persistent compilation cache (`compile_cache`): on by default, configurable, off with null."""

import os
import subprocess

import pytest

from conftest import compose, rlcli_executable
from rlcli import config, sweep


def _train(tmp_path, name, cache):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    args = [rlcli_executable(), "train", "algo=a2c", "env=CartPole-v1", "total_steps=2000", "eval_episodes=1",
            "logger=quiet", f"hydra.run.dir={tmp_path / name}"]
    if cache is not None:
        args.append(f"compile_cache={cache}")
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def _entries(directory):
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []


def test_second_run_loads_every_program_from_the_cache(tmp_path):
    """The default (auto) cache under $XDG_CACHE_HOME/rlcli/jax is filled by the first run; an
    identical second run finds every program there and adds nothing."""
    _train(tmp_path, "first", None)
    cache = tmp_path / "xdg" / "rlcli" / "jax"
    first = _entries(cache)
    assert len(first) >= 2  # at least the chunk program and the evaluation
    _train(tmp_path, "second", None)
    assert _entries(cache) == first


def test_null_turns_it_off_and_a_path_moves_it(tmp_path):
    _train(tmp_path, "off", "null")
    assert _entries(tmp_path / "xdg" / "rlcli") == []
    _train(tmp_path, "moved", str(tmp_path / "elsewhere"))
    assert _entries(tmp_path / "elsewhere") and _entries(tmp_path / "xdg" / "rlcli") == []


def test_bad_value(tmp_path):
    (tmp_path / "file").write_text("x")
    for value, message in [("''", "compile_cache='' is not allowed (allowed: auto, null, or a directory path)"),
                           (str(tmp_path / "file"), f"compile_cache='{tmp_path / 'file'}' is not allowed")]:
        with pytest.raises(config.ConfigError) as info:
            config.validate(compose([f"compile_cache={value}"]))
        assert str(info.value).startswith(message)
    assert sweep.cache_dir_of(compose(["compile_cache=null"])) is None
