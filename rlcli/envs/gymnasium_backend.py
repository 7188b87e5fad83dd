"""The `gymnasium` backend: any registered gymnasium id, vectorised on the host.

Uses gymnasium's vector API with same-step autoreset, so every transition of the batch is a
real one: where an episode ends, `obs` is the reset observation and `next_obs` the true final
observation from `info["final_obs"]`, matching the `jax` backend's `Step`.
"""

from __future__ import annotations

import numpy as np

from rlcli.envs import EnvConfigError, EnvSpec, Step


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


class GymnasiumVecEnv:
    """N copies of a gymnasium env stepped together on the host (numpy in, numpy out)."""

    def __init__(self, env_id: str, num_envs: int, seed: int, vectorization: str = "sync"):
        import gymnasium
        from gymnasium.vector import AutoresetMode

        self.spec = spec(env_id)
        self.num_envs = num_envs
        self.seed = seed
        self.envs = gymnasium.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        )
        if not self.spec.discrete:
            self._low = np.asarray(self.spec.action_low, np.float32)
            self._high = np.asarray(self.spec.action_high, np.float32)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset all envs; env i is seeded with `seed + i` (default: the seed given at creation)."""
        obs, _ = self.envs.reset(seed=self.seed if seed is None else seed)
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> Step:
        action = np.asarray(action)
        if not self.spec.discrete:
            action = np.clip(action, self._low, self._high)
        obs, reward, terminated, truncated, info = self.envs.step(action)
        obs = obs.astype(np.float32)
        next_obs = obs.copy()
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                next_obs[i] = info["final_obs"][i]
        return Step(obs, reward.astype(np.float32), terminated.astype(bool),
                    truncated.astype(bool), next_obs)

    def close(self) -> None:
        self.envs.close()


def make(env_id: str, num_envs: int, seed: int, vectorization: str = "sync") -> GymnasiumVecEnv:
    return GymnasiumVecEnv(env_id, num_envs, seed, vectorization)
