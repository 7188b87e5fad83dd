"""The train config's schema: every key declared once, collected into Hydra's config groups.

A train key is declared by the module that reads it, as a `rlcli.rules.Key` (default, rule,
help): the keys outside the groups here (`TRAIN_KEYS`), `algo.*` by each algorithm
(`KEYS`, plus `SETS`: its defaults for keys declared elsewhere, and `ESTIMATOR`: its default
`estimator=`), and the options of the other groups as `CHOICES` in rlcli.estimators,
rlcli.envs, rlcli.networks and rlcli.logger. `register()` stores them in Hydra's ConfigStore as
the `train` config and its group options (conf/ keeps only the per-pair `tuned/` values, the
`sweep/` search spaces and Hydra's own settings); `rlcli train --help`, `rlcli list`,
`config.validate` and `config.typed` read the same declarations.
"""

from __future__ import annotations

import textwrap
from typing import Any

from rlcli.rules import Choice, Key, Rule, boolean, int_at_least, one_of, optional_int_at_least, positive

def _cache_setting(v) -> bool:
    return v is None or (isinstance(v, str) and bool(v.strip()))


# the train keys outside the groups (conf: rlcli.schema); each group's keys are declared by the
# module that reads them: algo.* by its algorithm, estimator.* by rlcli.estimators, env.* by
# rlcli.envs, network.* by rlcli.networks, logger.* by rlcli.logger and rlcli.remote
TRAIN_KEYS: dict[str, Key] = {
    "seed": Key(0, int_at_least(0), "seed of the first learner; seed i of num_seeds uses seed + i"),
    "num_seeds": Key(1, int_at_least(1), "independent learners trained together in one process (jax.vmap)"),
    "total_steps": Key("${env.total_steps}", int_at_least(1), "env steps per seed; rounded up to whole updates "
                                                              "(printed); default: the env's budget"),
    "num_envs": Key(8, int_at_least(1), "environments stepped together per seed"),
    "eval_episodes": Key(10, int_at_least(1), "episodes of the final evaluation (and of each periodic one)"),
    "eval_interval": Key(None, optional_int_at_least(1), "env steps between evaluations while training; null: only "
                                                         "at the end"),
    "eval_deterministic": Key(True, boolean(), "evaluate the mode of the policy instead of sampling"),
    "log_interval": Key(10_000, int_at_least(1), "env steps between metric records (rounded up to whole updates)"),
    "checkpoint_interval": Key(100_000, int_at_least(1), "env steps between checkpoints (and one at the end)"),
    "checkpoint_keep": Key(3, int_at_least(1), "newest checkpoints kept"),
    "normalize.obs": Key(False, boolean(), "standardise observations with running mean/std (as Stable-Baselines3's "
                                           "VecNormalize; statistics saved in checkpoints)"),
    "normalize.reward": Key(False, boolean(), "divide rewards by the running std of the discounted return"),
    "normalize.clip_obs": Key(10.0, positive(), "normalised observations clipped to +-clip_obs"),
    "normalize.clip_reward": Key(10.0, positive(), "normalised rewards clipped to +-clip_reward"),
    "threads": Key(None, optional_int_at_least(1), "compute threads of the process that runs the job (XLA's CPU "
                                                   "thread pool); null: all cores. Set it when jobs run side by side "
                                                   "(joblib, Ray)"),
    "compile_cache": Key("auto", Rule(_cache_setting, "auto, null, or a directory path"),
                         "JAX's persistent compilation cache: auto (~/.cache/rlcli/jax), null (off) or a directory; "
                         "a rerun or a sweep's next job skips compiling"),
    "debug.nan_check": Key(False, boolean(), "report the operation that first produces a NaN (slow; jax checkify)"),
}
# missing in runs saved before they existed (rlcli.runtime reads them with their defaults)
ADDED_LATER = ("threads", "compile_cache")


GROUPS = ("algo", "env", "estimator", "network", "logger")
# the default choice of each group; an algorithm's ESTIMATOR replaces the estimator's
DEFAULTS = {"estimator": "nstep", "network": "mlp", "algo": "a2c", "env": "CartPole-v1", "logger": "default"}
HYDRA = {
    "callbacks": {"sweep_summary": {"_target_": "rlcli.cli.SweepSummary"}},
    "run": {"dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-${algo.name}-${env.id}"},
    "sweep": {"dir": "outputs/multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}", "subdir": "${hydra.job.num}"},
    "job": {"name": "train", "chdir": False},
}


def _summary(module) -> str:
    return " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())


def choices(group: str) -> dict[str, Choice]:
    """The options of a group: what each is, and the keys it declares with their defaults (an
    algorithm's keys do not include the defaults it SETS for other groups' keys)."""
    if group == "algo":
        from rlcli import algos

        return {name: Choice(_summary(algos.module(name)), algos.module(name).KEYS) for name in algos.names()}
    if group == "estimator":
        from rlcli.estimators import CHOICES
    elif group == "env":
        from rlcli.envs import CHOICES
    elif group == "network":
        from rlcli.networks import CHOICES
    elif group == "logger":
        from rlcli.logger import CHOICES
    else:
        raise KeyError(group)
    return CHOICES


def name_key(group: str) -> Key:
    return Key(None, one_of(*choices(group)), f"the {group}= choice")


def algo_estimator(name: str) -> str:
    """The estimator= an algorithm selects."""
    from rlcli import algos

    return algos.module(name).ESTIMATOR


def keys_of(cfg) -> dict[str, Key]:
    """Every key a composed train config is checked for, with its declaration: the keys outside
    the groups and those of the options it chose. (env has no name: env.id is its key.)"""
    from rlcli.envs import ENV_KEYS
    from rlcli.remote import REMOTE_KEYS

    keys = dict(TRAIN_KEYS)
    keys.update(ENV_KEYS)
    for group in ("network", "logger", "estimator", "algo"):
        keys[f"{group}.name"] = name_key(group)
        chosen = choices(group).get(cfg[group].name)
        if chosen is not None:
            keys.update(chosen.keys)
    for name, remote in REMOTE_KEYS.items():  # logger.wandb.* with any logger that has the node
        if cfg.logger.get(name) is not None:
            keys.update(remote)
    return keys


def complete(cfg) -> list[str]:
    """Give a saved run's config the keys declared after it was written, with their declared
    defaults (in place; the config must not be in struct mode); returns the keys added. A key is
    added with the default that keeps the behaviour of the runs before it, where there is one."""
    from omegaconf import OmegaConf

    from rlcli.rules import MISSING, get

    try:
        declared = keys_of(cfg)
    except Exception:  # a config too damaged to say: validation names what is wrong
        return []
    added = [name for name, key in declared.items() if get(cfg, name) is MISSING and not name.endswith(".name")]
    for name in added:
        OmegaConf.update(cfg, name, declared[name].default, force_add=True)
    return added


def nested(values: dict[str, Any]) -> dict:
    """{"algo.gamma": 0.99} -> {"algo": {"gamma": 0.99}}"""
    out: dict = {}
    for name, value in values.items():
        *parents, last = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _node(keys: dict[str, Key], **first) -> dict:
    return nested({**first, **{name: key.default for name, key in keys.items()}})


_registered = False


def register() -> None:
    """Store the train config and every group option in Hydra's ConfigStore (once per process);
    compose with `initialize_config_dir(paths.config_dir())` afterwards, as `rlcli train` does."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from rlcli import algos

    store = ConfigStore.instance()
    defaults: list = ["_self_", *({group: DEFAULTS[group]} for group in ("estimator", "network", "algo", "env",
                                                                          "logger"))]
    # per algo x env tuned values (conf/tuned/<algo>_<env>.yaml), when they exist; they come
    # last so they win over the defaults above; command-line overrides win over all
    defaults += [{"optional tuned": "${algo}_${env}"}, {"override hydra/job_logging": "rlcli"}]
    store.store(name="train", node={"defaults": defaults, **_node(TRAIN_KEYS), "hydra": HYDRA})
    for name in algos.names():
        module = algos.module(name)
        # package _global_: an algorithm may set other groups' defaults (num_envs, network sizes)
        # and picks its estimator; estimator= on the command line wins
        node = {"defaults": [{"override /estimator": module.ESTIMATOR}, "_self_"],
                **nested(getattr(module, "SETS", {})), **_node(module.KEYS, **{"algo.name": name})}
        store.store(group="algo", name=name, package="_global_", node=node)
    for group in ("estimator", "env", "network", "logger"):
        for name, choice in choices(group).items():
            named = {} if group == "env" else {f"{group}.name": name}
            store.store(group=group, name=name, package=group, node=_node(choice.keys, **named)[group])
    _registered = True


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    return str(value)


def help_text(cfg, width: int = 100) -> str:
    """`rlcli train --help`: the groups with their options, then every key of the composed
    config `cfg` with the value it holds there, its help and what is allowed, from the
    declarations."""
    from omegaconf import OmegaConf

    from rlcli.rules import get

    lines = ["rlcli train: policy-gradient training on JAX.", "",
             "usage: rlcli train [group=option ...] [key=value ...]   (add -m to sweep: seed=0,1,2)",
             "example: rlcli train algo=a2c env=CartPole-v1 num_seeds=8 total_steps=500000", "",
             "config groups (group=option; * marks this composition's choice):"]
    chosen = {"algo": cfg.algo.name, "env": next((n for n, c in choices("env").items()
                                                  if c.keys["env.id"].default == cfg.env.id), None),
              "estimator": cfg.estimator.name, "network": cfg.network.name, "logger": cfg.logger.name}
    for group in GROUPS:
        names = [name + ("*" if name == chosen[group] else "") for name in choices(group)]
        body = textwrap.wrap(", ".join(names), width - 14, break_on_hyphens=False)
        lines += [f"  {group + '=':<12}{body[0]}"] + [f"  {'':<12}{line}" for line in body[1:]]
    lines += ["", "keys (key=value; the value shown is this composition's):"]
    for name, key in keys_of(cfg).items():
        value = get(cfg, name)
        shown = _shown(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
        text = f"{key.help} (allowed: {key.rule.allowed})" if key.help else f"(allowed: {key.rule.allowed})"
        lines.append(f"  {name}={shown}")
        lines += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "Runs are written to outputs/<date>/<time>-<algo>-<env>/ (see README.md); `rlcli list` describes "
              "the options.", "Hydra's own options: rlcli train --hydra-help"]
    return "\n".join(lines)
