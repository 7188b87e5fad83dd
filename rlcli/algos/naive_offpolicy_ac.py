"""(Fake) off-policy actor-critic: 000 §4.4.3, Alg. 19 as first written, flaws included.

A teaching contrast to `algo=offpolicy_ac` (Alg. 20, which fixes it): a V critic fit to
replayed s', and the actor's score taken at the replayed (old) actions. Acting and replay are
those of `algo=offpolicy_ac` and `algo=sac` (`rlcli.replay`; step 2: uniform random actions
until `algo.learning_starts`, then samples of pi_theta; `algo.gradient_steps` gradient steps
per update). Per minibatch {s_i, a_i, r_i, s'_i} drawn uniformly from R (step 3):

* critic (step 4): V_phi(s_i) regresses on y_i = r_i + gamma (1 - terminated_i) Vbar(s'_i),
  L(phi) = 1/2 mean (V_phi(s_i) - y_i)^2; Vbar is a Polyak-averaged copy of V_phi (`algo.tau`;
  tau = 1 is Alg. 19 to the letter, the target being the current critic). A time-limit
  truncation bootstraps, as everywhere in rlcli; only `terminated` stops it;
* advantage (step 5): A_i = r_i + gamma (1 - terminated_i) V_phi(s'_i) - V_phi(s_i), with the
  critic just updated;
* actor (steps 6-7): grad J ~ 1/N sum_i grad log pi_theta(a_i|s_i) A_i with the REPLAYED a_i
  (Alg. 19 writes the plain sum; the 1/N is a constant scale, which Adam ignores). For a Box
  space pi_theta is the tanh-squashed Gaussian of offpolicy_ac, and a replayed action a_i (env
  units) is mapped back to u_i = atanh(a_i in [-1, 1], clipped to 1 - 1e-6) to score it.

What goes wrong (000 §4.4.3, the two "fallacies"):

1. the target: s'_i was reached by a_i, an action of an older policy (or of the uniform
   warm-up), so y_i is a sample of the value of the mixture of past policies that filled R,
   not of V^pi(s_i) = E_{a ~ pi_theta}[r(s_i, a) + gamma V^pi(s')]: V_phi learns the behaviour's
   value, and A_i = r_i + gamma V(s'_i) - V(s_i) is a one-sample advantage of a_i relative to it;
2. the gradient: a_i ~ beta (the old policies), not pi_theta, so E_{a ~ beta}[grad log pi(a|s)
   A(s, a)] is not the policy gradient E_{a ~ pi}[...]: the importance weight pi(a|s)/beta(a|s)
   of 000 eq. 3.2.7-3.2.9 is missing. Nor is the baseline V(s_i) in A_i free any more: it
   drops out of the policy gradient because E_{a ~ pi}[grad log pi(a|s)] = 0, but
   E_{a ~ beta}[grad log pi(a|s)] != 0, so an error c in V shifts the step by c E_beta[grad
   log pi]: a critic that overestimates (mean A_i < 0) pushes the policy away from every
   replayed action, the more the further they are (for a Gaussian, grad_mu log pi = (u - mu) /
   sigma^2); one that underestimates pulls it towards the buffer's actions.

Alg. 20 (`algo=offpolicy_ac`) fixes both with a Q critic: Q(s, a) is defined for any action, so
(s_i, a_i, r_i, s'_i) is a valid sample for it whichever policy chose a_i, and the target
bootstraps on a'_i ~ pi_theta(.|s'_i) drawn now (eq. 4.4.2-4.4.3); the actor scores fresh
actions a^pi_i ~ pi_theta(.|s_i) weighted by Q(s_i, a^pi_i) (eq. 4.4.4-4.4.5), never the
replayed a_i. Logs `policy/replayed_log_prob`, the mean log pi_theta(a_i|s_i) of the replayed
actions (in the actor's [-1, 1] units for a Box space): how far the buffer is from the policy.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli import distributions, losses, networks
from rlcli.algos import Algorithm
from rlcli.algos.offpolicy_ac import ACOptState, ACParams
from rlcli.algos.sac import (REPLAY_KEYS, REPLAY_SETS, bounds, initial_state, make_act, polyak, replay_check,
                             replay_update, soft_target, to_unit)
from rlcli.rules import with_defaults

# the same defaults as offpolicy_ac, so that the two differ only in what Alg. 20 fixes
KEYS = with_defaults(REPLAY_KEYS, learning_rate=(3.0e-4, "Adam's step size, for actor and critic"),
                     learning_starts=1000, tau=(0.005, ("Polyak coefficient of the target critic Vbar (1: no "
                                                        "target network, Alg. 19 as written)")))
SETS = REPLAY_SETS
ESTIMATORS = ("none",)
ESTIMATOR = "none"
ACTION_SPACES = ("discrete", "continuous")
UNIT_CLIP = 1.0 - 1e-6  # replayed Box actions in the actor's units are clipped to +-UNIT_CLIP before atanh


def check(cfg, spec) -> None:
    replay_check(cfg)


def td_target(reward, terminated, next_value, gamma: float):
    """y_i = r_i + gamma (1 - terminated_i) V(s'_i) (Alg. 19 step 4; step 5's r_i + gamma V(s'_i));
    a truncated step is stored as not terminated, so it bootstraps."""
    return soft_target(reward, terminated, next_value[None], 0.0, 0.0, gamma)  # one critic, alpha = 0


class NaiveAC(NamedTuple):
    """Alg. 19's networks and losses for an env spec (`make` trains with them)."""

    actor: Any  # squashed-Gaussian (Box) or categorical (Discrete) actor of offpolicy_ac
    critic: Any  # V_phi(s) -> [..., 1]
    value: Callable  # (critic_params, obs) -> V_phi(s) [B]
    replayed_log_prob: Callable  # (actor_params, obs, action from R) -> log pi_theta(a_i|s_i) [B]
    entropy: Callable  # (actor_params, obs, key) -> H(pi_theta(.|s)) [B] (a one-sample estimate for Box)
    critic_loss: Callable  # (critic_params, target_params, mb) -> (L(phi), (V_phi(s_i), y_i))
    actor_loss: Callable  # (actor_params, critic_params, mb) -> (loss, (A_i, log pi_theta(a_i|s_i)))


def build(spec, cfg) -> NaiveAC:
    """The networks of `network=mlp` (`networks.make_offpolicy`'s actor; the critic a one-output
    `networks.QNetwork` of the observation alone: V_phi(s)) and Alg. 19's losses with
    `algo.gamma`."""
    gamma = cfg.algo.gamma
    actor, _ = networks.make_offpolicy(cfg.network, spec, num_critics=1)
    critic = networks.QNetwork(1, True, tuple(cfg.network.hidden_sizes), cfg.network.activation,
                               len(spec.obs_shape))

    def value(critic_params, obs):
        return critic.apply(critic_params, obs)[..., 0]

    if spec.discrete:
        def replayed_log_prob(actor_params, obs, action):
            return distributions.categorical_log_prob(actor.apply(actor_params, obs), action)

        def entropy(actor_params, obs, key):
            return distributions.categorical_entropy(actor.apply(actor_params, obs))
    else:
        low, high = bounds(spec)

        def replayed_log_prob(actor_params, obs, action):
            mean, log_std, _ = actor.apply(actor_params, obs)
            u = jnp.arctanh(jnp.clip(to_unit(action, low, high), -UNIT_CLIP, UNIT_CLIP))  # a_i = tanh(u_i)
            return distributions.squashed_gaussian_log_prob((mean, log_std), u)

        def entropy(actor_params, obs, key):
            mean, log_std, _ = actor.apply(actor_params, obs)
            return -distributions.squashed_gaussian_sample(key, (mean, log_std))[1]

    def critic_loss(critic_params, target_params, mb):  # step 4
        v = value(critic_params, mb.obs)
        y = jax.lax.stop_gradient(td_target(mb.reward, mb.terminated, value(target_params, mb.next_obs), gamma))
        return losses.value_loss(v, y), (v, y)

    def actor_loss(actor_params, critic_params, mb):  # steps 5-6, at the replayed actions
        advantage = td_target(mb.reward, mb.terminated, value(critic_params, mb.next_obs), gamma) \
            - value(critic_params, mb.obs)
        log_prob = replayed_log_prob(actor_params, mb.obs, mb.action)
        return losses.policy_gradient_loss(log_prob, advantage), (advantage, log_prob)

    return NaiveAC(actor, critic, value, replayed_log_prob, entropy, critic_loss, actor_loss)


def make(spec, cfg, num_updates: int) -> Algorithm:
    del num_updates  # constant learning rate
    algo = cfg.algo
    parts = build(spec, cfg)
    tau = algo.tau
    tx = optax.adam(algo.learning_rate)

    def init(key):
        k_actor, k_critic = jax.random.split(key)
        obs = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
        actor_params, critic_params = parts.actor.init(k_actor, obs), parts.critic.init(k_critic, obs)
        params = ACParams(actor_params, critic_params, critic_params)
        return initial_state(spec, algo, params, ACOptState(tx.init(actor_params), tx.init(critic_params)))

    def train_step(params: ACParams, opt_state: ACOptState, mb, key):
        (loss_critic, (v, y)), grads = jax.value_and_grad(parts.critic_loss, has_aux=True)(
            params.critic, params.target_critic, mb)
        updates, critic_opt = tx.update(grads, opt_state.critic, params.critic)
        critic_params = optax.apply_updates(params.critic, updates)

        (loss_actor, (advantage, log_prob)), grads = jax.value_and_grad(parts.actor_loss, has_aux=True)(
            params.actor, critic_params, mb)
        updates, actor_opt = tx.update(grads, opt_state.actor, params.actor)
        actor_params = optax.apply_updates(params.actor, updates)

        entropy = parts.entropy(params.actor, mb.obs, key)
        params = ACParams(actor_params, critic_params, polyak(params.target_critic, critic_params, tau))
        return params, ACOptState(actor_opt, critic_opt), {
            "loss/critic": loss_critic,
            "loss/actor": loss_actor,
            "policy/entropy": jnp.mean(entropy),
            "policy/replayed_log_prob": jnp.mean(log_prob),
            "train/v_mean": jnp.mean(v),
            "train/target_mean": jnp.mean(y),
            "train/advantage_mean": jnp.mean(advantage),
        }

    return Algorithm(init, make_act(spec, parts.actor, algo.learning_starts), replay_update(train_step, algo))
