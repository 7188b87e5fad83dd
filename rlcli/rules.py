"""The rules that check a config key, and the one declaration of a train key.

A `Rule` is (check, what is allowed, cast): `check` raises ConfigError with one line naming
the key, the bad value and what is allowed, and `typed` gives a checked value its type (an
integer-valued 3.0 for an integer key: 3; a 1 for a number: 1.0). A `Key` is a train key's
single declaration: its default, its rule and its help text. The modules that read keys (config,
the algorithms, the estimators, the envs, the loggers) declare them; `rlcli.schema` collects
them into the Hydra groups, `rlcli train --help` and `rlcli list`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from omegaconf import DictConfig, OmegaConf

from rlcli.errors import ConfigError

class Rule(NamedTuple):
    ok: Callable[[Any], bool]
    allowed: str  # what is allowed, as the one-line error says it
    cast: Callable[[Any], Any] | None = None  # the checked value in its type (None: as it is)


def _int(v):
    return None if v is None else int(v)


def _float(v):
    return None if v is None else float(v)


class Key(NamedTuple):
    """A train key's one declaration."""

    default: Any
    rule: Rule
    help: str = ""


class Choice(NamedTuple):
    """An option of a config group (estimator=gae): what it is, and its keys."""

    help: str
    keys: dict[str, Key]


REQUIRED = object()  # the default of a shared key that every user of it sets (`with_defaults`)


def with_defaults(keys: dict[str, Key], **defaults) -> dict[str, Key]:
    """`keys` with the defaults given by the keys' last names (learning_rate=7e-4 sets
    algo.learning_rate; a pair (7e-4, "help") sets the help text too); every key left REQUIRED
    must be given one."""
    out = {}
    for name, key in keys.items():
        short = name.rsplit(".", 1)[-1]
        if short in defaults:
            value = defaults.pop(short)
            pair = value if isinstance(value, tuple) else (value, key.help)
            key = key._replace(default=pair[0], help=pair[1])
        out[name] = key
        if out[name].default is REQUIRED:
            raise TypeError(f"{name} needs a default")
    if defaults:
        raise TypeError(f"not among the keys: {', '.join(defaults)}")
    return out


def rules_of(keys: dict[str, Key]) -> dict[str, Rule]:
    return {name: key.rule for name, key in keys.items()}

MISSING = object()


def get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return MISSING
        node = node[part]
    return node


def is_int(v) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def is_num(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def int_at_least(lo: int) -> Rule:
    return Rule(lambda v: is_int(v) and v >= lo, f"an integer >= {lo}", int)


def optional_int_at_least(lo: int) -> Rule:
    return Rule(lambda v: v is None or (is_int(v) and v >= lo), f"null or an integer >= {lo}", _int)


def in_unit_interval() -> Rule:
    return Rule(lambda v: is_num(v) and 0.0 <= v <= 1.0, "a number in [0, 1]", float)


def positive() -> Rule:
    return Rule(lambda v: is_num(v) and v > 0, "a number > 0", float)


def non_negative() -> Rule:
    return Rule(lambda v: is_num(v) and v >= 0, "a number >= 0", float)


def one_of(*options) -> Rule:
    return Rule(lambda v: v in options, "one of " + ", ".join(map(str, options)))


def non_empty_text() -> Rule:
    return Rule(lambda v: isinstance(v, str) and bool(v), "a non-empty text")


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def int_list() -> Rule:
    return Rule(lambda v: OmegaConf.is_list(v) and len(v) > 0 and all(is_int(x) and x >= 1 for x in v),
                "a non-empty list of integers >= 1, e.g. [64,64]", lambda v: [int(x) for x in v])


def number() -> Rule:
    return Rule(is_num, "a number", float)


def optional_positive() -> Rule:
    return Rule(lambda v: v is None or (is_num(v) and v > 0), "null or a number > 0", _float)


def format_value(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value).replace(" ", "")


def check(cfg: DictConfig, rules: dict) -> None:
    for key, rule in rules.items():
        value = get(cfg, key)
        if value is MISSING:
            raise ConfigError(f"{key} is missing (allowed: {rule.allowed})")
        if not rule.ok(value):
            raise ConfigError(f"{key}={format_value(value)} is not allowed (allowed: {rule.allowed})")


def typed(value: Any, rule: Rule) -> Any:
    """A value that passed `rule` in the rule's type."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return value if rule.cast is None else rule.cast(value)


def flat_keys(cfg, prefix: str = "") -> list[str]:
    """Dotted names of the config's leaf keys."""
    keys = []
    for key, value in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else []:
        name = f"{prefix}{key}"
        keys += flat_keys(value, name + ".") if isinstance(value, DictConfig) else [name]
    return keys
