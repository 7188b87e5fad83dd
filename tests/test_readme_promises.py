"""README promises no other test holds: `checkpoint_keep` pruning, `rlcli eval
deterministic=false`, `env.vectorization=async` on the gymnasium backend, and a missing Hydra
launcher plugin named in one line. (A second stop signal: tests/test_reliability.py.)"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import compose, train

VOLATILE = ("wall_time", "perf/steps_per_s")

# 400 env steps of 8 envs x 5 steps: 10 updates, a record and a checkpoint every 2 updates
KEEP_RUN = ["total_steps=400", "log_interval=80", "checkpoint_interval=80", "checkpoint_keep=2", "eval_episodes=3"]


@pytest.fixture(scope="module")
def keep_run(tmp_path_factory):
    """A finished run directory as `rlcli train` leaves it (its config in .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    root = tmp_path_factory.mktemp("keep")
    summary, records = train(root, KEEP_RUN)
    run = root / "run"
    (run / ".hydra").mkdir()
    OmegaConf.save(compose(["logger=quiet", *KEEP_RUN]), run / ".hydra" / "config.yaml")
    return run, summary, records


@pytest.mark.slow
def test_checkpoint_keep_keeps_exactly_the_newest(keep_run):
    """Checkpoints at 80, 160, 240, 320 and 400 env steps were written (one per record), and
    checkpoint_keep=2 leaves the newest two, nothing else in checkpoints/."""
    run, _, records = keep_run
    assert [r["env_steps"] for r in records] == [80, 160, 240, 320, 400]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["320", "400"]


def evaluate(run: Path, *args: str) -> dict:
    from rlcli.commands import evaluate as command

    assert command.main([f"run={run}", *args]) == 0
    return json.loads((run / "eval.json").read_text())


@pytest.mark.slow
def test_eval_deterministic_false_samples_and_is_reproducible(keep_run, capsys):
    """The 400-step policy is far from deterministic (its entropy is near log 2), so sampled
    actions play other episodes than the policy's mode; the same eval_seed samples the same."""
    run, summary, records = keep_run
    assert records[-1]["policy/entropy"] > 0.5 * math.log(2)
    mode = evaluate(run)
    assert mode["deterministic"] is True
    assert mode["return_mean"] == pytest.approx(summary["final_eval_return_mean"], rel=1e-6)
    sampled = evaluate(run, "deterministic=false")
    again = evaluate(run, "deterministic=false")
    assert sampled["deterministic"] is False
    assert [s["returns"] for s in sampled["seeds"]] != [s["returns"] for s in mode["seeds"]]
    assert sampled["seeds"] == again["seeds"]
    other = evaluate(run, "deterministic=false", "eval_seed=1")
    assert [s["returns"] for s in other["seeds"]] != [s["returns"] for s in sampled["seeds"]]
    assert "stochastic episodes per seed" in capsys.readouterr().out


@pytest.mark.extended
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the env subprocesses of this test process
def test_async_vectorization_trains_as_sync(tmp_path):
    """`async` steps the same env copies as `sync` in subprocesses, env i seeded with seed + i
    in both (GymnasiumEnvs.reset): a short run's records are the same numbers."""
    common = ["env.backend=gymnasium", "total_steps=800", "log_interval=200", "eval_episodes=2"]
    sync_summary, sync_records = train(tmp_path, [*common, "env.vectorization=sync"], name="sync")
    async_summary, async_records = train(tmp_path, [*common, "env.vectorization=async"], name="async")
    assert [r["env_steps"] for r in async_records] == [200, 400, 600, 800]
    assert all(np.isfinite(r["loss/total"]) for r in async_records)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]  # noqa: E731
    assert strip(async_records) == strip(sync_records)
    assert async_summary["final_eval"] == sync_summary["final_eval"]


def test_a_missing_launcher_plugin_is_one_line_naming_its_extra(tmp_path, monkeypatch, capsys):
    """hydra/launcher=joblib without hydra-joblib-launcher (its config taken out of Hydra's
    store, as if the plugin were not installed): exit 2, one line naming the option and the
    install extra, nothing written."""
    from hydra.core.config_store import ConfigStore

    from rlcli import cli
    from rlcli.config import compose as compose_train

    compose_train([])  # Hydra has scanned its plugins: the joblib launcher's config is stored
    launchers = ConfigStore.instance().repo["hydra"]["launcher"]
    assert "joblib.yaml" in launchers
    monkeypatch.delitem(launchers, "joblib.yaml")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = cli.main(["train", "-m", "hydra/launcher=joblib", "seed=0,1", "total_steps=40"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out + err
    assert lines[0].startswith("rlcli train: error: ")
    assert "hydra/launcher=joblib is not an option of hydra/launcher" in lines[0]
    assert "joblib" not in lines[0].split("allowed: one of ")[1].split(")")[0]
    assert lines[0].endswith('pip install "rlcli[sweeps]"')
    assert list(tmp_path.iterdir()) == []
