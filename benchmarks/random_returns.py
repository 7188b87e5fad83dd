"""The return of a uniformly random policy on each shipped environment: the lower anchor of the
normalised scores of `rlcli plot` (rlcli/conf/scores.yaml, `random:`).

    python benchmarks/random_returns.py [--episodes 100] [--seed 0]

Each episode is played by gymnasium's own env (the JAX ports' twins for the classic-control
tasks) with actions drawn uniformly from the action space, until termination or the time
limit; the table prints the mean return, its standard error and the episodes' mean length.
The MuJoCo rows need `pip install -e ".[mujoco]"`.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

ENVS = ("Acrobot-v1", "CartPole-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1",
        "HalfCheetah-v5", "Hopper-v5")


def random_returns(env_id: str, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import gymnasium

    env = gymnasium.make(env_id)
    env.action_space.seed(seed)
    returns, lengths = [], []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, length, done = 0.0, 0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, length, done = total + float(reward), length + 1, terminated or truncated
        returns.append(total)
        lengths.append(length)
    env.close()
    return np.asarray(returns), np.asarray(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=list(ENVS))
    args = parser.parse_args()
    print(f"uniformly random actions, {args.episodes} episodes per env, seeds {args.seed}..{args.seed + args.episodes - 1}")
    print("| env | mean return | standard error | mean length |")
    print("|---|---|---|---|")
    for env_id in args.only:
        try:
            returns, lengths = random_returns(env_id, args.episodes, args.seed)
        except Exception as err:  # a missing MuJoCo install
            print(f"| {env_id} | not measured: {type(err).__name__}: {str(err).splitlines()[0]} | | |")
            continue
        stderr = returns.std(ddof=1) / math.sqrt(len(returns))
        print(f"| {env_id} | {returns.mean():.2f} | {stderr:.2f} | {lengths.mean():.1f} |")


if __name__ == "__main__":
    main()
