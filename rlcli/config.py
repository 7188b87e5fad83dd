"""Config validation and derived sizes.

The YAML groups under conf/ are the schema's defaults; `validate(cfg)` checks every key a
run reads before anything is compiled or written, and returns the derived sizes. It never
mutates the config. A bad value raises `ConfigError` whose message is one line: the key, the
value and what is allowed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from rlcli.errors import ConfigError, EnvConfigError
from rlcli.rules import (Rule, boolean, check, format_value, in_unit_interval, int_at_least, int_list, is_num, one_of,
                         optional_int_at_least, positive)


class Sizes(NamedTuple):
    """Sizes derived from the config (per seed)."""

    steps_per_update: int  # num_envs x algo.num_steps
    num_updates: int  # updates of the run
    total_steps: int  # env steps actually run: num_updates x steps_per_update
    updates_per_log: int  # updates per compiled chunk = per metrics record
    num_chunks: int
    eval_every_chunks: int | None  # periodic evaluation (None: only at the end)
    checkpoint_every_chunks: int


# key -> (check, what is allowed); estimator keys apply when that estimator is chosen, and
# each algorithm's own keys are its module's RULES (rlcli.algos).
COMMON_RULES: dict[str, Rule] = {
    "seed": int_at_least(0),
    "num_seeds": int_at_least(1),
    "num_envs": int_at_least(1),
    "total_steps": int_at_least(1),
    "eval_episodes": int_at_least(1),
    "eval_interval": optional_int_at_least(1),
    "eval_deterministic": boolean(),
    "log_interval": int_at_least(1),
    "checkpoint_interval": int_at_least(1),
    "checkpoint_keep": int_at_least(1),
    "debug.nan_check": boolean(),
    "normalize.obs": boolean(),
    "normalize.reward": boolean(),
    "normalize.clip_obs": positive(),
    "normalize.clip_reward": positive(),
    "env.backend": one_of("auto", "jax", "gymnasium"),
    "env.vectorization": one_of("auto", "sync", "async", "vector"),
    "network.hidden_sizes": int_list(),
    "network.activation": one_of("tanh", "relu", "elu", "gelu", "silu"),
    "network.shared": boolean(),
    "network.log_std_init": (is_num, "a number"),
    "logger.csv": boolean(),
    "logger.tensorboard": boolean(),
    "logger.progress": one_of("auto", "bar", "lines", "none"),
    "estimator.name": one_of("td", "nstep", "gae", "total_return", "reward_to_go", "none"),
}
ESTIMATOR_RULES: dict[str, dict[str, Rule]] = {
    "td": {},
    "nstep": {"estimator.n": optional_int_at_least(1)},
    "gae": {"estimator.lambda": in_unit_interval()},
    "none": {},
    "total_return": {"estimator.discounting": one_of("option1", "option2"),
                     # optimal: total_return only, q_control_variate: reward_to_go only
                     # (checked with the algorithm: rlcli.algos.reinforce.check)
                     "estimator.baseline": one_of("none", "mean", "value", "optimal", "q_control_variate")},
}
ESTIMATOR_RULES["reward_to_go"] = ESTIMATOR_RULES["total_return"]


def compose_default() -> DictConfig:
    """The train config with no overrides (for key suggestions)."""
    from hydra import compose, initialize_config_dir

    from rlcli.paths import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train")


def _chunks(interval_steps: int, steps_per_chunk: int) -> int:
    return max(1, math.ceil(interval_steps / steps_per_chunk))


def validate(cfg: DictConfig) -> Sizes:
    """Check every key (raises ConfigError) and return the derived sizes."""
    from rlcli import envs

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # an interpolation that does not resolve
        raise ConfigError(f"config does not resolve: {err}".splitlines()[0]) from None
    from rlcli import algos, runtime

    check(cfg, {"algo.name": one_of(*algos.names())})
    check(cfg, COMMON_RULES)
    runtime.threads_of(cfg)  # null or an int >= 1; missing in runs saved before the key existed
    runtime.cache_dir_of(cfg)  # auto, null or a directory; likewise
    from rlcli.remote import check_config as check_logger

    check_logger(cfg)
    check(cfg, ESTIMATOR_RULES[cfg.estimator.name])
    algo = algos.module(cfg.algo.name)
    check(cfg, algo.RULES)
    if cfg.estimator.name not in algo.ESTIMATORS:
        raise ConfigError(
            f"estimator={cfg.estimator.name} does not fit algo={cfg.algo.name} (allowed with "
            f"algo={cfg.algo.name}: estimator={', '.join(algo.ESTIMATORS)})")

    env_id = cfg.env.id
    if not isinstance(env_id, str) or not env_id:
        raise ConfigError(f"env.id={format_value(env_id)} is not allowed (allowed: a registered "
                          "environment id, e.g. env.id=CartPole-v1)")
    try:
        envs.check_env_id(env_id)
        backend = envs.resolve_backend(env_id, cfg.env.backend)
        spec = envs.make_spec(env_id, backend)
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

    steps_per_update = int(cfg.num_envs) * int(cfg.algo.num_steps)
    total = int(cfg.total_steps)
    if total < steps_per_update:
        raise ConfigError(
            f"total_steps={total} is smaller than one update (allowed: >= num_envs x "
            f"algo.num_steps = {cfg.num_envs} x {cfg.algo.num_steps} = {steps_per_update})"
        )
    num_updates = math.ceil(total / steps_per_update)
    updates_per_log = min(num_updates, math.ceil(int(cfg.log_interval) / steps_per_update))
    steps_per_chunk = updates_per_log * steps_per_update
    eval_every = None
    if cfg.eval_interval is not None:
        eval_every = _chunks(int(cfg.eval_interval), steps_per_chunk)
    return Sizes(
        steps_per_update=steps_per_update,
        num_updates=num_updates,
        total_steps=num_updates * steps_per_update,
        updates_per_log=updates_per_log,
        num_chunks=math.ceil(num_updates / updates_per_log),
        eval_every_chunks=eval_every,
        checkpoint_every_chunks=_chunks(int(cfg.checkpoint_interval), steps_per_chunk),
    )


def rounding_notes(cfg: DictConfig, sizes: Sizes) -> list[str]:
    """Human-readable notes where the config's step counts were rounded to whole updates."""
    notes = []
    if sizes.total_steps != int(cfg.total_steps):
        notes.append(
            f"total_steps={int(cfg.total_steps)} rounded up to {sizes.total_steps} "
            f"({sizes.num_updates} updates x {sizes.steps_per_update} steps)"
        )
    per_log = sizes.updates_per_log * sizes.steps_per_update
    if per_log != int(cfg.log_interval):
        notes.append(f"log_interval={int(cfg.log_interval)} rounded to {per_log} env steps")
    return notes
