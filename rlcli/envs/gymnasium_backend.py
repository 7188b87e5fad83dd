"""The `gymnasium` backend: any registered gymnasium id, vectorised on the host.

Every transition of the batch is a real one (same-step autoreset): where an episode ends,
`obs` is the reset observation and `next_obs` the true final observation, matching the `jax`
backend's `Step`. Two ways to vectorise (`env.vectorization`):

* `sync` / `async`: gymnasium's `SyncVectorEnv` / `AsyncVectorEnv` of N copies of the env,
  in gymnasium's same-step autoreset mode (the final observation from `info["final_obs"]`).
* `vector`: the env's own numpy-vectorised class (its registered `vector_entry_point`, e.g.
  `CartPoleVectorEnv`): one numpy step for all N envs, about 10x faster than `sync`. gymnasium
  offers these only with next-step autoreset (the step after an episode's end resets the env
  and ignores its action), which would put a transition from a final observation into the
  batch; rlcli resets the finished envs within the same step instead (`SAME_STEP_RESETS`).
* `auto` (the default): `vector` where rlcli has a same-step reset for the env, else `sync`.
"""

from __future__ import annotations

import numpy as np

from rlcli.errors import EnvConfigError
from rlcli.types import EnvSpec, Step


def spec(env_id: str) -> EnvSpec:
    import gymnasium

    env = gymnasium.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gymnasium.spaces.Box):
        raise EnvConfigError(
            f"env.id={env_id!r} has a {type(obs_space).__name__} observation space; "
            "allowed: Box observations"
        )
    max_steps = gymnasium.spec(env_id).max_episode_steps
    if isinstance(act_space, gymnasium.spaces.Discrete):
        return EnvSpec(env_id, "gymnasium", tuple(obs_space.shape), True, int(act_space.n),
                       None, None, max_steps)
    if isinstance(act_space, gymnasium.spaces.Box) and len(act_space.shape) == 1:
        return EnvSpec(env_id, "gymnasium", tuple(obs_space.shape), False,
                       int(act_space.shape[0]), tuple(map(float, act_space.low)),
                       tuple(map(float, act_space.high)), max_steps)
    raise EnvConfigError(
        f"env.id={env_id!r} has a {act_space} action space; allowed: Discrete or 1-D Box"
    )


def _cartpole_reset(env, done: np.ndarray) -> np.ndarray:
    """Reset the envs `done` of a `CartPoleVectorEnv` now: their start states are drawn as its
    next `step` would draw them (one uniform draw of shape (4, k) from its generator), its
    step counters restart, and no reset is left pending. Returns their reset observations."""
    start = env.np_random.uniform(low=env.low, high=env.high, size=(4, int(done.sum())))
    env.state[:, done] = start
    env.steps[done] = 0
    env.prev_done[:] = False
    return start.T.astype(np.float32)


# same-step resets of gymnasium's numpy-vectorised env classes, by vector_entry_point
SAME_STEP_RESETS = {
    "gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv": _cartpole_reset,
}


def vector_ids() -> list[str]:
    """The registered ids whose numpy-vectorised env rlcli can reset in the same step."""
    import gymnasium

    return sorted(env_id for env_id, s in gymnasium.registry.items()
                  if isinstance(s.vector_entry_point, str) and s.vector_entry_point in SAME_STEP_RESETS)


def vectorization_mode(env_id: str, vectorization: str) -> str:
    """`sync`, `async` or `vector` for env_id; raises EnvConfigError for `vector` where rlcli
    has no same-step reset for the env."""
    import gymnasium

    entry = gymnasium.spec(env_id).vector_entry_point
    has_vector = isinstance(entry, str) and entry in SAME_STEP_RESETS
    if vectorization == "auto":
        return "vector" if has_vector else "sync"
    if vectorization == "vector" and not has_vector:
        raise EnvConfigError(
            f"env.vectorization='vector' is not available for env.id={env_id!r} (allowed: auto, "
            f"sync, async; vector only for {', '.join(vector_ids())})")
    return vectorization


class GymnasiumVecEnv:
    """N copies of a gymnasium env stepped together on the host (numpy in, numpy out)."""

    def __init__(self, env_id: str, num_envs: int, seed: int, vectorization: str = "sync",
                 render_mode: str | None = None):
        """`render_mode="rgb_array"` (sync envs only): `render(i)` draws env i, and an env
        that ended resets at its next step rather than at once, so its terminal state can be
        drawn (the transitions are the same)."""
        import gymnasium
        from gymnasium.vector import AutoresetMode

        self.spec = spec(env_id)
        self.num_envs = num_envs
        self.seed = seed
        self.mode = vectorization_mode(env_id, vectorization)
        if render_mode is not None:
            self.mode = "sync"
            self.envs = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                                           render_mode=render_mode,
                                           vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP})
        elif self.mode == "vector":
            self.envs = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
            self._reset_done = SAME_STEP_RESETS[gymnasium.spec(env_id).vector_entry_point]
        else:
            self.envs = gymnasium.make_vec(
                env_id,
                num_envs=num_envs,
                vectorization_mode=self.mode,
                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            )
        if not self.spec.discrete:
            self._low = np.asarray(self.spec.action_low, np.float32)
            self._high = np.asarray(self.spec.action_high, np.float32)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset all envs from `seed` (default: the seed given at creation): with `sync` and
        `async` env i is seeded with `seed + i`; a `vector` env has one generator for all."""
        obs, _ = self.envs.reset(seed=self.seed if seed is None else seed)
        return obs.astype(np.float32)

    def restart(self) -> np.ndarray:
        """Reset all envs, their generators going on (no reseeding): a fresh episode in every
        env, different from the previous ones."""
        obs, _ = self.envs.reset()
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> Step:
        action = np.asarray(action)
        if not self.spec.discrete:
            action = np.clip(action, self._low, self._high)
        obs, reward, terminated, truncated, info = self.envs.step(action)
        if self.mode == "vector":
            next_obs, done = obs.astype(np.float32, copy=False), terminated | truncated
            obs = next_obs.copy()
            if done.any():
                obs[done] = self._reset_done(self.envs, done)
            return Step(obs, reward.astype(np.float32, copy=False), terminated, truncated, next_obs)
        obs = obs.astype(np.float32)
        next_obs = obs.copy()
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                next_obs[i] = info["final_obs"][i]
        return Step(obs, reward.astype(np.float32), terminated.astype(bool),
                    truncated.astype(bool), next_obs)

    def render(self, index: int):
        """The frame of env `index` (an env made with render_mode)."""
        return self.envs.envs[index].render()

    def close(self) -> None:
        self.envs.close()


def make(env_id: str, num_envs: int, seed: int, vectorization: str = "sync",
         render_mode: str | None = None) -> GymnasiumVecEnv:
    return GymnasiumVecEnv(env_id, num_envs, seed, vectorization, render_mode)
