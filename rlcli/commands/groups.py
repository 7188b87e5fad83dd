"""How `rlcli plot` forms groups of runs: the value of a `group_by` key in a run's config, a
group's label, and the order of groups (by value: learning rates 3e-05 < 0.0001 < 0.001)."""

from __future__ import annotations

SHORT_KEYS = {"algo": "algo.name", "env": "env.id", "estimator": "estimator.name"}
UNSET = object()


def config_value(config, key: str):
    """The value of a group_by key (short name or dotted key) in a run's config, or UNSET."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    dotted = SHORT_KEYS.get(key, key)
    try:
        return OmegaConf.select(config, dotted, default=UNSET)
    except OmegaConfBaseException:  # an interpolation that does not resolve
        return OmegaConf.select(config, dotted, default=UNSET, throw_on_resolution_failure=False)


def text(value) -> str:
    from rlcli.rules import format_value

    return "(unset)" if value is UNSET else value if isinstance(value, str) else format_value(value)


def group_of(config, group_by: list[str]) -> tuple[tuple[str, str], ...]:
    """((key, value text), ...) of a run's config for the group_by keys."""
    return tuple((key, text(config_value(config, key))) for key in group_by)


def check_group_by(configs: list, group_by: list[str]) -> None:
    """Raise ConfigError for a key that no run's config has."""
    import difflib

    from rlcli.errors import ConfigError
    from rlcli.rules import flat_keys

    for key in group_by:
        if all(config_value(c, key) is UNSET for c in configs):
            keys = sorted({k for c in configs for k in flat_keys(c)})
            close = difflib.get_close_matches(key, [*SHORT_KEYS, *keys], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"group_by={key} is not a config key of any run ({hint}allowed: "
                              f"{', '.join(SHORT_KEYS)} or a dotted key of .hydra/config.yaml, "
                              "e.g. algo.learning_rate)")


def order(group: tuple[tuple[str, str], ...]) -> tuple:
    """Groups in order of their values, key by key: numbers by value (3e-05 < 0.0001 < 0.001),
    before texts in text order."""
    def value(v: str):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)
    return tuple(value(v) for _, v in group)


def label(group: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{k}={v}" for k, v in group) or "all runs"
