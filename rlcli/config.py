"""Config validation, typed values and derived sizes.

`validate(cfg)` checks every key a run reads against its declaration (rlcli.schema) before
anything is compiled or written, and returns the derived sizes. It never mutates the config. A
bad value raises `ConfigError` whose message is one line: the key, the value and what is
allowed. `typed(cfg)` is the checked config with every declared key in its declared type, which
is what the algorithms, loops and train loop read (no casts at the point of use).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from rlcli.errors import ConfigError, EnvConfigError
from rlcli.rules import check, rules_of


class Sizes(NamedTuple):
    """Sizes derived from the config (per seed)."""

    steps_per_update: int  # num_envs x algo.num_steps
    num_updates: int  # updates of the run
    total_steps: int  # env steps actually run: num_updates x steps_per_update
    updates_per_log: int  # updates per compiled chunk = per metrics record
    num_chunks: int
    eval_every_chunks: int | None  # periodic evaluation (None: only at the end)
    checkpoint_every_chunks: int


def compose(overrides=(), return_hydra_config: bool = False) -> DictConfig:
    """The train config as `rlcli train <overrides>` composes it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from rlcli.paths import config_dir
    from rlcli.schema import register

    register()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose_default() -> DictConfig:
    """The train config with no overrides (for key suggestions)."""
    return compose()


def _chunks(interval_steps: int, steps_per_chunk: int) -> int:
    return max(1, math.ceil(interval_steps / steps_per_chunk))


def validate(cfg: DictConfig) -> Sizes:
    """Check every key (raises ConfigError) and return the derived sizes."""
    from rlcli import envs

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # an interpolation that does not resolve
        raise ConfigError(f"config does not resolve: {err}".splitlines()[0]) from None
    from rlcli import algos, networks, runtime, schema
    from rlcli.remote import check_config as check_logger

    for group in ("algo", "network", "logger", "estimator"):
        check(cfg, {f"{group}.name": schema.name_key(group).rule})
    declared = schema.keys_of(cfg)
    env_id_rule = declared.pop("env.id").rule  # checked after the algorithm's keys, with the env
    later = ("algo.", "logger.wandb.", "logger.mlflow.")  # checked below, in this order
    check(cfg, {name: key.rule for name, key in declared.items()
                if not name.startswith(later) and name not in schema.ADDED_LATER})
    runtime.threads_of(cfg)  # null or an int >= 1; missing in runs saved before the key existed
    runtime.cache_dir_of(cfg)  # auto, null or a directory; likewise
    check_logger(cfg)
    algo = algos.module(cfg.algo.name)
    check(cfg, rules_of(algo.KEYS))
    check(cfg, {"env.id": env_id_rule})
    cfg = typed(cfg)  # every key is checked: the cross-key checks below read typed values
    if cfg.estimator.name not in algo.ESTIMATORS:
        raise ConfigError(
            f"estimator={cfg.estimator.name} does not fit algo={cfg.algo.name} (allowed with "
            f"algo={cfg.algo.name}: estimator={', '.join(algo.ESTIMATORS)})")

    env_id = cfg.env.id
    try:
        envs.check_env_id(env_id)
        backend = envs.resolve_backend(env_id, cfg.env.backend)
        spec = envs.make_spec(env_id, backend, cfg.env.mask_velocity)
        if backend == "gymnasium":
            from rlcli.envs.gymnasium_backend import vectorization_mode

            vectorization_mode(env_id, cfg.env.vectorization)
    except EnvConfigError as err:
        raise ConfigError(str(err)) from None
    except Exception as err:
        import gymnasium

        if not isinstance(err, gymnasium.error.Error):  # a broken install is not bad input
            raise
        # e.g. DependencyNotInstalled for a Box2D or MuJoCo id without its extra
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"env.id={env_id!r} cannot be created: {first}") from None

    space = "discrete" if spec.discrete else "continuous"
    if space not in algo.ACTION_SPACES:
        raise ConfigError(
            f"algo={cfg.algo.name} needs a {' or '.join(algo.ACTION_SPACES)} action space but "
            f"env.id={env_id!r} has a {space} one (allowed with algo={cfg.algo.name}: "
            f"environments with {' or '.join(algo.ACTION_SPACES)} actions)")
    if hasattr(algo, "check"):
        algo.check(cfg, spec)
    networks.check(cfg, spec)

    steps_per_update = cfg.num_envs * cfg.algo.num_steps
    total = cfg.total_steps
    if total < steps_per_update:
        raise ConfigError(
            f"total_steps={total} is smaller than one update (allowed: >= num_envs x "
            f"algo.num_steps = {cfg.num_envs} x {cfg.algo.num_steps} = {steps_per_update})"
        )
    num_updates = math.ceil(total / steps_per_update)
    updates_per_log = min(num_updates, math.ceil(cfg.log_interval / steps_per_update))
    steps_per_chunk = updates_per_log * steps_per_update
    eval_every = None
    if cfg.eval_interval is not None:
        eval_every = _chunks(cfg.eval_interval, steps_per_chunk)
    return Sizes(
        steps_per_update=steps_per_update,
        num_updates=num_updates,
        total_steps=num_updates * steps_per_update,
        updates_per_log=updates_per_log,
        num_chunks=math.ceil(num_updates / updates_per_log),
        eval_every_chunks=eval_every,
        checkpoint_every_chunks=_chunks(cfg.checkpoint_interval, steps_per_chunk),
    )


def typed(cfg: DictConfig) -> DictConfig:
    """The config (checked by `validate`) with interpolations resolved and every declared key in
    its declared type: integer keys ints, number keys floats, lists lists."""
    from rlcli import schema
    from rlcli.rules import MISSING, get, typed as typed_value

    data = OmegaConf.to_container(cfg, resolve=True)
    for name, key in schema.keys_of(cfg).items():
        value = get(cfg, name)
        if value is not MISSING:
            *parents, last = name.split(".")
            node = data
            for part in parents:
                node = node[part]
            node[last] = typed_value(value, key.rule)
    return OmegaConf.create(data)


def rounding_notes(cfg: DictConfig, sizes: Sizes) -> list[str]:
    """Human-readable notes where the (typed) config's step counts were rounded to whole
    updates."""
    notes = []
    if sizes.total_steps != cfg.total_steps:
        notes.append(
            f"total_steps={cfg.total_steps} rounded up to {sizes.total_steps} "
            f"({sizes.num_updates} updates x {sizes.steps_per_update} steps)"
        )
    per_log = sizes.updates_per_log * sizes.steps_per_update
    if per_log != cfg.log_interval:
        notes.append(f"log_interval={cfg.log_interval} rounded to {per_log} env steps")
    return notes
