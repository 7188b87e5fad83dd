"""`rlcli list [algos|estimators|envs] [--all]`: what can be composed, and what each choice means.

Everything is read from the code and the config files, so the list cannot drift from what
`rlcli train` accepts: algorithms are the modules of `rlcli.algos` (first docstring line, which
cites the seed, and their `ACTION_SPACES`/`ESTIMATORS`), estimators and environments are the
files of conf/estimator and conf/env (their first comment line), and the gymnasium backend
takes any id in gymnasium's registry (`--all` prints them).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from rlcli import arguments
from rlcli.arguments import Command
from rlcli.errors import ConfigError, report

SECTIONS = ("algos", "estimators", "envs")
COMMAND = Command(
    "list", "[algos|estimators|envs] [--all]",
    """Lists the algo=, estimator= and env= choices of rlcli train with what each means and the seed
equation it implements (all three sections by default). Environments are listed per backend:
the pure-JAX ports and the presets of conf/env.""",
    (), positional=f"sections to list: {', '.join(SECTIONS)} (default: all)",
    flags=(("--all", "also print every id registered with gymnasium, each usable as env=gymnasium env.id=<id>"),),
)


def _first_comment(path: Path) -> str:
    """The file's leading comment lines, joined."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def _default_estimator(algo: str, config_dir: Path) -> str:
    """The estimator an algo file selects (`override /estimator: X`), else train.yaml's."""
    import yaml

    data = yaml.safe_load((config_dir / "algo" / f"{algo}.yaml").read_text()) or {}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict) and "override /estimator" in entry:
            return entry["override /estimator"]
    train = yaml.safe_load((config_dir / "train.yaml").read_text())
    return next(e["estimator"] for e in train["defaults"] if isinstance(e, dict) and "estimator" in e)


def algo_rows(config_dir: Path) -> list[tuple[str, str, str]]:
    """(name, what it is, action spaces / estimators) per `algo=` choice."""
    from rlcli import algos

    rows = []
    for name in algos.names():
        mod = algos.module(name)
        summary = " ".join((mod.__doc__ or "").strip().split("\n\n")[0].split())
        default = _default_estimator(name, config_dir)
        fits = ", ".join(mod.ESTIMATORS)
        rows.append((name, summary, f"actions: {', '.join(mod.ACTION_SPACES)}; estimator: {default} "
                                    f"(allowed: {fits})"))
    return rows


def estimator_rows(config_dir: Path) -> list[tuple[str, str, str]]:
    from rlcli import algos

    rows = []
    for path in sorted((config_dir / "estimator").glob("*.yaml")):
        users = [a for a in algos.names() if path.stem in algos.module(a).ESTIMATORS]
        rows.append((path.stem, _first_comment(path), f"with algo: {', '.join(users)}"))
    return rows


def env_rows(config_dir: Path) -> list[tuple[str, str, str]]:
    """(env= choice, backend and spaces, note) per conf/env preset."""
    import yaml

    from rlcli import envs
    from rlcli.checkpoint import quiet_stderr

    rows = []
    for path in sorted((config_dir / "env").glob("*.yaml"), key=lambda p: p.stem.lower()):
        data = yaml.safe_load(path.read_text())
        if data.get("id") is None:
            rows.append((path.stem, "gymnasium backend", _first_comment(path)))
            continue
        backend = envs.resolve_backend(data["id"], data.get("backend", "auto"))
        try:
            with quiet_stderr():  # MuJoCo's compiler warns about its own model files
                spec = envs.make_spec(data["id"], backend)
            space = (f"Discrete({spec.num_actions})" if spec.discrete
                     else f"Box({spec.num_actions})")
            shape = f"obs {spec.obs_shape}, actions {space}, {spec.max_episode_steps} steps"
        except Exception as err:  # e.g. MuJoCo without the extra installed
            shape = f"unavailable here: {str(err).splitlines()[0][:80]}"
        ports = ", also gymnasium" if backend == "jax" else ""
        rows.append((path.stem, f"{backend} backend{ports}", f"{shape}; {_first_comment(path)}".rstrip("; ")))
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
    from rlcli.paths import config_dir

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
    conf = config_dir()
    width = 100
    out = []
    if "algos" in chosen:
        out.append(_table("algorithms (algo=)", algo_rows(conf), width))
    if "estimators" in chosen:
        out.append(_table("advantage estimators (estimator=)", estimator_rows(conf), width))
    if "envs" in chosen:
        from rlcli.envs import jax_ports

        out.append(_table("environments (env=)", env_rows(conf), width))
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
