"""`rlcli list [algos|estimators|envs] [--all]`: what can be composed, and what each choice means.

Everything is read from the declarations `rlcli train` composes (rlcli.schema), so the list
cannot drift from what it accepts: algorithms are the modules of `rlcli.algos` (first docstring
paragraph, which cites the seed, and their `ACTION_SPACES`/`ESTIMATORS`/`ESTIMATOR`), estimators
and environments the `CHOICES` of rlcli.estimators and rlcli.envs, and the gymnasium backend
takes any id in gymnasium's registry (`--all` prints them).
"""

from __future__ import annotations

import textwrap

from rlcli import arguments
from rlcli.arguments import Command
from rlcli.errors import ConfigError, report

SECTIONS = ("algos", "estimators", "envs")
COMMAND = Command(
    "list", "[algos|estimators|envs] [--all]",
    """Lists the algo=, estimator= and env= choices of rlcli train with what each means and the seed
equation it implements (all three sections by default). Environments are listed per backend:
the pure-JAX ports and the env= presets.""",
    (), positional=f"sections to list: {', '.join(SECTIONS)} (default: all)",
    flags=(("--all", "also print every id registered with gymnasium, each usable as env=gymnasium env.id=<id>"),),
)


def algo_rows() -> list[tuple[str, str, str]]:
    """(name, what it is, action spaces / estimators) per `algo=` choice."""
    from rlcli import algos, schema

    rows = []
    for name, choice in schema.choices("algo").items():
        mod = algos.module(name)
        fits = ", ".join(mod.ESTIMATORS)
        rows.append((name, choice.help, f"actions: {', '.join(mod.ACTION_SPACES)}; estimator: {mod.ESTIMATOR} "
                                        f"(allowed: {fits})"))
    return rows


def estimator_rows() -> list[tuple[str, str, str]]:
    from rlcli import algos, schema

    rows = []
    for name, choice in schema.choices("estimator").items():
        users = [a for a in algos.names() if name in algos.module(a).ESTIMATORS]
        rows.append((name, choice.help, f"with algo: {', '.join(users)}"))
    return rows


def env_rows() -> list[tuple[str, str, str]]:
    """(env= choice, backend and spaces, note) per env= preset."""
    import gymnasium

    from rlcli import envs, schema
    from rlcli.checkpoint import quiet_stderr

    rows = []
    for name, choice in sorted(schema.choices("env").items(), key=lambda item: item[0].lower()):
        env_id = choice.keys["env.id"].default
        if env_id is None:
            rows.append((name, f"{choice.keys['env.backend'].default} backend", choice.help))
            continue
        backend = envs.resolve_backend(env_id, choice.keys["env.backend"].default)
        try:
            with quiet_stderr():  # MuJoCo's compiler warns about its own model files
                spec = envs.make_spec(env_id, backend)
            space = (f"Discrete({spec.num_actions})" if spec.discrete
                     else f"Box({spec.num_actions})")
            shape = f"obs {spec.obs_shape}, actions {space}, {spec.max_episode_steps} steps"
        except Exception as err:  # e.g. MuJoCo without the extra installed
            shape = f"unavailable here: {str(err).splitlines()[0][:80]}"
        ports = ", also gymnasium" if backend == "jax" and env_id in gymnasium.registry else ""
        rows.append((name, f"{backend} backend{ports}", f"{shape}; {choice.help}".rstrip("; ")))
    return rows


def gymnasium_ids() -> list[str]:
    import gymnasium

    return sorted(gymnasium.registry)


def _table(title: str, rows: list[tuple[str, str, str]], width: int) -> str:
    name_w = max(len(r[0]) for r in rows) + 2
    wrap = max(width - name_w, 40)
    lines = [title]
    for name, what, extra in rows:
        body = textwrap.wrap(what, wrap) + textwrap.wrap(extra, wrap)
        lines.append(f"  {name.ljust(name_w)}{body[0] if body else ''}")
        lines += [f"  {'':{name_w}}{line}" for line in body[1:]]
    return "\n".join(lines)


def main(args: list[str]) -> int:
    if arguments.wants_help(args):
        print(arguments.usage(COMMAND))
        return 0
    try:
        parsed = arguments.parse(COMMAND, args)
        bad = [a for a in parsed.positional if a not in SECTIONS]
        if bad:
            raise ConfigError(f"{bad[0]!r} is not a section (allowed: {', '.join(SECTIONS)}, --all)")
    except ConfigError as err:
        return report("list", err)
    show_all, chosen = "--all" in parsed.flags, parsed.positional
    chosen = chosen or list(SECTIONS)
    width = 100
    out = []
    if "algos" in chosen:
        out.append(_table("algorithms (algo=)", algo_rows(), width))
    if "estimators" in chosen:
        out.append(_table("advantage estimators (estimator=)", estimator_rows(), width))
    if "envs" in chosen:
        from rlcli.envs import jax_ports

        out.append(_table("environments (env=)", env_rows(), width))
        out.append(f"  jax backend ports: {', '.join(jax_ports())}")
        ids = gymnasium_ids()
        if show_all:
            out.append("gymnasium ids (env=gymnasium env.id=<id>):\n" + "\n".join(
                textwrap.wrap(", ".join(ids), width, initial_indent="  ", subsequent_indent="  ")))
        else:
            out.append(f"  gymnasium backend: any of the {len(ids)} registered ids "
                       "(env=gymnasium env.id=<id>; rlcli list envs --all prints them)")
    print("\n\n".join(out))
    return 0
