"""Flax modules: an MLP torso with a policy head and a value head.

Two designs (000 §4.4.1): `shared: false`, the two-network design (simple and stable, no
shared features), and `shared: true`, one torso feeding both heads. The policy head outputs
the raw distribution parameters of `rlcli.distributions`: logits for a Discrete action space,
(mean, log_std) with a state-independent learned log-std for a Box one (001, "diagonal
Gaussian"). Orthogonal initialisation as in the A2C/PPO reference implementations: sqrt(2)
for hidden layers, 0.01 for the policy head, 1 for the value head.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu, "silu": nn.silu}


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale),
                    bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    hidden_sizes: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(_dense(size, np.sqrt(2.0))(x))
        return x


class ActorCritic(nn.Module):
    """obs [..., *obs_shape] -> (dist params, value [...])."""

    num_actions: int
    discrete: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    shared: bool = False
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, obs):
        x = obs.reshape(obs.shape[: obs.ndim - 1] + (-1,)).astype(jnp.float32)
        actor_features = MLP(self.hidden_sizes, self.activation, name="torso" if self.shared else "actor_torso")(x)
        critic_features = actor_features if self.shared else MLP(
            self.hidden_sizes, self.activation, name="critic_torso")(x)
        value = _dense(1, 1.0)(critic_features)[..., 0]
        head = _dense(self.num_actions, 0.01)(actor_features)
        if self.discrete:
            return head, value
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.num_actions,))
        return (head, log_std), value


def make(cfg, spec) -> ActorCritic:
    """The actor-critic network of `network=mlp` for an env spec."""
    return ActorCritic(
        num_actions=spec.num_actions,
        discrete=spec.discrete,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        shared=bool(cfg.shared),
        log_std_init=float(cfg.log_std_init),
    )
