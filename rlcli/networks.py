"""Flax modules: an MLP torso with a policy head and a value head.

Two designs (000 §4.4.1): `shared: false`, the two-network design (simple and stable, no
shared features), and `shared: true`, one torso feeding both heads. The policy head outputs
the raw distribution parameters of `rlcli.distributions`: logits for a Discrete action space,
(mean, log_std) for a Box one (001, "diagonal Gaussian", a = mu_theta(s) + sigma * z): by
default a state-independent learned log-std vector; with `state_dependent_std: true` a
second head on the actor's features, log sigma_phi(s) (001's a = mu_theta(s) + sigma_phi(s) z),
a Dense layer named `log_std_head` with a zero kernel and bias `log_std_init`, so that
log sigma_phi(s) = log_std_init for every state at the start (unclipped). It is part of the
policy: with `shared: false` it reads the actor torso (rlcli.algos.trpo.split keeps it on the
policy side), with `shared: true` the shared torso. Orthogonal initialisation as in the A2C/PPO
reference implementations: sqrt(2) for hidden layers, 0.01 for the policy head, 1 for the
value head.

The off-policy algorithms (sac, offpolicy_ac) use separate modules, appended below: Q networks
(an ensemble for SAC's twin critics), a tanh-squashed Gaussian actor with a state-dependent
log-std (or gSDE) and a categorical actor, built from the same `network.*` keys.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlcli.errors import ConfigError
from rlcli.rules import Choice, Key, boolean, int_at_least, int_list, number, one_of, with_defaults

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


class CNN(nn.Module):
    """An image torso, obs [..., H, W, C] -> features [..., hidden_sizes[-1]]: convolutions of
    `channels` filters (kernel_size x kernel_size, stride, SAME padding, the activation after
    each; orthogonal sqrt(2) initialisation), flattened in (H, W, C) order, then the MLP of
    `hidden_sizes`. The defaults are MinAtar's network (Young & Tian 2019: one 3x3 convolution
    of 16 filters, 128 units, ReLU)."""

    channels: Sequence[int] = (16,)
    kernel_size: int = 3
    stride: int = 1
    hidden_sizes: Sequence[int] = (128,)
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        batch = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        for features in self.channels:
            x = act(nn.Conv(features, (self.kernel_size, self.kernel_size), strides=(self.stride, self.stride),
                            padding="SAME", kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)),
                            bias_init=nn.initializers.zeros)(x))
        return MLP(self.hidden_sizes, self.activation)(x.reshape(batch + (-1,)))


def flatten(obs, obs_ndim: int):
    """obs [..., *obs_shape] (obs_ndim observation axes) -> float32 [..., prod(obs_shape)]."""
    return obs.reshape(obs.shape[: obs.ndim - obs_ndim] + (-1,)).astype(jnp.float32)


class ActorCritic(nn.Module):
    """obs [..., *obs_shape] -> (dist params, value [...]); `obs_ndim` = len(obs_shape), the
    trailing axes that are flattened into the MLP's input. With `conv` (channels, kernel size,
    stride) the torsos are `CNN`s over image observations [..., H, W, C] instead."""

    num_actions: int
    discrete: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    shared: bool = False
    log_std_init: float = 0.0
    state_dependent_std: bool = False
    obs_ndim: int = 1
    conv: tuple | None = None  # network=cnn: (channels, kernel_size, stride)

    def torso(self, name: str):
        if self.conv is None:
            return MLP(self.hidden_sizes, self.activation, name=name)
        return CNN(*self.conv, hidden_sizes=self.hidden_sizes, activation=self.activation, name=name)

    def features(self, obs):
        """(actor features, critic features) of the torsos; the same array when shared."""
        x = flatten(obs, self.obs_ndim) if self.conv is None else obs.astype(jnp.float32)
        actor_features = self.torso("torso" if self.shared else "actor_torso")(x)
        return actor_features, actor_features if self.shared else self.torso("critic_torso")(x)

    @nn.compact
    def __call__(self, obs):
        return self.heads(*self.features(obs))

    def heads(self, actor_features, critic_features):
        """(dist params, value [...]) of the policy and value heads."""
        value = _dense(1, 1.0)(critic_features)[..., 0]
        head = _dense(self.num_actions, 0.01)(actor_features)
        if self.discrete:
            return head, value
        if self.state_dependent_std:  # log sigma_phi(s), [..., D]; starts at log_std_init everywhere
            log_std = nn.Dense(self.num_actions, kernel_init=nn.initializers.zeros,
                               bias_init=nn.initializers.constant(self.log_std_init),
                               name="log_std_head")(actor_features)
        else:  # one learned log sigma per action dimension, [D], broadcast over the batch
            log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.num_actions,))
        return (head, log_std), value


class RecurrentActorCritic(ActorCritic):
    """network=gru: ActorCritic's torsos, then a GRU cell (Cho et al. 2014; flax's GRUCell) of
    `gru_size` units whose output feeds the heads. One step: (obs [B, ...], state [B, H]) ->
    (dist params, value [B], state'), H = `state_size`: one GRU on a shared torso, or an actor
    GRU and a critic GRU (their states side by side, actor first) on two torsos. The caller
    resets the state to 0 where an episode starts (rlcli.algos.actor_critic_policy)."""

    gru_size: int = 128

    @property
    def state_size(self) -> int:
        return self.gru_size * (1 if self.shared else 2)

    @nn.compact
    def __call__(self, obs, state):
        actor_features, critic_features = self.features(obs)
        if self.shared:
            state, actor_features = nn.GRUCell(self.gru_size, name="gru")(state, actor_features)
            return *self.heads(actor_features, actor_features), state
        actor_state, actor_features = nn.GRUCell(self.gru_size, name="actor_gru")(
            state[..., :self.gru_size], actor_features)
        critic_state, critic_features = nn.GRUCell(self.gru_size, name="critic_gru")(
            state[..., self.gru_size:], critic_features)
        return *self.heads(actor_features, critic_features), jnp.concatenate([actor_state, critic_state], axis=-1)


# the network= choices and their keys
MLP_KEYS = {
    "network.hidden_sizes": Key([64, 64], int_list(), "units of each hidden layer"),
    "network.activation": Key("tanh", one_of("tanh", "relu", "elu", "gelu", "silu"), "the hidden layers' "
                                                                                     "activation"),
    "network.shared": Key(False, boolean(), "one torso for actor and critic (true) or two networks (false)"),
    "network.log_std_init": Key(0.0, number(), "initial log-std of the Gaussian policy (Box action spaces)"),
    "network.state_dependent_std": Key(False, boolean(), "Box only: log sigma_phi(s) as an output head of the actor "
                                                         "torso (001: a = mu_theta(s) + sigma_phi(s) z; zero kernel, "
                                                         "bias log_std_init) instead of one state-independent log-std "
                                                         "(on-policy algorithms; sac's and offpolicy_ac's actors "
                                                         "always have one)"),
}
CHOICES = {
    "mlp": Choice("MLP actor-critic; shared: true = one torso for both heads, false = two networks (000 §4.4.1)",
                  MLP_KEYS),
    "cnn": Choice("convolutional torsos for image observations [H, W, C] (MinAtar), then the MLP of hidden_sizes; "
                  "shared or two networks as for mlp", {
                      "network.channels": Key([16], int_list(), "filters of each convolution"),
                      "network.kernel_size": Key(3, int_at_least(1), "the convolutions' kernel size"),
                      "network.stride": Key(1, int_at_least(1), "the convolutions' stride"),
                      **with_defaults(MLP_KEYS, hidden_sizes=[128], activation="relu")}),
    "gru": Choice("recurrent: the MLP of hidden_sizes, then a GRU cell whose output feeds the heads; the hidden "
                  "state is reset where an episode starts and updates replay whole sequences (ppo, a2c; jax "
                  "backend)", {
                      "network.gru_size": Key(128, int_at_least(1), "units of the GRU cell (one per network: "
                                                                    "two GRUs unless shared)"),
                      **with_defaults(MLP_KEYS, hidden_sizes=[128], activation="relu")}),
}
# the algorithms whose actors are networks.make_offpolicy's (MLPs only)
OFF_POLICY_ACTORS = ("sac", "offpolicy_ac", "naive_offpolicy_ac")
# the algorithms whose updates replay a recurrent policy's sequences (network=gru)
RECURRENT_ALGOS = ("ppo", "a2c")


def check(cfg, spec) -> None:
    """Cross-key checks of the network keys with the env (typed cfg): a state-dependent std
    needs a Gaussian policy; a CNN needs image observations and an on-policy actor-critic."""
    if cfg.network.name == "cnn":
        if len(spec.obs_shape) != 3:
            raise ConfigError(f"network=cnn needs image observations [H, W, C] but env.id={cfg.env.id!r} has "
                              f"observations of shape {spec.obs_shape} (allowed: network=mlp, or an image env such "
                              "as env=Breakout-MinAtar)")
        if cfg.algo.name in OFF_POLICY_ACTORS:
            raise ConfigError(f"network=cnn is not supported by algo={cfg.algo.name}, whose actor and critics are "
                              "MLPs (allowed: network=mlp; network=cnn with the on-policy algorithms)")
    if cfg.network.name == "gru":
        if cfg.algo.name not in RECURRENT_ALGOS:
            raise ConfigError(f"network=gru is not supported by algo={cfg.algo.name}: only ppo's and a2c's updates "
                              "replay a recurrent policy's sequences (allowed: network=gru with algo=ppo or algo=a2c; "
                              "network=mlp or network=cnn)")
        if spec.backend != "jax":
            raise ConfigError(f"network=gru runs on the jax backend, but env.id={cfg.env.id!r} runs on the "
                              f"{spec.backend} backend (allowed: an env with a JAX port, env.backend=jax or auto)")
    if cfg.network.state_dependent_std and spec.discrete:
        raise ConfigError(f"network.state_dependent_std=true needs a continuous action space but env.id="
                          f"{cfg.env.id!r} has a discrete one (allowed with discrete actions: "
                          "network.state_dependent_std=false)")


def make(cfg, spec) -> ActorCritic:
    """The actor-critic network of `network=mlp|cnn|gru` for an env spec."""
    recurrent = {"gru_size": cfg.gru_size} if cfg.name == "gru" else {}
    return (RecurrentActorCritic if recurrent else ActorCritic)(
        **recurrent,
        num_actions=spec.num_actions,
        discrete=spec.discrete,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        shared=cfg.shared,
        log_std_init=cfg.log_std_init,
        state_dependent_std=cfg.state_dependent_std,
        obs_ndim=len(spec.obs_shape),
        conv=(tuple(cfg.channels), cfg.kernel_size, cfg.stride) if cfg.name == "cnn" else None,
    )


# ---- off-policy actors and critics (algo=sac, algo=offpolicy_ac) ------------------------------

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # state-dependent log-std range of SAC's reference code


class QNetwork(nn.Module):
    """Q_phi(s, a) -> [...] for a Box action space (the action, scaled to [-1, 1], is
    concatenated to the observation), or Q_phi(s, .) -> [..., A] over every action of a
    Discrete one (000 eq. 4.4.1-4.4.2; Christodoulou 2019 for the discrete form)."""

    num_actions: int
    discrete: bool
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs, action=None):
        x = flatten(obs, self.obs_ndim)
        if not self.discrete:
            x = jnp.concatenate([x, action.astype(jnp.float32)], axis=-1)
        q = _dense(self.num_actions if self.discrete else 1, 1.0)(MLP(self.hidden_sizes, self.activation)(x))
        return q if self.discrete else q[..., 0]


class QEnsemble(nn.Module):
    """`num_critics` independent Q networks evaluated together -> [num_critics, ...]: SAC's
    twin critics (clipped double-Q, Haarnoja et al. 2018 §5 / Fujimoto et al. 2018), or one."""

    num_actions: int
    discrete: bool
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    num_critics: int = 2
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs, action=None):
        ensemble = nn.vmap(QNetwork, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=self.num_critics)
        return ensemble(self.num_actions, self.discrete, self.hidden_sizes, self.activation, self.obs_ndim,
                        name="q")(obs, action)


class SquashedGaussianActor(nn.Module):
    """obs -> (mean, log_std, features) of the Gaussian over the pre-tanh action u
    (`rlcli.distributions.squashed_gaussian_*`); `features` is the last hidden layer.

    * `sde: false`: a state-dependent log-std head, clipped to [LOG_STD_MIN, LOG_STD_MAX]; its bias
      starts at `log_std_init` (Haarnoja et al. 2018).
    * `sde: true`: generalized state-dependent exploration (gSDE, Raffin et al. 2022): the
      exploration noise is eps(s) = features(s) @ theta with a matrix theta ~ N(0, sigma^2) that is
      held fixed for a while, sigma = exp(sde_log_std) a learned [features, D] matrix starting at
      `log_std_init`. The per-step distribution of u is then N(mean, sum_i features_i^2 sigma_i^2),
      computed on features without gradient, and the mean is clipped to [-2, 2], as in
      Stable-Baselines3.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    log_std_init: float = 0.0
    sde: bool = False
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs):
        features = MLP(self.hidden_sizes, self.activation)(flatten(obs, self.obs_ndim))
        mean = _dense(self.num_actions, 0.01)(features)
        if not self.sde:
            log_std = nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(0.01),
                               bias_init=nn.initializers.constant(self.log_std_init))(features)
            return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX), features
        features = jax.lax.stop_gradient(features)
        sde_log_std = self.param("sde_log_std", nn.initializers.constant(self.log_std_init),
                                 (features.shape[-1], self.num_actions))
        variance = jnp.square(features) @ jnp.exp(2.0 * sde_log_std)
        return jnp.clip(mean, -2.0, 2.0), 0.5 * jnp.log(variance + 1e-6), features


class DiscreteActor(nn.Module):
    """obs -> logits of a categorical policy over a Discrete action space."""

    num_actions: int
    hidden_sizes: Sequence[int] = (256, 256)
    activation: str = "relu"
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs):
        return _dense(self.num_actions, 0.01)(MLP(self.hidden_sizes, self.activation)(flatten(obs, self.obs_ndim)))


def make_offpolicy(cfg, spec, num_critics: int, sde: bool = False):
    """(actor, critic) of `network=mlp` for the off-policy algorithms: a squashed-Gaussian
    (Box) or categorical (Discrete) actor and an ensemble of `num_critics` Q networks, each
    with its own `network.hidden_sizes` torso (`network.shared` does not apply)."""
    sizes, activation, ndim = tuple(cfg.hidden_sizes), cfg.activation, len(spec.obs_shape)
    critic = QEnsemble(spec.num_actions, spec.discrete, sizes, activation, num_critics, ndim)
    if spec.discrete:
        return DiscreteActor(spec.num_actions, sizes, activation, ndim), critic
    return SquashedGaussianActor(spec.num_actions, sizes, activation, cfg.log_std_init, sde, ndim), critic
