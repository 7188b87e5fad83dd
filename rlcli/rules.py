"""The rules that check a config key: (check, what is allowed) pairs, and `check`, which
raises ConfigError with one line naming the key, the bad value and what is allowed. Every
module that declares keys (config, the algorithms, the loggers) builds its rules from these.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from rlcli.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]

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
    return (lambda v: is_int(v) and v >= lo), f"an integer >= {lo}"


def optional_int_at_least(lo: int) -> Rule:
    return (lambda v: v is None or (is_int(v) and v >= lo)), f"null or an integer >= {lo}"


def in_unit_interval() -> Rule:
    return (lambda v: is_num(v) and 0.0 <= v <= 1.0), "a number in [0, 1]"


def positive() -> Rule:
    return (lambda v: is_num(v) and v > 0), "a number > 0"


def non_negative() -> Rule:
    return (lambda v: is_num(v) and v >= 0), "a number >= 0"


def one_of(*options) -> Rule:
    return (lambda v: v in options), "one of " + ", ".join(map(str, options))


def non_empty_text() -> Rule:
    return (lambda v: isinstance(v, str) and bool(v)), "a non-empty text"


def boolean() -> Rule:
    return (lambda v: isinstance(v, bool)), "true or false"


def int_list() -> Rule:
    return (
        lambda v: OmegaConf.is_list(v) and len(v) > 0 and all(is_int(x) and x >= 1 for x in v),
        "a non-empty list of integers >= 1, e.g. [64,64]",
    )


def format_value(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value).replace(" ", "")


def check(cfg: DictConfig, rules: dict) -> None:
    for key, (ok, allowed) in rules.items():
        value = get(cfg, key)
        if value is MISSING:
            raise ConfigError(f"{key} is missing (allowed: {allowed})")
        if not ok(value):
            raise ConfigError(f"{key}={format_value(value)} is not allowed (allowed: {allowed})")


def flat_keys(cfg, prefix: str = "") -> list[str]:
    """Dotted names of the config's leaf keys."""
    keys = []
    for key, value in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else []:
        name = f"{prefix}{key}"
        keys += flat_keys(value, name + ".") if isinstance(value, DictConfig) else [name]
    return keys
