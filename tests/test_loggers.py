"""logger=wandb and logger=mlflow: what the runs hold, read back with each tool's own format,
against metrics.jsonl; resume continues the same runs; bad input is one line."""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import compose, rlcli_executable
from rlcli.config import ConfigError
from rlcli.logger import MetricsLogger, read_metrics
from rlcli.names import plotted
from rlcli.remote import check_config, flatten

TRAIN = ["train", "algo=a2c", "env=CartPole-v1", "total_steps=2048", "num_envs=4", "log_interval=512",
         "checkpoint_interval=1024", "num_seeds=2", "eval_episodes=2", "logger=wandb",
         "logger.wandb.tags=[smoke]", "+logger.mlflow.tracking_uri=null",
         "+logger.mlflow.experiment=rlcli-test", "+logger.mlflow.name=null"]


# ---- readers: W&B's transaction log, TensorBoard's event files --------------------------------


def wandb_records(path):
    """The protobuf records of an offline W&B run file (run-<id>.wandb): a LevelDB-style log,
    a 7-byte header then 32 KiB blocks of chunks (crc, length, type: 1 full, 2 first, 3 middle,
    4 last), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(run, run_id):
    """(run records, history rows) of every offline segment of one W&B run, oldest first."""
    segments = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    starts, rows = [], []
    for segment in segments:
        for record in wandb_records(segment / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                starts.append(record.run)
            elif kind == "history":
                rows.append(history_row(record))
    return starts, rows


def history_row(record):
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}


def tensorboard_events(directory):
    """[(step, {tag: value})] of the events with scalars in a TensorBoard log directory."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in directory.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            if event.summary.value:
                events.append((event.step, {v.tag: v.simple_value for v in event.summary.value}))
            pos += 12 + length + 4
    return events


def tensorboard_tags(directory):
    """Scalar tags in a TensorBoard log directory."""
    return {tag for _, values in tensorboard_events(directory) for tag in values}


# ---- one run logged to both, then resumed ----------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A 2-seed run logged to W&B (offline, from WANDB_MODE) and MLflow (the default file store)
    at once; its latest checkpoint is deleted, as a kill -9 just before it would leave it, and
    `rlcli resume total_steps=3072` continues. Returns (run dir, first records, final records)."""
    tmp = tmp_path_factory.mktemp("loggers")
    run = tmp / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env["WANDB_MODE"] = "offline"
    for args in ([*TRAIN, f"hydra.run.dir={run}"], ["resume", f"run={run}", "total_steps=3072"]):
        if args[0] == "resume":
            first = read_metrics(run)
            steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
            assert steps == [1040, 2060]
            shutil.rmtree(run / "checkpoints" / "2060")
        done = subprocess.run([rlcli_executable(), *args], cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    return run, first, read_metrics(run)


def expected(first, final, seed_index):
    """What a remote run holds: the records sent before the stop (up to the last one), then the
    resumed run's newer ones; the steps between the checkpoint and the stop are not sent twice."""
    before = [r for r in first if r["seed_index"] == seed_index]
    return before + [r for r in final if r["seed_index"] == seed_index and r["env_steps"] > before[-1]["env_steps"]]


@pytest.mark.extended
def test_wandb_offline_runs_hold_the_metrics_and_resume_by_id(resumed):
    run, first, final = resumed
    state = json.loads((run / "wandb_runs.json").read_text())
    ids = state["ids"]
    assert len(set(ids)) == 2 and state["sent_env_steps"] == [3080, 3080]
    assert [r["env_steps"] for r in first if r["seed_index"] == 0] == [520, 1040, 1560, 2060]
    assert [r["env_steps"] for r in final if r["seed_index"] == 0] == [520, 1040, 1560, 2080, 2600, 3080]
    for seed_index, run_id in enumerate(ids):
        # one segment per process, under <run>/wandb, both of the same W&B run
        assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))) == 2
        starts, rows = wandb_run(run, run_id)
        assert [s.run_id for s in starts] == [run_id, run_id]
        for start, total_steps in zip(starts, (2048, 3072)):
            assert (start.project, start.run_group, start.display_name, list(start.tags)) == (
                "rlcli", "run", f"run-seed{seed_index}", ["smoke"])
            config = {item.key: json.loads(item.value_json) for item in start.config.update}
            assert config["algo"]["name"] == "a2c" and config["env"]["id"] == "CartPole-v1"
            assert (config["seed"], config["seed_index"], config["num_seeds"]) == (seed_index, seed_index, 2)
            assert config["total_steps"] == total_steps  # the resolved config, overrides included
        want = expected(first, final, seed_index)
        assert [row["_step"] for row in rows] == [r["env_steps"] for r in want] == [520, 1040, 1560, 2060, 2080,
                                                                                   2600, 3080]
        for row, record in zip(rows, want):
            assert {k: v for k, v in row.items() if not k.startswith("_")} == plotted(record)
        assert "eval/return_mean" in rows[3] and "eval/return_mean" in rows[-1]


@pytest.mark.extended
def test_mlflow_file_store_holds_the_metrics_params_and_nesting(resumed, monkeypatch):
    from mlflow.tracking import MlflowClient

    run, first, final = resumed
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((run / "mlruns").as_uri())
    ids = json.loads((run / "mlflow_runs.json").read_text())["ids"]
    parent = client.get_run(ids["parent"])
    assert parent.info.run_name == "run" and parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == "rlcli-test"
    assert parent.data.params["seed"] == "0" and parent.data.params["algo.name"] == "a2c"
    for seed_index, run_id in enumerate(ids["seeds"]):
        child = client.get_run(run_id)
        assert child.info.run_name == f"run-seed{seed_index}" and child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == ids["parent"]
        params = child.data.params
        assert (params["algo.name"], params["env.id"], params["seed"]) == ("a2c", "CartPole-v1", str(seed_index))
        assert params["network.hidden_sizes"] == "[64, 64]"
        # params cannot change: the resumed run's new total_steps is a tag
        assert params["total_steps"] == "2048" and child.data.tags["resume/total_steps"] == "3072"
        want = expected(first, final, seed_index)
        for key in ("episode/return", "loss/total", "perf/steps_per_s", "eval/return_mean"):
            history = client.get_metric_history(run_id, key)
            assert [(m.step, m.value) for m in history] == [(r["env_steps"], r[key]) for r in want if key in r]
        assert len(client.get_metric_history(run_id, "eval/return_mean")) == 2


@pytest.mark.extended
def test_tensorboard_wandb_and_mlflow_get_the_same_keys(resumed, monkeypatch):
    from mlflow.tracking import MlflowClient

    run, _, final = resumed
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    keys = set().union(*(plotted(r) for r in final if r["seed_index"] == 1))
    assert {"wall_time", "perf/steps_per_s", "episode/count", "episode/return", "episode/length", "loss/total",
            "loss/policy", "loss/value", "policy/entropy", "train/grad_norm", "eval/return_mean",
            "eval/return_std", "eval/length_mean"} <= keys
    assert all(k in ("wall_time",) or k.split("/")[0] in ("perf", "episode", "loss", "policy", "train", "eval")
               for k in keys)
    assert tensorboard_tags(run / "tb" / "seed_1") == keys
    _, rows = wandb_run(run, json.loads((run / "wandb_runs.json").read_text())["ids"][1])
    assert set().union(*rows) - {"_step", "_runtime", "_timestamp"} == keys
    run_id = json.loads((run / "mlflow_runs.json").read_text())["ids"]["seeds"][1]
    assert set(MlflowClient((run / "mlruns").as_uri()).get_run(run_id).data.metrics) == keys


# ---- without training ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_missing_package_is_one_line_of_bad_input(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ConfigError) as err:
        check_config(compose([f"logger={name}"]))
    assert str(err.value) == (f"logger={name} needs the {name} package, which is not installed (allowed: "
                              f'pip install "rlcli[{name}]", or logger=default, csv or quiet)')


@pytest.mark.parametrize("override, message", [
    ("logger.wandb.mode=offlne", "logger.wandb.mode='offlne' is not allowed (allowed: null, offline, online or "
                                 "disabled)"),
    ("logger.wandb.project=a/b", "logger.wandb.project='a/b' is not allowed (allowed: a string of 1-128 "
                                 "characters without any of / \\ # ? % :)"),
    ("logger.wandb.tags=[ok,'']", "logger.wandb.tags=['ok',''] is not allowed (allowed: a list of strings of "
                                  "1-64 characters, e.g. [baseline,cartpole])"),
    ("logger.mlflow.experiment=''", "logger.mlflow.experiment='' is not allowed (allowed: a non-empty string)"),
])
def test_bad_keys_are_one_line_of_bad_input(override, message):
    with pytest.raises(ConfigError) as err:
        check_config(compose([f"logger={override.split('.')[1]}", override]))
    assert str(err.value) == message


def test_default_loggers_pass_the_check():
    for name in ("default", "csv", "quiet", "wandb", "mlflow"):
        check_config(compose([f"logger={name}"]))


def test_flatten_gives_dotted_keys_and_json_values():
    assert flatten({"algo": {"name": "a2c", "lr": 0.0007, "anneal": True}, "eval_interval": None,
                    "network": {"hidden_sizes": [64, 64]}}) == {
        "algo.name": "a2c", "algo.lr": "0.0007", "algo.anneal": "true", "eval_interval": "null",
        "network.hidden_sizes": "[64, 64]"}


RECORDS = [[{"seed_index": i, "seed": 7 + i, "update": u, "env_steps": 100 * u, "episode/return": 10.0 * u + i,
             "loss/total": float("nan") if u == 2 else 0.5} for i in range(2)] for u in (1, 2)]


def test_tensorboard_gets_one_event_per_record_with_its_scalars(tmp_path):
    logger = MetricsLogger(tmp_path, compose(["logger=default"]).logger, num_seeds=2)
    for records in RECORDS:
        logger.write(records)
    logger.close()
    # seed index 1: returns 10 u + 1; the NaN loss of update 2 is left out, not written as NaN
    assert tensorboard_events(tmp_path / "tb" / "seed_1") == [
        (100, {"episode/return": 11.0, "loss/total": 0.5}), (200, {"episode/return": 21.0})]
    assert tensorboard_events(tmp_path / "tb" / "seed_0") == [
        (100, {"episode/return": 10.0, "loss/total": 0.5}), (200, {"episode/return": 20.0})]


class Stopped(BaseException):
    """Like rlcli.errors.Interrupted: SIGTERM after a checkpoint."""
    exit_code = 143


def test_wandb_mode_key_and_a_stopped_run(tmp_path, monkeypatch):
    """logger.wandb.mode=offline without WANDB_MODE; a non-finite value is left out; a stop
    marks the runs with its exit code; names come from `name` and each learner's seed."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    cfg = compose(["logger=wandb", "logger.wandb.mode=offline", "logger.wandb.name=ablation"]).logger
    logger = MetricsLogger(tmp_path, cfg, 2, config={"seed": 7, "algo": {"name": "a2c"}})
    with pytest.raises(Stopped):
        try:
            for records in RECORDS:
                logger.write(records)
            raise Stopped
        finally:
            logger.close()
    import wandb

    wandb.teardown()  # finish() can return before wandb-core has flushed the last run's file
    run_id = json.loads((tmp_path / "wandb_runs.json").read_text())["ids"][1]
    records = list(wandb_records(next((tmp_path / "wandb").glob(f"offline-run-*-{run_id}")) / f"run-{run_id}.wandb"))
    start = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert start.display_name == "ablation-seed8" and start.run_group == tmp_path.name
    rows = [history_row(r) for r in records if r.WhichOneof("record_type") == "history"]
    assert [(row["_step"], row["episode/return"], row.get("loss/total")) for row in rows] == [
        (100, 11.0, 0.5), (200, 21.0, None)]
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [143]


@pytest.mark.parametrize("error, status", [(None, "FINISHED"), (RuntimeError("disk"), "FAILED"),
                                           (Stopped(), "KILLED")])
def test_mlflow_tracking_uri_key_and_run_status(tmp_path, monkeypatch, error, status):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "elsewhere").as_uri()
    cfg = compose(["logger=mlflow", f"logger.mlflow.tracking_uri='{uri}'"]).logger
    (tmp_path / "run").mkdir()
    logger = MetricsLogger(tmp_path / "run", cfg, 2, config={"seed": 7})

    def train():
        try:
            logger.write(RECORDS[0])
            if error is not None:
                raise error
        finally:
            logger.close()

    if error is None:
        train()
    else:
        with pytest.raises(type(error)):
            train()
    assert not (tmp_path / "run" / "mlruns").exists()
    ids = json.loads((tmp_path / "run" / "mlflow_runs.json").read_text())["ids"]
    client = MlflowClient(uri)
    assert [client.get_run(i).info.status for i in [ids["parent"], *ids["seeds"]]] == [status] * 3
    assert [(m.step, m.value) for m in client.get_metric_history(ids["seeds"][1], "episode/return")] == [(100, 11.0)]


def test_cli_refuses_a_missing_logger_package_before_writing(tmp_path):
    code = ("import sys; sys.modules['wandb'] = None; from rlcli.cli import main; "
            "sys.exit(main(['train', 'logger=wandb', 'hydra.run.dir=run']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == ('rlcli train: error: logger=wandb needs the wandb package, which is not installed '
                           '(allowed: pip install "rlcli[wandb]", or logger=default, csv or quiet)\n')
    assert list(tmp_path.iterdir()) == []


# ---- logger.names: CleanRL's and Stable-Baselines3's keys ----------------------------------------


def record(update, count, ret, length, **metrics):
    return {"seed_index": 0, "seed": 0, "update": update, "env_steps": 1000 * update, "wall_time": 2.0 * update,
            "perf/steps_per_s": 999.0, "episode/count": count, "episode/return": ret, "episode/length": length,
            **metrics}


def test_cleanrl_names():
    from rlcli.names import renamer

    rename = renamer("cleanrl", "ppo")
    out = rename(record(4, 3.0, 20.0, 21.0, **{"loss/value": 0.25, "loss/policy": -0.1, "policy/entropy": 0.6,
                                                "policy/approx_kl": 0.01, "policy/clip_fraction": 0.2,
                                                "train/explained_variance": 0.5, "train/grad_norm": 0.4,
                                                "eval/return_mean": 30.0}))
    assert out == {"charts/episodic_return": 20.0, "charts/episodic_length": 21.0, "episode/count": 3.0,
                   "wall_time": 8.0, "charts/SPS": 4000 / 8.0,  # env steps of one seed / seconds since the start
                   "losses/value_loss": 0.25, "losses/policy_loss": -0.1, "losses/entropy": 0.6,
                   "losses/approx_kl": 0.01, "losses/clipfrac": 0.2, "losses/explained_variance": 0.5,
                   "train/grad_norm": 0.4, "eval/episodic_return": 30.0}
    sac = rename(record(1, 1.0, 5.0, 5.0, **{"loss/critic": 3.0, "loss/actor": 1.0, "train/alpha": 0.2,
                                               "loss/temperature": -0.3}))
    assert {k: sac[k] for k in ("losses/qf_loss", "losses/actor_loss", "losses/alpha", "losses/alpha_loss")} == {
        "losses/qf_loss": 3.0, "losses/actor_loss": 1.0, "losses/alpha": 0.2, "losses/alpha_loss": -0.3}


def test_sb3_names_compute_what_sb3_means():
    """value_loss is SB3's full MSE (twice rlcli's 1/2 MSE), entropy_loss minus the entropy,
    ep_rew_mean the mean over the newest records holding >= 100 episodes, fps env steps per
    second since the start; PPO's policy loss is policy_gradient_loss, A2C's policy_loss."""
    from rlcli.names import renamer

    rename = renamer("sb3", "ppo")
    # (episodes, mean return, mean length) per record
    intervals = [(64, 27.0, 27.0), (27, 70.0, 71.0), (17, 123.0, 120.0), (9, 158.0, 150.0), (0, None, None),
                 (120, 200.0, 190.0), (30, 100.0, 90.0)]
    expected_means = [
        27.0,  # [64]
        (64 * 27 + 27 * 70) / 91,  # [64, 27]: 91 < 100
        (64 * 27 + 27 * 70 + 17 * 123) / 108,  # 108 >= 100, and without the first record 44 < 100
        (64 * 27 + 27 * 70 + 17 * 123 + 9 * 158) / 117,  # without the first: 53 < 100
        (64 * 27 + 27 * 70 + 17 * 123 + 9 * 158) / 117,  # no episode in this interval: unchanged
        200.0,  # 120 >= 100 alone: the older records leave the window
        (120 * 200 + 30 * 100) / 150,  # the newest alone holds 30 < 100
    ]
    for update, ((count, ret, length), mean) in enumerate(zip(intervals, expected_means), start=1):
        metrics = {"loss/value": 0.25 * update, "policy/entropy": 0.5, "loss/policy": -0.1, "loss/total": 1.5,
                   "policy/approx_kl": 0.02, "loss/temperature": 0.7}
        rec = record(update, float(count), ret, length, **metrics)
        if ret is None:
            del rec["episode/return"], rec["episode/length"]
        out = rename(rec)
        assert out["rollout/ep_rew_mean"] == pytest.approx(mean)
        assert out["train/value_loss"] == 0.5 * update and out["train/entropy_loss"] == -0.5
        assert out["train/policy_gradient_loss"] == -0.1 and out["train/loss"] == 1.5
        assert out["train/approx_kl"] == 0.02 and out["time/fps"] == 500.0
        assert (out["time/total_timesteps"], out["time/iterations"], out["time/time_elapsed"]) == (
            1000 * update, update, 2.0 * update)
        assert out["loss/temperature"] == 0.7  # SB3's ent_coef_loss is another quantity: rlcli's name kept
        assert not {"episode/return", "loss/value", "policy/entropy", "perf/steps_per_s"} & set(out)
    assert out["rollout/ep_len_mean"] == pytest.approx((120 * 190 + 30 * 90) / 150)
    assert "train/policy_loss" in renamer("sb3", "a2c")(record(1, 1.0, 1.0, 1.0, **{"loss/policy": 0.3}))


@pytest.mark.slow
def test_logger_names_cleanrl_in_tensorboard(tmp_path):
    """A PPO run with logger.names=cleanrl: TensorBoard holds CleanRL's keys with the values of
    metrics.jsonl, which keeps rlcli's names."""
    from conftest import train

    _, records = train(tmp_path, ["algo=ppo", "env=CartPole-v1", "total_steps=2048", "log_interval=512",
                                  "eval_episodes=2", "logger.names=cleanrl"])
    events = dict(tensorboard_events(tmp_path / "run" / "tb" / "seed_0"))
    assert len(events) == len(records) == 4
    for rec in records:
        tags = events[rec["env_steps"]]
        assert tags["charts/episodic_return"] == pytest.approx(rec["episode/return"])
        assert tags["losses/value_loss"] == pytest.approx(rec["loss/value"])
        assert tags["losses/approx_kl"] == pytest.approx(rec["policy/approx_kl"])
        assert tags["losses/clipfrac"] == pytest.approx(rec["policy/clip_fraction"])
        assert tags["charts/SPS"] == pytest.approx(rec["env_steps"] / rec["wall_time"], rel=1e-6)
        assert not {"episode/return", "loss/value", "policy/approx_kl"} & set(tags)
        assert "loss/value" in rec and "charts/episodic_return" not in rec
    assert events[2048]["eval/episodic_return"] == pytest.approx(records[-1]["eval/return_mean"])


def test_a_bad_logger_names_value_is_one_line():
    from rlcli.config import validate

    with pytest.raises(ConfigError) as err:
        validate(compose(["logger.names=tianshou"]))
    assert str(err.value).startswith("logger.names=") and "tianshou" in str(err.value)
    assert "(allowed: one of rlcli, cleanrl, sb3)" in str(err.value)
