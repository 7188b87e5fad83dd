"""Training loops, one module per loop kind, each giving `train` the same `Loop` (rlcli.types):

* `jax`: pure-JAX envs; a chunk of updates is one compiled program.
* `host`: gymnasium's vector envs stepped from Python (the gymnasium backend).
* `asynchronous`: algo=a3c's worker threads.
"""

from __future__ import annotations

import importlib

from rlcli import algos
from rlcli.types import Loop


def kind(algo_name: str, backend_name: str) -> str:
    """The loop kind of a run: the algorithm's own (`LOOP` in its module), else the backend's."""
    own = getattr(algos.module(algo_name), "LOOP", None)
    return own or {"jax": "jax", "gymnasium": "host"}[backend_name]


def fresh_episodes(algo_name: str) -> bool:
    """Whether every rollout of the algorithm starts a fresh episode in each column
    (`FRESH_EPISODES` in its module: the Monte-Carlo batches of reinforce and is_pg)."""
    return getattr(algos.module(algo_name), "FRESH_EPISODES", False)


def make(cfg, spec, algo, sizes, backend_name: str) -> Loop:
    name = kind(cfg.algo.name, backend_name)
    module = importlib.import_module(f"rlcli.loops.{name}")
    if name == "asynchronous":
        return module.make(cfg, spec, algo, sizes)
    return module.make(cfg, spec, algo, sizes, fresh=fresh_episodes(cfg.algo.name))
