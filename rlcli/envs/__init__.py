"""Environments behind one protocol with two backends.

* ``jax``: pure-JAX environments (gymnax: the classic-control ports, MinAtar, bsuite, misc) with
  ``reset(key) -> (obs, state)`` and ``step(key, state, action) -> Step`` for ONE env;
  ``jax.vmap`` them for a batch. They run inside ``jit``/``scan``, so collection and updates
  compile into one program.
* ``gymnasium``: any registered gymnasium id, vectorised on the host with gymnasium's vector
  API; ``reset() -> obs`` and ``step(action) -> Step`` over numpy arrays of N envs.

Both give the same transition semantics (`Step`): ``obs`` is what the agent acts on next
(already reset where an episode ended), ``next_obs`` is the true next observation of the
transition (the final observation where an episode ended), and ``terminated`` (a terminal
state: no bootstrap) is kept apart from ``truncated`` (a time limit: bootstrap from
V(next_obs)). Both flags can be true at once; termination wins. Continuous actions are clipped
to the action bounds inside ``step``; the agent keeps the unclipped sample for its log-prob.
"""

from __future__ import annotations

import difflib

from rlcli.errors import EnvConfigError
from rlcli.rules import REQUIRED, Choice, Key, Rule, boolean, int_at_least, one_of, with_defaults
from rlcli.types import EnvSpec

ENV_KEYS = {
    "env.id": Key(REQUIRED, Rule(lambda v: isinstance(v, str) and bool(v),
                                 "a registered environment id, e.g. env.id=CartPole-v1"),
                  "a JAX port or any registered gymnasium id"),
    "env.backend": Key("auto", one_of("auto", "jax", "gymnasium"), "auto (jax where a port exists) | jax | "
                                                                   "gymnasium"),
    "env.vectorization": Key("auto", one_of("auto", "sync", "async", "vector"),
                             "gymnasium backend: auto | sync | async (subprocesses) | vector (numpy-vectorised)"),
    "env.total_steps": Key(1_000_000, int_at_least(1), "default budget in env steps (total_steps)"),
    "env.mask_velocity": Key(False, boolean(), "CartPole-v1 on the jax backend: observe the cart position and "
                                               "pole angle only, the velocities hidden (a partially observed task "
                                               "for network=gru)"),
}
_MUJOCO = "MuJoCo (gymnasium backend, CPU): pip install -e \".[mujoco]\""
_MINATAR = "MinAtar (gymnax, jax backend): 10x10 grids of C channels; 10M steps as in the MinAtar paper"
# the env= choices (presets of the keys above)
CHOICES = {
    "Acrobot-v1": Choice("", with_defaults(ENV_KEYS, id="Acrobot-v1", total_steps=500_000)),
    "CartPole-v1": Choice("", with_defaults(ENV_KEYS, id="CartPole-v1", total_steps=500_000)),
    "HalfCheetah-v5": Choice(_MUJOCO, with_defaults(ENV_KEYS, id="HalfCheetah-v5", backend="gymnasium")),
    "Hopper-v5": Choice(_MUJOCO, with_defaults(ENV_KEYS, id="Hopper-v5", backend="gymnasium")),
    "MountainCar-v0": Choice("", with_defaults(ENV_KEYS, id="MountainCar-v0")),
    "MountainCarContinuous-v0": Choice("", with_defaults(ENV_KEYS, id="MountainCarContinuous-v0")),
    "Pendulum-v1": Choice("", with_defaults(ENV_KEYS, id="Pendulum-v1")),
    **{game: Choice(_MINATAR, with_defaults(ENV_KEYS, id=game, backend="jax", total_steps=10_000_000))
       for game in ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar",
                    "SpaceInvaders-MinAtar")},
    "gymnasium": Choice("any registered gymnasium id: rlcli train env=gymnasium env.id=LunarLander-v3",
                        with_defaults(ENV_KEYS, id=None, backend="gymnasium")),
    "gymnax": Choice("any gymnax environment (jax backend): rlcli train env=gymnax env.id=Catch-bsuite",
                     with_defaults(ENV_KEYS, id=None, backend="jax")),
}


def jax_ports() -> tuple[str, ...]:
    """Every env id of the jax backend: the classic-control ports, then gymnax's others."""
    from rlcli.envs.jax_backend import GYMNAX, PORTS

    return tuple(PORTS) + tuple(GYMNAX)


def resolve_backend(env_id: str, backend: str) -> str:
    """`auto` picks `jax` where a pure-JAX port exists, else `gymnasium`."""
    ports = jax_ports()
    if backend not in ("auto", "jax", "gymnasium"):
        raise EnvConfigError(f"env.backend={backend!r} is not allowed (allowed: auto, jax, gymnasium)")
    if backend == "auto":
        return "jax" if env_id in ports else "gymnasium"
    if backend == "jax" and env_id not in ports:
        raise EnvConfigError(
            f"env.backend=jax: no JAX port of env.id={env_id!r}; JAX ports: {', '.join(ports)} "
            "(use env.backend=gymnasium or auto)"
        )
    return backend


def check_env_id(env_id: str) -> None:
    """Raise EnvConfigError with close matches when env_id is not a registered gymnasium id
    nor a JAX port."""
    import gymnasium

    if env_id in jax_ports() or env_id in gymnasium.registry:
        return
    known = sorted(set(gymnasium.registry) | set(jax_ports()))
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `gymnasium.pprint_registry()`"
    raise EnvConfigError(f"env.id={env_id!r} is not a registered environment; {hint}")


def make_spec(env_id: str, backend: str, mask_velocity: bool = False) -> EnvSpec:
    """The spec of `env_id` on `backend`; `mask_velocity` (env.mask_velocity) hides the velocities
    of a jax-backend CartPole-v1 (EnvConfigError elsewhere)."""
    if mask_velocity:
        from rlcli.envs.jax_backend import MASKED

        if env_id not in MASKED or backend != "jax":
            raise EnvConfigError(f"env.mask_velocity=true is not available for env.id={env_id!r} on the {backend} "
                                 f"backend (allowed: env.id={' or '.join(MASKED)} on the jax backend; "
                                 "env.mask_velocity=false)")
    if backend == "jax":
        from rlcli.envs.jax_backend import spec

        return spec(env_id, mask_velocity)
    from rlcli.envs.gymnasium_backend import spec

    return spec(env_id)
