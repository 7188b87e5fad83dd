"""Metrics sinks: metrics.jsonl (always), metrics.csv, TensorBoard, Weights & Biases and MLflow
(optional; rlcli.remote), and the console progress display. One record per seed per logged update; keys are
namespaced (`loss/...`, `train/...`, `eval/...`) and `env_steps` (per seed) is the x axis."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path

from rlcli import names
from rlcli.paths import write_atomic
from rlcli.remote import REMOTE, REMOTE_KEYS, RemoteRuns, read_config
from rlcli.rules import Choice, Key, boolean, one_of, with_defaults

log = logging.getLogger("rlcli")

SINK_KEYS = {
    "logger.csv": Key(False, boolean(), "also write metrics.csv"),
    "logger.tensorboard": Key(True, boolean(), "TensorBoard events under tb/"),
    "logger.progress": Key("auto", one_of("auto", "bar", "lines", "none"),
                           "auto (a bar on a terminal, a line per record otherwise) | bar | lines | none"),
    "logger.names": Key("rlcli", one_of(*names.NAMES), "metric names in TensorBoard, W&B and MLflow: rlcli's, "
                                                       "CleanRL's (charts/episodic_return, losses/value_loss, ...) "
                                                       "or Stable-Baselines3's (rollout/ep_rew_mean, train/approx_kl, "
                                                       "...); metrics.jsonl keeps rlcli's"),
}
# the logger= choices (metrics.jsonl is always written)
CHOICES = {
    "csv": Choice("metrics.jsonl plus metrics.csv, no TensorBoard",
                  with_defaults(SINK_KEYS, csv=True, tensorboard=False)),
    "default": Choice("metrics.jsonl and TensorBoard events under tb/, progress on the console", SINK_KEYS),
    "mlflow": Choice("metrics.jsonl and TensorBoard, plus MLflow (pip install \"rlcli[mlflow]\"): a parent run with "
                     "one child run per seed, params from the resolved config, metrics at step = env_steps",
                     {**SINK_KEYS, **REMOTE_KEYS["mlflow"]}),
    "quiet": Choice("for sweeps and scripts: metrics.jsonl and TensorBoard, no progress output",
                    with_defaults(SINK_KEYS, progress="none")),
    "wandb": Choice("metrics.jsonl and TensorBoard, plus Weights & Biases (pip install \"rlcli[wandb]\"): one W&B run "
                    "per seed, all in one group; local files under <run>/wandb; resumed with the run",
                    {**SINK_KEYS, **REMOTE_KEYS["wandb"]}),
}


def _clean(value):
    """JSON-safe scalar: non-finite floats become None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    def __init__(self, run_dir: Path, logger_cfg, num_seeds: int, purge_step: int | None = None,
                 config: dict | None = None, algo: str = ""):
        """`purge_step` (on resume): TensorBoard hides this run's earlier events from that
        env step on, so the steps that are written again do not appear twice. `config`: the
        resolved run config for W&B and MLflow (default: read from <run>/.hydra/config.yaml).
        `algo` (algo.name) picks the peer's name where it depends on the algorithm."""
        self.run_dir = Path(run_dir)
        self._rename = names.renamer(logger_cfg.get("names", "rlcli"), algo)
        self._remote = []
        if any(logger_cfg.get(name) is not None for name in REMOTE):
            if config is None:
                config = read_config(self.run_dir)
            try:
                for name, start in REMOTE.items():
                    if logger_cfg.get(name) is not None:
                        self._remote.append(RemoteRuns(name, start, self.run_dir, logger_cfg[name],
                                                       num_seeds, config))
            except BaseException as err:
                for remote in self._remote:
                    remote.close(err)
                raise
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._csv_file = None
        self._csv_writer = None
        if logger_cfg.csv:
            self._csv_file = open(self.run_dir / "metrics.csv", "a", newline="", encoding="utf-8")
        self._tb = []
        if logger_cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = [SummaryWriter(str(self.run_dir / "tb" / f"seed_{i}"), flush_secs=10,
                                      purge_step=purge_step)
                        for i in range(num_seeds)]

    def write(self, records: list[dict]) -> None:
        """Append one record per seed; `seed_index` picks the TensorBoard writer and the W&B
        and MLflow runs. Raises OSError when a sink cannot write."""
        records = [{k: _clean(v) for k, v in record.items()} for record in records]
        scalars = [self._rename(record) for record in records]
        for record, values in zip(records, scalars):
            self._jsonl.write(json.dumps(record) + "\n")
            if self._csv_file is not None:
                self._write_csv(record)
            if self._tb:
                self._tensorboard(record, values)
        self._jsonl.flush()
        for remote in self._remote:
            remote.write(records, scalars)

    def _tensorboard(self, record: dict, scalars: dict) -> None:
        """The record's scalars as ONE event of its seed's writer (a Summary holds many values;
        `add_scalar` per key costs a queue hand-off each: about 1 s per record at 1024 seeds)."""
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._tb[record["seed_index"]]._get_file_writer().add_summary(Summary(value=values), record["env_steps"])

    def _write_csv(self, record: dict) -> None:
        if self._csv_writer is None:
            fields = ["seed_index", "seed", "update", "env_steps", "wall_time", "perf/steps_per_s", "episode/count",
                      "episode/return", "episode/length", "eval/return_mean", "eval/return_std",
                      "eval/length_mean"]
            fields += sorted(k for k in record if k not in fields)
            self._csv_writer = csv.DictWriter(self._csv_file, fieldnames=fields, extrasaction="ignore")
            if self._csv_file.tell() == 0:
                self._csv_writer.writeheader()
        self._csv_writer.writerow(record)
        self._csv_file.flush()

    def close(self) -> None:
        """Close every sink. Called from a `finally` block, it sees the exception in flight
        and marks the W&B and MLflow runs failed (an error) or killed (SIGINT/SIGTERM)."""
        self._jsonl.close()
        if self._csv_file is not None:
            self._csv_file.close()
        for writer in self._tb:
            writer.close()
        for remote in self._remote:
            remote.close(sys.exc_info()[1])


def read_metrics(run_dir: Path) -> list[dict]:
    """All complete records of a run's metrics.jsonl (a torn last line is ignored)."""
    records = []
    with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def truncate_metrics(run_dir: Path, update: int) -> None:
    """Keep the records up to and including `update` in metrics.jsonl (and metrics.csv), drop
    the rest and any torn last line; each file is replaced atomically."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if path.exists():
        kept = [json.dumps(r) + "\n" for r in read_metrics(run_dir) if r["update"] <= update]
        write_atomic(path, "".join(kept))
    path = run_dir / "metrics.csv"
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        rows = list(csv.reader(lines))
        if rows:
            column = rows[0].index("update")
            kept = [lines[0]] + [line for line, row in zip(lines[1:], rows[1:])
                                 if len(row) == len(rows[0]) and line.endswith("\n")
                                 and int(row[column]) <= update]
            write_atomic(path, "".join(kept))


class Progress:
    """Env steps, steps/s and the latest mean episode return: a live bar on a terminal
    (`progress: auto|bar`), one line per record otherwise (`lines`), or nothing (`none`)."""

    def __init__(self, mode: str, total_steps: int):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode, self.total = mode, total_steps
        self._bar = None
        if mode == "bar":
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.completed:,.0f}[/]/{task.total:,.0f} env steps"),
                BarColumn(),
                TextColumn("{task.fields[rate]:,.0f} steps/s"),
                TextColumn("return {task.fields[ret]}"),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task("train", total=total_steps, rate=0.0, ret="-")
            self._bar.start()

    def update(self, env_steps: int, steps_per_second: float, mean_return: float | None) -> None:
        ret = "-" if mean_return is None else f"{mean_return:.1f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=env_steps, rate=steps_per_second, ret=ret)
        elif self.mode == "lines":
            log.info("env steps %d/%d | %.0f steps/s | episode return %s",
                     env_steps, self.total, steps_per_second, ret)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
