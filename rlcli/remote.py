"""Weights & Biases and MLflow: one remote run per seed, continued on resume; their config keys
(`logger.wandb.*`, `logger.mlflow.*`) and checks."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from rlcli.paths import write_atomic
from rlcli.rules import Key, Rule

log = logging.getLogger("rlcli")


def _text(optional: bool = False, limit: int | None = None, forbidden: str = ""):
    def ok(v):
        if optional and v is None:
            return True
        return isinstance(v, str) and 0 < len(v) <= (limit or len(v)) and not any(c in v for c in forbidden)
    what = "a non-empty string" if limit is None else f"a string of 1-{limit} characters"
    what += f" without any of {' '.join(forbidden)}" if forbidden else ""
    return Rule(ok, ("null or " if optional else "") + what)


def _tags(v) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.is_list(v) and all(isinstance(t, str) and 0 < len(t) <= 64 for t in v)


# logger.<name> keys, checked when the logger config has that node (logger=wandb, logger=mlflow)
REMOTE_KEYS = {
    "wandb": {
        "logger.wandb.mode": Key(None, Rule(lambda v: v in (None, "offline", "online", "disabled"),
                                            "null, offline, online or disabled"),
                                 "offline | online | disabled; null: $WANDB_MODE, else online"),
        "logger.wandb.project": Key("rlcli", _text(limit=128, forbidden="/\\#?%:"), "the W&B project"),
        "logger.wandb.entity": Key(None, _text(optional=True), "user or team; null: your default entity"),
        "logger.wandb.group": Key(None, _text(optional=True, limit=128), "null: the run directory's name"),
        "logger.wandb.name": Key(None, _text(optional=True, limit=120),
                                 "each seed's run is <name>-seed<seed>; null: the group"),
        "logger.wandb.tags": Key([], Rule(_tags, "a list of strings of 1-64 characters, e.g. [baseline,cartpole]"),
                                 "tags of every seed's run"),
    },
    "mlflow": {
        "logger.mlflow.tracking_uri": Key(None, _text(optional=True),
                                          "null: $MLFLOW_TRACKING_URI, else the file store <run>/mlruns"),
        "logger.mlflow.experiment": Key("rlcli", _text(), "the MLflow experiment"),
        "logger.mlflow.name": Key(None, _text(optional=True), "the parent run's name, children <name>-seed<seed>; "
                                                              "null: the run directory's name"),
    },
}


def require(name: str) -> None:
    """ConfigError unless the package of logger `name` (and of the pip extra of that name) is
    installed."""
    import importlib.util

    from rlcli.errors import ConfigError

    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"logger={name} needs the {name} package, which is not installed (allowed: "
                          f'pip install "rlcli[{name}]", or logger=default, csv or quiet)')


def check_config(cfg) -> None:
    """Raise ConfigError (one line) when logger=wandb or logger=mlflow is chosen and its package
    is not installed or one of its keys is not allowed; `config.validate` runs it, before
    anything is written."""
    from rlcli.rules import check, rules_of

    for name, keys in REMOTE_KEYS.items():
        if cfg.logger.get(name) is not None:
            require(name)
            check(cfg, rules_of(keys))


def read_config(run_dir: Path) -> dict:
    """The run's resolved config from <run>/.hydra/config.yaml ({} when there is none)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.is_file() else {}


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys and text values (MLflow params): {'algo.name': 'a2c',
    'network.hidden_sizes': '[64, 64]', 'eval_interval': 'null'}; non-strings as JSON."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def seed_config(config: dict, seed_index: int) -> dict:
    """The config of one learner of a run: `seed` is its own (seed + seed_index)."""
    return {**config, "seed": int(config.get("seed", 0)) + seed_index, "seed_index": seed_index}


def default_group(run_dir: Path) -> str:
    """The run directory's name; a sweep job's (0, 1, ...) is prefixed with its sweep's."""
    return f"{run_dir.parent.name}-{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class RemoteRuns:
    """The W&B or MLflow runs of an rlcli run, one per seed. Their ids and the env steps already
    sent are kept in <run>/<name>_runs.json, so `rlcli resume` continues the same runs and never
    sends a step twice: the steps after the checkpoint that were sent before the stop keep their
    first values there, while metrics.jsonl has the recomputed ones."""

    def __init__(self, name: str, start, run_dir: Path, cfg, num_seeds: int, config: dict):
        require(name)
        self.name, self.path = name, run_dir / f"{name}_runs.json"
        state = json.loads(self.path.read_text()) if self.path.is_file() else None
        try:
            self.sink = start(run_dir, cfg, num_seeds, config, state and state["ids"])
        except Exception as err:
            from rlcli.errors import RunError

            raise RunError(f"cannot start the {name} logger: {_first_line(err)}") from None
        resumed = state is not None and state["ids"] == self.sink.ids
        self.sent = state["sent_env_steps"] if resumed else [0] * num_seeds
        self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps({"ids": self.sink.ids, "sent_env_steps": self.sent}) + "\n")

    def write(self, records: list[dict], scalars: list[dict]) -> None:
        """Send each record newer than the last one sent for its seed, as its `scalars` (the
        plotted values under `logger.names`; OSError on failure)."""
        sent = False
        for record, values in zip(records, scalars):
            i, step = record["seed_index"], record["env_steps"]
            if step > self.sent[i]:
                try:
                    self.sink.log(i, step, values)
                except Exception as err:
                    raise OSError(f"{self.name}: {_first_line(err)}") from err
                self.sent[i], sent = step, True
        if sent:
            self._save()

    def close(self, error: BaseException | None) -> None:
        try:
            self.sink.finish(error)
        except Exception as err:
            log.warning("%s: cannot finish the runs: %s", self.name, _first_line(err))


class WandbRuns:
    """One W&B run per seed, named <name>-seed<seed>, all in group `group` (default: the run
    directory's name), so W&B plots the seeds of a run as one line with a band; files under
    <run>/wandb; config: the resolved run config with the learner's own `seed`."""

    def __init__(self, run_dir: Path, cfg, num_seeds: int, config: dict, ids: list[str] | None):
        import wandb

        group = cfg.group or default_group(run_dir)
        self.runs = []
        try:
            for i in range(num_seeds):
                learner = seed_config(config, i)
                self.runs.append(wandb.init(
                    project=cfg.project, entity=cfg.entity, group=group, tags=list(cfg.tags),
                    name=f"{cfg.name or group}-seed{learner['seed']}", config=learner,
                    id=ids[i] if ids else None, resume="allow" if ids else None,
                    allow_val_change=bool(ids), dir=str(run_dir), mode=cfg.mode,
                    reinit="create_new", settings=wandb.Settings(console="off", quiet=True)))
        except BaseException:
            self.finish(RuntimeError())
            raise
        self.ids = [run.id for run in self.runs]
        offline = f" (offline: upload with `wandb sync {run_dir / 'wandb'}`)" if self.runs[0].offline else ""
        log.info("wandb: %d run(s) in group %s of project %s; files in %s%s",
                 num_seeds, group, cfg.project, run_dir / "wandb", offline)

    def log(self, seed_index: int, env_steps: int, scalars: dict) -> None:
        self.runs[seed_index].log(scalars, step=env_steps)

    def finish(self, error: BaseException | None) -> None:
        code = 0 if error is None else getattr(error, "exit_code", 1)
        for run in self.runs:
            run.finish(exit_code=code)


class MlflowRuns:
    """A parent MLflow run for the rlcli run and a child run per seed (params: the flattened
    resolved config, a child's with its own `seed`), metrics at step = env_steps. Tracking URI:
    `tracking_uri`, else $MLFLOW_TRACKING_URI, else the file store <run>/mlruns."""

    def __init__(self, run_dir: Path, cfg, num_seeds: int, config: dict, ids: dict | None):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = (cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
               or (run_dir.resolve() / "mlruns").as_uri())
        if uri.startswith("file:"):  # recent MLflow refuses its file store unless asked
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(uri)
        runs = [] if ids is None else [ids["parent"], *ids["seeds"]]
        try:
            for run_id in runs:
                client.update_run(run_id, status="RUNNING")
        except MlflowException as err:  # e.g. another tracking URI than the first time
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("mlflow: run %s is not at %s; starting new runs", run_id, uri)
            runs = []
        if not runs:
            found = client.get_experiment_by_name(cfg.experiment)
            experiment = found.experiment_id if found else client.create_experiment(cfg.experiment)
            name = cfg.name or default_group(run_dir)
            parent = client.create_run(experiment, run_name=name,
                                       tags={"rlcli.run_dir": str(run_dir.resolve())}).info.run_id
            runs = [parent] + [client.create_run(experiment, run_name=f"{name}-seed{seed_config(config, i)['seed']}",
                                                 tags={"mlflow.parentRunId": parent}).info.run_id
                               for i in range(num_seeds)]
        self.ids = {"parent": runs[0], "seeds": runs[1:]}
        for run_id, params in zip(runs, [config] + [seed_config(config, i) for i in range(num_seeds)]):
            self._log_params(run_id, flatten(params))
        log.info("mlflow: parent run %s and %d seed run(s) in experiment %s at %s",
                 runs[0], num_seeds, cfg.experiment, uri)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Params not yet logged; a value changed on resume (params are immutable in MLflow)
        becomes the tag resume/<key>."""
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        changed = [RunTag(f"resume/{k}", v) for k, v in params.items() if k in logged and logged[k] != v]
        for start in range(0, max(len(new), len(changed)), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=new[start:start + 100], tags=changed[start:start + 100])

    def log(self, seed_index: int, env_steps: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.ids["seeds"][seed_index],
                              metrics=[Metric(k, float(v), now, env_steps) for k, v in scalars.items()])

    def finish(self, error: BaseException | None) -> None:
        status = "FINISHED" if error is None else "FAILED" if isinstance(error, Exception) else "KILLED"
        for run_id in [*self.ids["seeds"], self.ids["parent"]]:
            self.client.set_terminated(run_id, status)


REMOTE = {"wandb": WandbRuns, "mlflow": MlflowRuns}
