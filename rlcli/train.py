"""`train`: the chunk loop of a run. The run's loop (rlcli.loops) runs chunks of
`updates_per_log` updates (collect -> estimate -> update); between chunks `train` logs the
metrics, evaluates on schedule, writes checkpoints, and at the end the learning curve and
summary.json. It also records each leg of a run (legs.json) so that `rlcli reproduce` can
replay a resumed run."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import platform
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from rlcli import algos, checkpoint, config, envs, faults, loops, runtime, xla
from rlcli.errors import EXIT_DIVERGED, ConfigError, Interrupted, RunError
from rlcli.types import EnvSpec, Loop

log = logging.getLogger("rlcli")


def versions() -> dict:
    return {"python": platform.python_version(), **xla.package_versions((
        "rlcli", "jax", "jaxlib", "flax", "optax", "gymnasium", "gymnax", "hydra-core", "numpy", "orbax-checkpoint"))}


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def seed_records(base: dict, num_seeds: int, per_seed: dict[str, np.ndarray], seeds) -> list[dict]:
    records = []
    for i in range(num_seeds):
        record = {"seed_index": i, "seed": seeds[i], **base}
        for name, values in per_seed.items():
            value = np.asarray(values)[i]
            if np.ndim(value) == 0 and np.isfinite(value):
                record[name] = float(value)
        records.append(record)
    return records


class Setup(NamedTuple):
    """What a run is made of, derived from its config."""

    cfg: Any  # the checked config with its values in their declared types (config.typed)
    sizes: config.Sizes
    backend_name: str  # "jax" | "gymnasium"
    spec: EnvSpec
    algo: algos.Algorithm


def setup(cfg) -> Setup:
    """Validate the config (raises ConfigError), turn on the compilation cache, and make its env
    spec and algorithm from the typed config."""
    sizes = config.validate(cfg)
    cfg = config.typed(cfg)
    runtime.use_compilation_cache(cfg)
    runtime.unroll_threefry()
    # jaxlib's LAPACK kernels (the QR of the orthogonal initialisers) import scipy's BLAS and
    # LAPACK bindings when first lowered; import them here, with the other modules, not while
    # the run's clock runs (about 0.3 s)
    importlib.import_module("scipy.linalg.cython_lapack")
    backend_name = envs.resolve_backend(cfg.env.id, cfg.env.backend)
    spec = envs.make_spec(cfg.env.id, backend_name, cfg.env.mask_velocity)
    return Setup(cfg, sizes, backend_name, spec, algos.make(cfg.algo.name, spec, cfg, sizes.num_updates))


def make_loop(parts: Setup) -> Loop:
    """The training loop of the run's kind (rlcli.loops)."""
    return loops.make(parts.cfg, parts.spec, parts.algo, parts.sizes, parts.backend_name)


def restore_checkpoint(loop: Loop, ckpt_dir: str | Path, step: int | None = None) -> tuple[Any, dict]:
    """(state, meta) of checkpoint `step` (default: the latest) in ckpt_dir, restored into a
    fresh state of `loop`; raises checkpoint.CheckpointError."""
    state = loop.init()
    saved, meta = checkpoint.restore(ckpt_dir, loop.checkpoint_state(state), step=step)
    return loop.restore(state, saved, meta), meta


LEGS = "legs.json"


def config_container(cfg) -> dict:
    """The config as plain, resolved data (what legs.json keeps of each leg)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def read_legs(run_dir: str | Path) -> list[dict]:
    """legs.json of a run: [{"start_update", "config"}] in order; [] when it has none (a run
    written before rlcli kept it, or one that has not started)."""
    path = Path(run_dir) / LEGS
    try:
        return json.loads(path.read_text())["legs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_legs(run_dir: Path, legs: list[dict]) -> None:
    from rlcli.paths import write_atomic

    write_atomic(Path(run_dir) / LEGS, json.dumps({"legs": legs}, indent=1) + "\n")


def train(cfg, run_dir: str | Path, resume: bool = False, stop_at_update: int | None = None) -> dict | None:
    """Train as configured, writing metrics, checkpoints, curve.png and summary.json into
    run_dir. With `resume`, continue from run_dir's newest readable checkpoint: metrics
    recorded after it are dropped and written again, so the file has no duplicate or missing
    steps. Every start of training (a leg) is recorded in legs.json with its config and first
    update, so that `rlcli reproduce` can replay a resumed run leg by leg; `stop_at_update`
    (a replayed leg that was stopped there) ends training at that update with a checkpoint, as
    a signal would, and returns None. Otherwise returns the summary. Raises
    config.ConfigError / checkpoint.CheckpointError for bad input, RunError for a failure
    while running and Interrupted after SIGINT/SIGTERM."""
    from rlcli import curves
    from rlcli.logger import read_metrics, truncate_metrics
    from rlcli.paths import write_atomic

    run_dir = Path(run_dir)
    given, parts = cfg, setup(cfg)  # the config as given is what the run directory keeps
    cfg = parts.cfg
    if cfg.logger.tensorboard:  # the metrics logger's import (about 0.15 s), before the clock starts
        importlib.import_module("tensorboardX")
    sizes, backend_name, spec = parts.sizes, parts.backend_name, parts.spec
    num_seeds = cfg.num_seeds
    seeds = [cfg.seed + i for i in range(num_seeds)]
    ckpt_dir = run_dir / "checkpoints"

    start = time.perf_counter()
    loop = make_loop(parts)
    # from here on a SIGINT/SIGTERM stops the run at the next chunk boundary, with a checkpoint
    with faults.StopSignals(run_dir) as signals, contextlib.closing(loop):
        state = loop.init(prepare=True)
        init_time = time.perf_counter() - start  # mostly compiling the init program: counted as compile time
        updates_done, eval_index, wall_before = 0, 0, 0.0
        if resume:
            saved, meta = checkpoint.restore(ckpt_dir, loop.checkpoint_state(state), notice=log.warning)
            updates_done, eval_index = int(meta["update"]), int(meta.get("eval_index", 0))
            wall_before = float(meta.get("wall_time", 0.0))
            if updates_done > sizes.num_updates:
                raise ConfigError(
                    f"total_steps={cfg.total_steps} is less than the {int(meta['env_steps'])} env "
                    f"steps already trained (allowed: total_steps >= {int(meta['env_steps'])})")
            if updates_done == sizes.num_updates and (run_dir / "summary.json").is_file():
                log.info("the run is already complete at %d env steps (pass total_steps= to "
                         "extend it)", sizes.total_steps)
                return json.loads((run_dir / "summary.json").read_text())
            # damaged checkpoints newer than the one restored are renamed <step>.damaged, so
            # training writes those steps again
            checkpoint.set_aside_after(ckpt_dir, int(meta["env_steps"]))
            state = loop.restore(state, saved, meta)
            truncate_metrics(run_dir, updates_done)
            from omegaconf import OmegaConf

            write_atomic(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(given))
        write_legs(run_dir, [leg for leg in read_legs(run_dir) if leg["start_update"] < updates_done] + [
            {"start_update": updates_done, "config": config_container(given)}])
        log.info("rlcli %s: %s on %s (%s backend), %s estimator, %d seed(s), %d env steps each -> %s",
                 "resume" if resume else "train", cfg.algo.name, spec.id, backend_name,
                 cfg.estimator.name, num_seeds, sizes.total_steps, run_dir)
        if resume:
            log.info("resuming from the checkpoint at env step %d (update %d)",
                     updates_done * sizes.steps_per_update, updates_done)
        for note in config.rounding_notes(cfg, sizes):
            log.info("note: %s", note)
        compile_time = init_time + loop.compile(state)
        devices = xla.devices_of(state)
        log.info("compiled in %.1f s%s", compile_time,
                 f"; the seeds train on {devices} devices in parallel" if devices > 1 else "")
        end = sizes.num_updates if stop_at_update is None else min(stop_at_update, sizes.num_updates)
        last_eval = _loop(cfg, run_dir, loop, state, sizes, seeds, updates_done, eval_index,
                          wall_before - start, signals, end)
    if end < sizes.num_updates:
        log.info("stopped at update %d with a checkpoint, as the replayed run was", end)
        return None
    run_time = time.perf_counter() - start - compile_time
    wall_time = wall_before + time.perf_counter() - start
    curves.learning_curve(read_metrics(run_dir), run_dir / "curve.png",
                        f"{cfg.algo.name} on {spec.id} ({backend_name})")
    ret, length = last_eval
    trained_steps = (sizes.num_updates - updates_done) * sizes.steps_per_update
    summary = {
        "algo": cfg.algo.name,
        "env": spec.id,
        "backend": backend_name,
        "estimator": cfg.estimator.name,
        "seeds": seeds,
        "total_steps": sizes.total_steps,
        "num_updates": sizes.num_updates,
        "resumed_from_update": updates_done if resume else None,
        "final_eval": {
            "episodes": cfg.eval_episodes,
            "deterministic": cfg.eval_deterministic,
            "return_mean": [float(x) for x in ret.mean(axis=1)],
            "return_std": [float(x) for x in ret.std(axis=1)],
            "length_mean": [float(x) for x in length.mean(axis=1)],
        },
        "final_eval_return_mean": float(ret.mean()),
        "wall_time_s": round(wall_time, 3),
        "compile_time_s": round(compile_time, 3),
        "run_time_s": round(run_time, 3),
        "steps_per_second": round(trained_steps * num_seeds / max(run_time, 1e-9), 1),
        "device": jax.devices()[0].platform,
        "seed_devices": devices,
        "versions": versions(),
        "git_commit": git_commit(),
    }
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("final evaluation return %s (mean over %d episodes per seed); %.1f s wall, %.0f steps/s",
             ", ".join(f"{x:.1f}" for x in summary["final_eval"]["return_mean"]),
             cfg.eval_episodes, wall_time, summary["steps_per_second"])
    return summary


def _loop(cfg, run_dir: Path, loop: Loop, state, sizes: config.Sizes, seeds, updates_done: int,
          eval_index: int, wall_offset: float, signals: faults.StopSignals, end: int):
    """Chunks from update `updates_done` to update `end`: log, evaluate, checkpoint (always at
    `end`). Returns the last evaluation's (returns, lengths), or None if there was none."""
    from rlcli.logger import MetricsLogger, Progress

    num_seeds = len(seeds)
    ckpt_dir = run_dir / "checkpoints"
    metrics_log = MetricsLogger(run_dir, cfg.logger, num_seeds,
                                purge_step=updates_done * sizes.steps_per_update + 1 if updates_done else None,
                                algo=cfg.algo.name)
    ckpt = checkpoint.manager(ckpt_dir, cfg.checkpoint_keep)
    progress = Progress(cfg.logger.progress, sizes.total_steps)
    saved_steps = set(checkpoint.steps(ckpt_dir))
    last_saved = max(saved_steps, default=None)
    last_eval = None
    loop_start = time.perf_counter()
    start_updates = updates_done

    def save(env_steps: int) -> None:
        nonlocal last_saved
        if env_steps in saved_steps:
            return
        meta = {"env_steps": env_steps, "update": updates_done, "eval_index": eval_index,
                "wall_time": wall_offset + time.perf_counter(), "seeds": seeds}
        try:
            checkpoint.save(ckpt, env_steps, loop.checkpoint_state(state), meta)
        except Exception as err:
            raise RunError(f"cannot write the checkpoint at env step {env_steps} to {ckpt_dir}: {faults.os_error(err)}; "
                           f"{faults.resume_hint(run_dir, last_saved)}") from None
        saved_steps.add(env_steps)
        last_saved = env_steps

    try:
        while updates_done < end:
            n = min(sizes.updates_per_log, end - updates_done)
            chunk_start = time.perf_counter()
            state, out = loop.chunk(state, n)
            bad = faults.first_divergence(out, seeds, updates_done, n)
            updates_done += n
            chunk_number = math.ceil(updates_done / sizes.updates_per_log)
            env_steps = updates_done * sizes.steps_per_update
            last = updates_done == sizes.num_updates
            count = np.asarray(out.episodes.count)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_seed = {
                    "episode/count": count,
                    "episode/return": np.where(count > 0, np.asarray(out.episodes.return_sum) / count, np.nan),
                    "episode/length": np.where(count > 0, np.asarray(out.episodes.length_sum) / count, np.nan),
                    **{k: np.asarray(v) for k, v in out.metrics.items()},
                }
            # env steps per second of this chunk, all seeds, evaluation excluded
            chunk_rate = n * sizes.steps_per_update * num_seeds / max(time.perf_counter() - chunk_start, 1e-9)
            if bad is None and (last or (sizes.eval_every_chunks and chunk_number % sizes.eval_every_chunks == 0)):
                ret, length = loop.evaluate(state, eval_index)
                eval_index += 1
                last_eval = (ret, length)
                per_seed["eval/return_mean"] = ret.mean(axis=1)
                per_seed["eval/return_std"] = ret.std(axis=1)
                per_seed["eval/length_mean"] = length.mean(axis=1)
            wall = wall_offset + time.perf_counter()
            try:
                metrics_log.write(seed_records(
                    {"update": updates_done, "env_steps": env_steps, "wall_time": round(wall, 4),
                     "perf/steps_per_s": round(chunk_rate, 1)},
                    num_seeds, per_seed, seeds))
            except OSError as err:
                raise RunError(f"cannot write metrics to {run_dir}: {err}; "
                               f"{faults.resume_hint(run_dir, last_saved)}") from None
            if bad is not None:
                update, metric, seed = bad
                raise RunError(
                    f"training diverged: {metric} not finite at update {update} (env step "
                    f"{update * sizes.steps_per_update}, seed {seed}); {faults.resume_hint(run_dir, last_saved)}; "
                    "try a smaller algo.learning_rate, or debug.nan_check=true to find the "
                    "operation that first produced a NaN", EXIT_DIVERGED)
            if (last or updates_done == end or chunk_number % sizes.checkpoint_every_chunks == 0
                    or signals.received):
                save(env_steps)
            rate = (updates_done - start_updates) * sizes.steps_per_update * num_seeds / max(
                time.perf_counter() - loop_start, 1e-9)
            finite = per_seed["episode/return"][np.isfinite(per_seed["episode/return"])]
            progress.update(env_steps, rate, float(finite.mean()) if finite.size else None)
            if signals.received and not last:
                raise Interrupted(
                    f"stopped by {signal.Signals(signals.received).name} at env step {env_steps} "
                    f"(update {updates_done}); checkpoint written; continue with: "
                    f"rlcli resume run={run_dir}", signals.received)
    finally:
        progress.close()
        ckpt.close()
        metrics_log.close()
    return last_eval


