"""The package's shape, read from its source (ast): imports only go down (no cycles), no module
imports another module's underscore names, nothing imports JAX's private `jax._src`, and
every module holds one concern in about 400 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlcli"
MAX_LINES = 430  # "about 400": rlcli/commands/plot.py is the longest


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for every import in the file,
    function-level imports included; `from rlcli import x` of a submodule x is x itself."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full, None) if full in known else (base, alias.name))
    return out


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    private = []
    for name, path in known.items():
        for target, imported in imports(name, path, known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if not target or target == name:
                continue
            edges[name].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {target}.{imported}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycles():
    edges, _ = graph()
    assert len(edges) > 40  # the walk found the package
    assert "rlcli.types" in edges["rlcli.loops.jax"]  # and its imports, function-level ones too
    assert cycles(edges) == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles(edges))


def test_no_module_imports_another_modules_underscore_names():
    _, private = graph()
    assert private == []


def test_nothing_imports_jax_private_modules():
    known = modules()
    offenders = [f"{name}: {target}" for name, path in known.items() for target, _ in imports(name, path, known)
                 if target == "jax._src" or target.startswith("jax._src.")]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_size(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by concern"


def env_steps(path: Path) -> list[str]:
    """Places where the module steps an environment: `<...env...>.step`, `.step_final` or
    `.step_env` (called or passed on, as to jax.vmap)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("step", "step_final", "step_env"):
            owner = ast.unparse(node.value)
            if "env" in owner.lower():
                found.append((node.lineno, f"{path.name}:{node.lineno} {owner}.{node.attr}"))
    return [place for _, place in sorted(found)]


def test_the_env_step_finder_finds_a_planted_loop(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text("def play(env, a):\n    for t in range(3):\n        env.step(a)\n    jax.vmap(envs.step_final)\n")
    assert env_steps(planted) == ["m.py:3 env.step", "m.py:4 envs.step_final"]


def test_only_the_rollout_steps_environments():
    """Training, evaluation (videos included), diagnose and a3c go through rlcli.rollout: no
    other module steps an environment (the env adapters define the steps)."""
    offenders = [place for name, path in modules().items()
                 if name != "rlcli.rollout" and not name.startswith("rlcli.envs")
                 for place in env_steps(path)]
    assert offenders == []
    assert env_steps(modules()["rlcli.rollout"])  # the finder sees the rollout's own steps
