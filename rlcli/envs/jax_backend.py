"""The `jax` backend: gymnax's pure-JAX environments: the ports of the classic-control tasks
(`PORTS`, which also run on the gymnasium backend) and the rest of gymnax's registry
(`GYMNAX`: MinAtar, bsuite, the misc tasks).

gymnax (>= 1.0) already keeps termination and time-limit truncation apart and returns the
final observation of an ended episode beside the reset one; this module fixes the default
parameters, clips continuous actions, gives observations as float32 arrays of at least one
axis (FrozenLake's scalar state index becomes shape (1,)) and presents the `Step` protocol of
`rlcli.envs`.
"""

from __future__ import annotations

import importlib
import sys
import types
from functools import lru_cache
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlcli.types import EnvSpec, Step

PORTS = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
)
# gymnax's other environments, less MNISTBandit-bsuite (which downloads MNIST when it is made)
GYMNAX = (
    "Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar", "SpaceInvaders-MinAtar",
    "Catch-bsuite", "DeepSea-bsuite", "MemoryChain-bsuite", "UmbrellaChain-bsuite", "DiscountingChain-bsuite",
    "SimpleBandit-bsuite", "FourRooms-misc", "MetaMaze-misc", "PointRobot-misc", "BernoulliBandit-misc",
    "GaussianBandit-misc", "Reacher-misc", "Swimmer-misc", "Pong-misc", "FrozenLake-misc",
)


# env.mask_velocity: the observation components kept when the velocities are hidden (CartPole:
# the cart position and the pole angle, of (x, x_dot, theta, theta_dot)), a partially observed task
MASKED = {"CartPole-v1": (0, 2)}


class _OnFirstUse(types.ModuleType):
    """Stands in for a module until one of its attributes is used; then imports the module."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def import_gymnax():
    """gymnax, imported without importing seaborn. gymnax's package imports all its envs, and
    its Pong imports seaborn (about 1.3 s of every rlcli process start, with pandas and
    scipy.stats) for a rendering that rlcli never calls. While gymnax is imported, `seaborn`
    in sys.modules is a stand-in that imports the real package on first use; afterwards it is
    removed, so any later `import seaborn` gets the real package."""
    if "gymnax" in sys.modules or "seaborn" in sys.modules:
        import gymnax

        return gymnax
    stand_in = sys.modules["seaborn"] = _OnFirstUse("seaborn")
    try:
        import gymnax
    finally:
        if sys.modules.get("seaborn") is stand_in:
            del sys.modules["seaborn"]
    return gymnax


class JaxEnv(NamedTuple):
    """One environment as pure functions; vmap them over a batch of envs."""

    spec: EnvSpec
    reset: Callable[[jax.Array], tuple[jax.Array, Any]]  # key -> (obs, state)
    step: Callable[[jax.Array, Any, jax.Array], tuple[Any, Step]]  # (key, state, a) -> (state, Step)
    # the same step, also returning the state the transition reached before any reset (the
    # terminal state where an episode ends): what a video draws
    step_final: Callable[[jax.Array, Any, jax.Array], tuple[Any, Step, Any]]
    gymnax_env: Any
    params: Any


@lru_cache(maxsize=None)
def make(env_id: str, observed: tuple[int, ...] | None = None) -> JaxEnv:
    """The env of `env_id`; with `observed` (a spec's, from env.mask_velocity) its observations
    hold only those components."""
    env, params = import_gymnax().make(env_id)
    env_spec = spec(env_id, observed is not None)
    full_shape = spec(env_id).obs_shape

    def as_obs(obs):
        obs = obs.astype(jnp.float32).reshape(full_shape)
        return obs if observed is None else obs[jnp.asarray(observed)]

    def reset(key):
        obs, state = env.reset(key, params)
        return as_obs(obs), state

    def env_action(action):
        if env_spec.discrete:
            return action
        low = jnp.asarray(env_spec.action_low, jnp.float32)
        high = jnp.asarray(env_spec.action_high, jnp.float32)
        return jnp.clip(action, low, high)

    def transition(obs, reward, terminated, truncated, final_obs) -> Step:
        return Step(obs=as_obs(obs), reward=jnp.asarray(reward, jnp.float32).reshape(()),
                    terminated=jnp.asarray(terminated, bool).reshape(()),
                    truncated=jnp.asarray(truncated, bool).reshape(()), next_obs=as_obs(final_obs))

    def step(key, state, action):
        obs, state, reward, terminated, truncated, info = env.step(key, state, env_action(action), params)
        return state, transition(obs, reward, terminated, truncated, info["final_observation"])

    def step_final(key, state, action):
        """gymnax's `step` (its key split and auto-reset) with the pre-reset state kept."""
        key_step, key_reset = jax.random.split(key)
        obs_step, final_state, reward, terminated, _ = env.step_env(key_step, state, env_action(action), params)
        truncated = env.is_truncated(final_state, params)
        done = jnp.logical_or(terminated, truncated)
        obs_reset, state_reset = env.reset_env(key_reset, params)
        state = jax.tree.map(lambda x, y: jax.lax.select(done, x, y), state_reset, final_state)
        obs = jax.lax.select(done, obs_reset, obs_step)
        return state, transition(obs, reward, terminated, truncated, obs_step), final_state

    return JaxEnv(env_spec, reset, step, step_final, env, params)


@lru_cache(maxsize=None)
def spec(env_id: str, mask_velocity: bool = False) -> EnvSpec:
    if mask_velocity:
        observed = MASKED[env_id]
        return spec(env_id)._replace(obs_shape=(len(observed),), observed=observed)
    gymnax = import_gymnax()
    from gymnax.environments import spaces

    env, params = gymnax.make(env_id)
    obs_shape = tuple(env.observation_space(params).shape) or (1,)
    space = env.action_space(params)
    if isinstance(space, spaces.Discrete):
        return EnvSpec(env_id, "jax", obs_shape, True, int(space.n), None, None,
                       int(params.max_steps_in_episode))
    shape = tuple(space.shape) or (1,)
    dim = int(jnp.prod(jnp.array(shape)))
    low = tuple(float(x) for x in jnp.broadcast_to(jnp.asarray(space.low), (dim,)))
    high = tuple(float(x) for x in jnp.broadcast_to(jnp.asarray(space.high), (dim,)))
    return EnvSpec(env_id, "jax", obs_shape, False, dim, low, high,
                   int(params.max_steps_in_episode))
