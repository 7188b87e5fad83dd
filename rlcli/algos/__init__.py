"""Algorithms: one module `algos/<name>.py` per `algo=` choice, which defines

* ``make(spec, cfg, num_updates) -> Algorithm``;
* ``KEYS``: the `algo.*` keys it reads, each declared once (`rlcli.rules.Key`: default, rule,
  help), checked before compiling and passed to `make` in their declared types;
* ``ESTIMATORS``: the `estimator=` choices it accepts (``("none",)`` when it uses none), and
  ``ESTIMATOR``, its default;
* optionally ``SETS``: its defaults for keys declared elsewhere ({"num_envs": 1});
* ``ACTION_SPACES``: ``"discrete"`` and/or ``"continuous"``;
* optionally ``check(cfg, spec)``: cross-key checks (the env spec at hand) raising
  `rlcli.errors.ConfigError`.

An `Algorithm` is a NamedTuple of pure functions:

* ``init(key) -> learner``: a NamedTuple pytree with at least a ``params`` field (checked for
  finiteness by the runner); `LearnerState` for the on-policy algorithms;
* ``act(learner, obs, key, deterministic=False) -> (action, ActInfo)`` over a batch of obs;
* ``update(learner, batch, key) -> (learner, metrics)``, jit-compiled by the runner and
  vmappable over a leading seed axis; metrics are scalars named ``group/name``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli.rules import (REQUIRED, Key, Rule, boolean, in_unit_interval, int_at_least, is_num, non_negative, one_of,
                         positive)
from rlcli.types import ActInfo, Algorithm, Batch, LearnerState  # noqa: F401  (what the algorithms import)


def names() -> tuple[str, ...]:
    """Every `algo=` choice: the modules of this package."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def module(name: str):
    return importlib.import_module(f"rlcli.algos.{name}")


def make(name: str, spec, cfg, num_updates: int) -> Algorithm:
    return module(name).make(spec, cfg, num_updates)


class ActorCriticPolicy(NamedTuple):
    """The `network=` actor-critic with the action distribution of the env's action space, as
    shared by the on-policy algorithms: `init` and `act` are theirs as they stand (`init` puts
    the `traced` algo.* keys into LearnerState.hparams). For a Box space the Gaussian's log-std
    is a learned vector, or with `network.state_dependent_std` a head log sigma_phi(s) of the
    actor torso (001 diagonal Gaussian, a = mu_theta(s) + sigma_phi(s) z)."""

    network: Any
    dist: Any
    init: Callable[[jax.Array], LearnerState]
    act: Callable[..., tuple[jax.Array, ActInfo]]
    # unroll(params, batch [T, N], bootstrap=True) -> (dist params, values, next values) [T, N]:
    # the policy and critic over a rollout, V(next_obs) as a bootstrap (None without
    # `bootstrap`); a recurrent policy replays each column from its stored first state,
    # resetting where an episode starts
    unroll: Callable[..., tuple[Any, jax.Array, jax.Array | None]]
    initial_state: Callable[[int], jax.Array] | None  # recurrent only: num_envs -> zeros [N, H]


def traced_hparams(algo_cfg, names: tuple[str, ...]) -> dict:
    """{name: algo.<name> as a float32 scalar} for LearnerState.hparams."""
    return {name: jnp.asarray(float(algo_cfg[name]), jnp.float32) for name in names}


def actor_critic_policy(spec, cfg, tx: optax.GradientTransformation, traced: tuple[str, ...] = ()) -> ActorCriticPolicy:
    from rlcli import distributions, networks

    network = networks.make(cfg.network, spec)
    dist = distributions.for_action_space(spec.discrete)
    recurrent = isinstance(network, networks.RecurrentActorCritic)

    def initial_state(num_envs: int):
        return jnp.zeros((num_envs, network.state_size), jnp.float32)

    def init(key):
        obs = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
        params = network.init(key, obs, initial_state(1)) if recurrent else network.init(key, obs)
        return LearnerState(params, tx.init(params), jnp.zeros((), jnp.int32),
                            traced_hparams(cfg.algo, traced) if traced else None)

    def sample(dist_params, key, deterministic):
        action = dist.mode(dist_params) if deterministic else dist.sample(key, dist_params)
        return action, dist.log_prob(dist_params, action)

    def act(learner, obs, key, deterministic=False):
        dist_params, value = network.apply(learner.params, obs)
        action, log_prob = sample(dist_params, key, deterministic)
        return action, ActInfo(log_prob, value)

    def step(params, obs, state, episode_start):
        """One recurrent step; the state is reset to 0 where `episode_start` [B] is true."""
        return network.apply(params, obs, jnp.where(episode_start[:, None], 0.0, state))

    def act_recurrent(learner, obs, key, deterministic=False, state=None, episode_start=None):
        dist_params, value, state = step(learner.params, obs, state, episode_start)
        action, log_prob = sample(dist_params, key, deterministic)
        return action, ActInfo(log_prob, value), state

    def unroll(params, batch: Batch, bootstrap: bool = True):
        if not recurrent:
            dist_params, values = network.apply(params, batch.obs)
            return dist_params, values, network.apply(params, batch.next_obs)[1] if bootstrap else None

        def body(state, inputs):
            obs, next_obs, episode_start = inputs
            dist_params, value, state = step(params, obs, state, episode_start)
            # V(next obs) from the state this step reached
            next_value = network.apply(params, next_obs, state)[1] if bootstrap else None
            return state, (dist_params, value, next_value)

        return jax.lax.scan(body, batch.policy_state[0], (batch.obs, batch.next_obs, batch.episode_start))[1]

    if recurrent:
        return ActorCriticPolicy(network, dist, init, act_recurrent, unroll, initial_state)
    return ActorCriticPolicy(network, dist, init, act, unroll, None)


# key sets shared by the algorithms' KEYS (each algorithm sets their defaults with
# `rules.with_defaults`): every algorithm; make_optimizer's keys; the on-policy actor-critic
# loss coefficients
BASE_KEYS = {
    "algo.num_steps": Key(REQUIRED, int_at_least(1), "T: steps per env between updates (batch = num_envs x num_steps)"),
    "algo.gamma": Key(0.99, in_unit_interval(), "discount factor gamma"),
}
OPTIMIZER_KEYS = {
    "algo.learning_rate": Key(REQUIRED, positive(), "the optimizer's step size"),
    "algo.anneal_lr": Key(False, boolean(), "decay the learning rate linearly to 0 over the run"),
    "algo.optimizer": Key("adam", one_of("adam", "rmsprop", "sgd"), "the optimizer"),
    "algo.eps": Key(1.0e-5, positive(), "epsilon of adam and rmsprop"),
    "algo.rmsprop_decay": Key(0.99, Rule(lambda v: is_num(v) and 0.0 <= v < 1.0, "a number in [0, 1)", float),
                              "rmsprop's decay of the squared-gradient average"),
    "algo.max_grad_norm": Key(0.5, positive(), "gradients clipped to this global norm"),
}
ACTOR_CRITIC_KEYS = {
    "algo.vf_coef": Key(0.5, non_negative(), "weight of the critic's loss"),
    "algo.ent_coef": Key(0.0, non_negative(), "weight of the entropy bonus (001 \"Policy Entropy Bonus\")"),
    "algo.normalize_advantages": Key(False, boolean(), "standardise the advantages over the batch"),
}
ON_POLICY_ESTIMATORS = ("td", "nstep", "gae")
# whole-episode Monte-Carlo estimators (rlcli.estimators.MONTE_CARLO): only for algorithms
# whose batch is made of complete episodes (reinforce)
MONTE_CARLO_ESTIMATORS = ("reward_to_go", "total_return")


def make_optimizer(algo_cfg, num_updates: int, learning_rate: float | None = None) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then Adam, RMSprop or SGD; the learning rate
    (`algo.learning_rate`, or `learning_rate` when given) is constant or annealed linearly to
    0 over the run (`algo.anneal_lr`)."""
    lr = algo_cfg.learning_rate if learning_rate is None else learning_rate
    schedule = optax.linear_schedule(lr, 0.0, num_updates) if algo_cfg.anneal_lr else lr
    name = algo_cfg.optimizer
    if name == "adam":
        opt = optax.adam(schedule, eps=algo_cfg.eps)
    elif name == "rmsprop":
        opt = optax.rmsprop(schedule, decay=algo_cfg.rmsprop_decay, eps=algo_cfg.eps)
    else:
        opt = optax.sgd(schedule)
    return optax.chain(optax.clip_by_global_norm(algo_cfg.max_grad_norm), opt)
