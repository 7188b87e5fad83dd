"""The one way every command other than `train` takes its arguments (`train` composes with
Hydra): `key=value` options, each declared once (`Option`: its default, its check and its help
text), plus, where a command has them, positional arguments, flags and config overrides. A bad
argument raises ConfigError with one line naming it, the bad value and what is allowed, with a
close match where there is one; `usage` writes the command's --help from the declarations.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, NamedTuple

from rlcli.errors import ConfigError
from rlcli.rules import Rule


def value_of(text: str) -> Any:
    """A YAML scalar as Hydra reads one: `3` an int, `0.5` a float, `true` a bool, `null` None."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def text_of(text: str) -> str:
    """The text as it is (paths, comma-separated lists)."""
    return text


class Option(NamedTuple):
    name: str
    default: Any  # when not given; None where the command fills it in (from the run, say)
    rule: Rule  # (check, what is allowed)
    help: str
    parse: Callable[[str], Any] = value_of


class Command(NamedTuple):
    name: str  # as typed after `rlcli`
    synopsis: str  # what follows `usage: rlcli <name> `
    description: str
    options: tuple[Option, ...]
    positional: str | None = None  # what positional arguments are (None: not accepted)
    flags: tuple[tuple[str, str], ...] = ()  # (flag, help) besides --help
    overrides: str | None = None  # what other key=value arguments are (None: not accepted)


class Parsed(NamedTuple):
    values: dict[str, Any]  # every option: the given value, checked, or its default
    given: dict[str, str]  # the options given, as typed
    positional: list[str]
    flags: set[str]
    overrides: list[str]  # key=value arguments that are not options (commands with `overrides`)


def wants_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in args)


def parse(command: Command, args: list[str]) -> Parsed:
    """Sort `args` into options, positional arguments, flags and overrides; check each option
    given against its rule. Raises ConfigError (one line) for anything the command does not take."""
    options = {o.name: o for o in command.options}
    allowed = ", ".join(f"{name}=" for name in options)
    given: dict[str, str] = {}
    positional, flags, overrides = [], set(), []
    for arg in args:
        key, eq, text = arg.partition("=")
        if arg.startswith("-") and not eq:
            if arg not in {flag for flag, _ in command.flags}:
                known = ", ".join([flag for flag, _ in command.flags] + ["--help"])
                raise ConfigError(f"{arg} is not a flag of rlcli {command.name} (allowed: {known})")
            flags.add(arg)
        elif eq and key in options:
            given[key] = text
        elif eq and key and command.overrides is not None:
            overrides.append(arg)
        elif command.positional is not None and (not eq or "/" in key or Path(arg).exists()):
            positional.append(arg)
        elif eq:
            close = difflib.get_close_matches(key, list(options), n=1)
            hint = f"; did you mean {close[0]}={text}?" if close else ""
            others = f" and {command.positional}" if command.positional else ""
            raise ConfigError(f"{arg} is not an argument of rlcli {command.name} (allowed: {allowed}{others}){hint}")
        else:
            others = f" and {command.overrides}" if command.overrides else ""
            raise ConfigError(f"malformed argument {arg!r} (allowed: {allowed}{others})")
    values = {}
    for name, option in options.items():
        if name not in given:
            values[name] = option.default
            continue
        value = option.parse(given[name])
        if not option.rule.ok(value):
            raise ConfigError(f"{name}={given[name]} is not allowed (allowed: {option.rule.allowed})")
        if isinstance(value, float) and value.is_integer() and not isinstance(option.default, float):
            value = int(value)  # seed_index=1.0 as an index: 1
        values[name] = value if option.rule.cast is None else option.rule.cast(value)
    return Parsed(values, given, positional, flags, overrides)


def usage(command: Command) -> str:
    """The command's --help: synopsis, description, then every option with its default and
    what is allowed, from its declaration."""
    lines = [f"usage: rlcli {command.name} {command.synopsis}", "", command.description, ""]
    if command.positional:
        lines.append(f"  <positional>  {command.positional}")
    width = max([len(o.name) for o in command.options] + [len(f) for f, _ in command.flags] + [8]) + 2
    for option in command.options:
        default = "" if option.default is None else f" (default: {_shown(option.default)})"
        lines.append(f"  {option.name + '=':<{width + 1}}{option.help}{default}; allowed: {option.rule.allowed}")
    for flag, help_text in command.flags:
        lines.append(f"  {flag:<{width + 1}}{help_text}")
    if command.overrides:
        lines.append(f"  {'key=value':<{width + 1}}{command.overrides}")
    return "\n".join(lines).rstrip()


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
