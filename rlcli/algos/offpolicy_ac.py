"""Off-policy actor-critic with a replay buffer: 000 §4.4.3, Alg. 20 (the corrected Alg. 19).

Transitions go into a replay buffer R (step 2; `rlcli.replay`, shared with `algo=sac`:
uniform random actions until `algo.learning_starts`, then `algo.gradient_steps` gradient steps
per update). Per minibatch {s_i, a_i, r_i, s'_i} drawn uniformly from R (step 3):

* critic (step 4): Q_phi(s_i, a_i) regresses on y_i = r_i + gamma (1 - terminated_i) Qbar(s'_i, a'_i)
  with a'_i ~ pi_theta(.|s'_i) drawn from the CURRENT policy, not taken from R (eq. 4.4.2-4.4.3);
  L(phi) = 1/2 mean (Q_phi(s_i, a_i) - y_i)^2. Qbar is a Polyak-averaged target copy of Q_phi
  (`algo.tau`; tau = 1 is Alg. 20 as written, the target being the current critic);
* actor (step 6, eq. 4.4.5): grad J ~ 1/N sum_i grad log pi_theta(a^pi_i|s_i) Qhat(s_i, a^pi_i)
  with a^pi_i ~ pi_theta(.|s_i) resampled from the current policy, never the replayed a_i. The
  seed's remark that the variance is lowered "by generating more samples of actions a^pi_i"
  is `algo.num_action_samples` = K samples per state; `algo.baseline: true` subtracts from each
  the mean Q of the state's other K - 1 samples, an unbiased estimate of V(s_i) = E_a Q(s_i, a)
  (eq. 4.4.3), which turns eq. 4.4.5 into the advantage form eq. 4.4.4. An entropy bonus
  `algo.ent_coef` * H(pi) enters as the score-function term -ent_coef log pi(a^pi_i|s_i) beside Q
  (grad H = -E[grad log pi log pi]).

Box actions use a tanh-squashed Gaussian (mean and log-std from the state), scaled to the env
bounds: unlike a Gaussian clipped by the env, every sample is a distinct in-bounds action, so
Q_phi never has to learn the flat region beyond the bounds where a clipped policy's mean can
drift with no gradient to bring it back; log pi includes the tanh correction. For a Discrete
space the expectations over actions are exact: the target uses sum_a' pi(a'|s') Qbar(s', a')
(eq. 4.4.3) and the actor the gradient of sum_a pi(a|s) Qhat(s, a), the K -> infinity limit of
eq. 4.4.5.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli import distributions, losses, networks
from rlcli.algos import Algorithm, sac
from rlcli.algos.sac import (REPLAY_KEYS, REPLAY_SETS, discrete_soft_target, init_networks, initial_state, make_act, make_q, polyak,
                             replay_update, soft_target)
from rlcli.errors import ConfigError
from rlcli.rules import Key, boolean, int_at_least, non_negative, with_defaults

KEYS = {
    **with_defaults(REPLAY_KEYS, learning_rate=(3.0e-4, "Adam's step size, for actor and critic"),
                    learning_starts=1000, tau=(0.005, "Polyak coefficient of the target critic (1: no target "
                                                      "network)")),
    "algo.ent_coef": Key(0.01, non_negative(), "entropy bonus coefficient"),
    "algo.num_action_samples": Key(4, int_at_least(1), "K actions a^pi ~ pi(.|s) per replayed state in eq. 4.4.5"),
    "algo.baseline": Key(True, boolean(), "subtract the mean Q of the other K - 1 samples (eq. 4.4.4 with 4.4.3)"),
}
SETS = REPLAY_SETS
ESTIMATORS = ("none",)
ESTIMATOR = "none"
ACTION_SPACES = ("discrete", "continuous")


def check(cfg, spec) -> None:
    sac.replay_check(cfg)
    if cfg.algo.baseline and cfg.algo.num_action_samples < 2:
        raise ConfigError("algo.baseline=true needs two or more action samples per state (allowed: "
                          "algo.num_action_samples >= 2, or algo.baseline=false)")


class ACParams(NamedTuple):
    actor: Any
    critic: Any  # one Q network, on a leading axis of 1
    target_critic: Any


class ACOptState(NamedTuple):
    actor: Any
    critic: Any


def score_function_loss(log_prob, q, log_prob_value, ent_coef: float, baseline: bool):
    """Surrogate whose gradient is eq. 4.4.5 with K action samples per state (arrays [K, B]):
    -1/(K B) sum log pi(a_k|s) (Q(s, a_k) - ent_coef log pi(a_k|s) - b_k), Q and the bonus held
    constant; with `baseline`, b_k = the mean of the state's other K - 1 signals (eq. 4.4.4)."""
    signal = q - ent_coef * log_prob_value
    if baseline:
        k = signal.shape[0]
        signal = signal - (jnp.sum(signal, axis=0, keepdims=True) - signal) / (k - 1)
    return -jnp.mean(log_prob * jax.lax.stop_gradient(signal))


def make(spec, cfg, num_updates: int) -> Algorithm:
    del num_updates  # constant learning rate
    algo = cfg.algo
    discrete = spec.discrete
    actor, critic = networks.make_offpolicy(cfg.network, spec, num_critics=1)
    gamma, tau, ent_coef = algo.gamma, algo.tau, algo.ent_coef
    num_samples, baseline = algo.num_action_samples, algo.baseline
    tx = optax.adam(algo.learning_rate)

    def init(key):
        k_actor, k_critic = jax.random.split(key)
        actor_params, critic_params = init_networks(spec, actor, critic, k_actor, k_critic)
        params = ACParams(actor_params, critic_params, critic_params)
        return initial_state(spec, algo, params, ACOptState(tx.init(actor_params), tx.init(critic_params)))

    # per minibatch: the critic target y (step 4), Q_phi(s, a) [1, B] and the actor loss (step 6)
    def continuous_target(params, mb, key):
        mean, log_std, _ = actor.apply(params.actor, mb.next_obs)
        next_action, _, _ = distributions.squashed_gaussian_sample(key, (mean, log_std))
        next_q = critic.apply(params.target_critic, mb.next_obs, next_action)
        return soft_target(mb.reward, mb.terminated, next_q, 0.0, 0.0, gamma)  # eq. 4.4.2: alpha = 0, one Q

    def continuous_actor_loss(actor_params, critic_params, mb, key):
        mean, log_std, _ = actor.apply(actor_params, mb.obs)
        shape = (num_samples,) + mean.shape
        u = jax.lax.stop_gradient(mean + jnp.exp(log_std) * jax.random.normal(key, shape))  # a^pi = tanh(u)
        log_prob = distributions.squashed_gaussian_log_prob((mean, log_std), u)  # [K, B]
        obs = jnp.broadcast_to(mb.obs, (num_samples,) + mb.obs.shape)
        q = critic.apply(critic_params, obs, jnp.tanh(u))[0]
        loss = score_function_loss(log_prob, q, jax.lax.stop_gradient(log_prob), ent_coef, baseline)
        return loss, jnp.mean(log_prob)

    def discrete_target(params, mb, key):
        next_q = critic.apply(params.target_critic, mb.next_obs)
        return discrete_soft_target(mb.reward, mb.terminated, next_q, actor.apply(params.actor, mb.next_obs),
                                    0.0, gamma)  # eq. 4.4.2 with 4.4.3 exact: alpha = 0, one Q

    def discrete_actor_loss(actor_params, critic_params, mb, key):
        log_p = jax.nn.log_softmax(actor.apply(actor_params, mb.obs), axis=-1)
        q = jax.lax.stop_gradient(critic.apply(critic_params, mb.obs)[0])
        expected_log_prob = jnp.sum(jnp.exp(log_p) * log_p, axis=-1)  # -H(pi(.|s))
        return -jnp.mean(jnp.sum(jnp.exp(log_p) * q, axis=-1) - ent_coef * expected_log_prob), \
            jnp.mean(expected_log_prob)

    target_fn, actor_loss_fn = ((discrete_target, discrete_actor_loss) if discrete
                                else (continuous_target, continuous_actor_loss))
    q_fn = make_q(spec, critic)

    def train_step(params: ACParams, opt_state: ACOptState, mb, key):
        k_target, k_actor = jax.random.split(key)
        target = jax.lax.stop_gradient(target_fn(params, mb, k_target))

        def critic_loss(critic_params):
            q = q_fn(critic_params, mb)
            return losses.value_loss(q, target), q

        (loss_critic, q), grads = jax.value_and_grad(critic_loss, has_aux=True)(params.critic)
        updates, critic_opt = tx.update(grads, opt_state.critic, params.critic)
        critic_params = optax.apply_updates(params.critic, updates)

        (loss_actor, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            params.actor, critic_params, mb, k_actor)
        updates, actor_opt = tx.update(grads, opt_state.actor, params.actor)
        actor_params = optax.apply_updates(params.actor, updates)

        params = ACParams(actor_params, critic_params, polyak(params.target_critic, critic_params, tau))
        return params, ACOptState(actor_opt, critic_opt), {
            "loss/critic": loss_critic,
            "loss/actor": loss_actor,
            "policy/entropy": -log_prob,
            "train/q_mean": jnp.mean(q),
            "train/target_mean": jnp.mean(target),
        }

    return Algorithm(init, make_act(spec, actor, algo.learning_starts), replay_update(train_step, algo))
