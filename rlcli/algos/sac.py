"""SAC: soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
Applications", arXiv:1812.05905 v2; the seed's placeholder 000 §4.3.1), with a replay buffer
as in 000 §4.4.3.

Transitions go into a replay buffer R held in the learner state (`rlcli.replay`); every update
(each `algo.num_steps` x num_envs env steps) does `algo.gradient_steps` steps on minibatches
drawn uniformly from R, once `algo.learning_starts` transitions were collected (before that
the agent acts uniformly at random). Per minibatch, with alpha = exp(log alpha):

* twin critics Q_1, Q_2 regress on the soft target (eq. 3 and 5, clipped double-Q §5)
      y = r + gamma (1 - terminated) (min_i Qbar_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
  where Qbar are target networks, Qbar <- tau Q + (1 - tau) Qbar (Polyak averaging, §5);
  a time-limit truncation still bootstraps;
* the actor minimises E[alpha log pi(a|s) - min_i Q_i(s, a)] with the reparameterised
  a = tanh(mu(s) + sigma(s) z) (eq. 7 and 11), log pi corrected for the tanh (appendix C,
  eq. 26; `rlcli.distributions.squashed_gaussian_*`), actions scaled from [-1, 1] to the env
  bounds;
* the temperature minimises J(alpha) = E[-alpha (log pi(a|s) + Hbar)] (eq. 18), target entropy
  Hbar = -dim(A) (`algo.ent_coef: auto`; a number fixes alpha instead).

Discrete action spaces use discrete SAC (Christodoulou 2019, arXiv:1910.07207): a softmax
policy, critics that output Q(s, .) for every action, and exact expectations over actions in
the soft target (eq. 3 of that paper), the actor loss E_s[sum_a pi(a|s) (alpha log pi(a|s) -
min_i Q_i(s, a))] (eq. 10) and the temperature loss (eq. 11), Hbar = scale * log |A|.

`algo.use_sde: true` explores with generalized state-dependent exploration (gSDE, Raffin et al.
2022, "Smooth Exploration for Robotic Reinforcement Learning"): the behaviour action is
tanh(mu(s) + f(s) theta), f the actor's last hidden features and theta ~ N(0, sigma^2) a matrix
drawn again at every update, so the noise is a smooth function of the state for
`algo.num_steps` steps instead of white noise (see `rlcli.networks.SquashedGaussianActor`).
Evaluation acts with tanh(mu(s)) (argmax of the logits for a Discrete space).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli import distributions, networks, replay
from rlcli.algos import BASE_KEYS, ActInfo, Algorithm
from rlcli.errors import ConfigError
from rlcli.rules import Key, Rule, boolean, int_at_least, is_num, positive, with_defaults

# ---- shared with offpolicy_ac: replay keys, learner state, the replay update loop -------------

def _auto_or_float(v):
    return v if v == "auto" else float(v)


REPLAY_KEYS = {
    **with_defaults(BASE_KEYS, num_steps=(1, "env steps per env between updates (train frequency)")),
    "algo.learning_rate": Key(3.0e-4, positive(), "Adam's step size, for every network (and the temperature)"),
    "algo.buffer_size": Key(100_000, int_at_least(1), "replay rows per seed (ring buffer; saved in every "
                                                      "checkpoint)"),
    "algo.batch_size": Key(256, int_at_least(1), "minibatch drawn uniformly from the buffer per gradient step"),
    "algo.learning_starts": Key(100, int_at_least(0), "env steps of uniform random actions before the first "
                                                      "gradient step"),
    "algo.gradient_steps": Key(1, int_at_least(1), "gradient steps per update"),
    "algo.tau": Key(0.005, Rule(lambda v: is_num(v) and 0.0 < v <= 1.0, "a number in (0, 1]", float),
                    "Polyak coefficient of the target critics (1: copy every step)"),
}
# one env, one gradient step per env step; networks of 256 x 256 ReLU units (as SB3's SAC)
REPLAY_SETS = {"num_envs": 1, "network.hidden_sizes": [256, 256], "network.activation": "relu"}
ESTIMATORS = ("none",)
ESTIMATOR = "none"
ACTION_SPACES = ("discrete", "continuous")
# defaults: Stable-Baselines3's SAC, except buffer_size (checkpoints hold the buffer)
KEYS = {
    **REPLAY_KEYS,
    "algo.ent_coef": Key("auto", Rule(lambda v: v == "auto" or (is_num(v) and v > 0), "auto or a number > 0",
                                      _auto_or_float),
                         "temperature alpha: auto (learned, eq. 18) or a fixed number > 0"),
    "algo.ent_coef_init": Key(1.0, positive(), "initial alpha when ent_coef=auto"),
    "algo.target_entropy": Key("auto", Rule(lambda v: v == "auto" or is_num(v), "auto or a number", _auto_or_float),
                               "auto: -dim(A) (Box); target_entropy_scale * log|A| (Discrete)"),
    "algo.target_entropy_scale": Key(0.89, Rule(lambda v: is_num(v) and 0.0 < v < 1.0, "a number in (0, 1)", float),
                                     "Discrete only, for target_entropy=auto"),
    "algo.use_sde": Key(False, boolean(), "gSDE exploration (Box only; Raffin et al. 2022), resampled every update"),
}
SETS = REPLAY_SETS


def check(cfg, spec) -> None:
    """Cross-key checks of the replay keys (after KEYS)."""
    replay_check(cfg)
    if cfg.algo.use_sde and spec.discrete:
        raise ConfigError(f"algo.use_sde=true needs a continuous action space but env.id={cfg.env.id!r} has "
                          "a discrete one (allowed with discrete actions: algo.use_sde=false)")


def replay_check(cfg) -> None:
    """Cross-key checks of the replay keys shared with offpolicy_ac."""
    algo = cfg.algo
    for key in ("obs", "reward"):
        if cfg.normalize[key]:
            raise ConfigError(
                f"normalize.{key}=true is not supported with algo={algo.name} (allowed with the replay "
                f"algorithms: normalize.{key}=false; the buffer would keep values scaled with stale statistics)")
    rollout = cfg.num_envs * algo.num_steps
    if algo.batch_size > algo.buffer_size:
        raise ConfigError(f"algo.batch_size={algo.batch_size} is larger than the replay buffer (allowed: "
                          f"algo.batch_size <= algo.buffer_size = {algo.buffer_size})")
    if algo.buffer_size < rollout:
        raise ConfigError(f"algo.buffer_size={algo.buffer_size} cannot hold one rollout (allowed: "
                          f"algo.buffer_size >= num_envs x algo.num_steps = {rollout})")
    if algo.learning_starts >= cfg.total_steps:
        raise ConfigError(f"algo.learning_starts={algo.learning_starts} leaves no step to learn from "
                          f"(allowed: algo.learning_starts < total_steps = {cfg.total_steps})")


class OffPolicyState(NamedTuple):
    params: Any  # learned parameters and target networks (checked finite by the runner)
    opt_state: Any
    buffer: replay.ReplayBuffer
    env_steps: jax.Array  # transitions collected so far
    update_step: jax.Array  # gradient steps applied
    noise: jax.Array  # gSDE exploration matrix theta [features, D] (a placeholder [1] without gSDE)


def polyak(target, online, tau: float):
    """Target network update thetabar <- tau theta + (1 - tau) thetabar (Haarnoja et al. 2018 §5)."""
    return jax.tree.map(lambda t, o: tau * o + (1.0 - tau) * t, target, online)


def to_unit(action, low, high):
    """Env-bounded action -> [-1, 1]^D."""
    return 2.0 * (action - low) / (high - low) - 1.0


def from_unit(action, low, high):
    """[-1, 1]^D -> the env bounds [low, high]^D."""
    return low + 0.5 * (action + 1.0) * (high - low)


def bounds(spec):
    return jnp.asarray(spec.action_low, jnp.float32), jnp.asarray(spec.action_high, jnp.float32)


def random_action(key, spec, shape):
    """Uniform over the action space (the exploration before `algo.learning_starts`), with its
    log-density."""
    if spec.discrete:
        return jax.random.randint(key, shape, 0, spec.num_actions), jnp.full(shape, -math.log(spec.num_actions))
    low, high = bounds(spec)
    action = jax.random.uniform(key, shape + (spec.num_actions,), jnp.float32, low, high)
    return action, jnp.full(shape, -jnp.sum(jnp.log(high - low)))


def sde_noise(actor_params, key):
    """A gSDE exploration matrix theta ~ N(0, sigma^2), sigma = exp(sde_log_std) [features, D]."""
    sigma = jnp.exp(actor_params["params"]["sde_log_std"])
    return sigma * jax.random.normal(key, sigma.shape)


def init_networks(spec, actor, critic, k_actor, k_critic):
    obs = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
    action = None if spec.discrete else jnp.zeros((1, spec.num_actions), jnp.float32)
    return actor.init(k_actor, obs), critic.init(k_critic, obs, action)


def initial_state(spec, algo_cfg, params, opt_state, noise=None) -> OffPolicyState:
    """The learner at step 0: an empty buffer of `algo.buffer_size` rows, zero counters."""
    obs = jnp.zeros(spec.obs_shape, jnp.float32)
    action = jnp.zeros((), jnp.int32) if spec.discrete else jnp.zeros((spec.num_actions,), jnp.float32)
    example = replay.Transition(obs, action, jnp.float32(0), jnp.bool_(False), obs)
    noise = jnp.zeros((1,), jnp.float32) if noise is None else noise  # orbax cannot save empty arrays
    # distinct arrays everywhere: the gymnasium backend donates the learner to the jitted update
    params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))
    return OffPolicyState(params, opt_state, replay.init(algo_cfg.buffer_size, example),
                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), noise)


def make_q(spec, critic):
    """Q_i(s, a) of the replayed actions, [num_critics, B]: Box actions mapped back to [-1, 1]
    (the actor's units); for a Discrete space the critic's output at the taken action."""
    if spec.discrete:
        def q(critic_params, mb):
            out = critic.apply(critic_params, mb.obs)  # [num_critics, B, A]
            return jnp.take_along_axis(out, mb.action[None, :, None].astype(jnp.int32), axis=-1)[..., 0]
    else:
        low, high = bounds(spec)

        def q(critic_params, mb):
            return critic.apply(critic_params, mb.obs, to_unit(mb.action, low, high))
    return q


def make_act(spec, actor, learning_starts: int, use_sde: bool = False):
    """`act` of the off-policy algorithms: uniform random actions while fewer than
    `learning_starts` transitions were collected, then samples of the policy (for a Box space
    tanh(u) scaled to the bounds, u ~ N(mu, sigma^2), or u = mu + features @ theta with gSDE);
    deterministic: argmax of the logits or tanh(mu). `log_prob` is that of the action taken (in
    env units); `value` is unused (zeros)."""
    if not spec.discrete:
        low, high = bounds(spec)
        log_half_range = jnp.sum(jnp.log(0.5 * (high - low)))

    def act(learner, obs, key, deterministic=False):
        k_policy, k_random = jax.random.split(key)
        if spec.discrete:
            logits = actor.apply(learner.params.actor, obs)
            action = (distributions.categorical_mode(logits) if deterministic
                      else distributions.categorical_sample(k_policy, logits))
            log_prob = distributions.categorical_log_prob(logits, action)
        else:
            mean, log_std, features = actor.apply(learner.params.actor, obs)
            if deterministic:
                u = mean
            elif use_sde:
                u = mean + features @ learner.noise
            else:
                u = distributions.gaussian_sample(k_policy, (mean, log_std))
            action = from_unit(jnp.tanh(u), low, high)
            log_prob = distributions.squashed_gaussian_log_prob((mean, log_std), u) - log_half_range
        if not deterministic:
            explore = learner.env_steps < learning_starts
            uniform, uniform_log_prob = random_action(k_random, spec, obs.shape[:1])
            action = jnp.where(explore, uniform, action)
            log_prob = jnp.where(explore, uniform_log_prob, log_prob)
        return action, ActInfo(log_prob, jnp.zeros(obs.shape[:1], jnp.float32))

    return act


def replay_update(train_step, algo_cfg, resample_noise=None):
    """`update(learner, batch, key)` of the off-policy algorithms (000 Alg. 20): add the rollout
    to the buffer (step 2), then, once `learning_starts` transitions were collected,
    `gradient_steps` x `train_step(params, opt_state, minibatch, key) -> (params, opt_state,
    metrics)` on uniform minibatches (steps 3-7); the metrics are their mean (zeros before).
    `resample_noise(params, key)`, when given, draws a new gSDE exploration matrix after them."""
    batch_size, gradient_steps = algo_cfg.batch_size, algo_cfg.gradient_steps
    learning_starts = algo_cfg.learning_starts

    def update(learner: OffPolicyState, batch, key):
        k_train, k_noise = jax.random.split(key)
        rollout = replay.from_rollout(batch)
        env_steps = learner.env_steps + batch.reward.size

        def one_step(carry, k):
            k_sample, k_step = jax.random.split(k)
            # minibatches of the buffer after the add, read before it: the add comes last,
            # ordered after these reads (`after=`), so that XLA writes it in place
            minibatch = replay.sample_after_add(learner.buffer, rollout, k_sample, batch_size)
            params, opt_state, metrics = train_step(*carry, minibatch, k_step)
            return (params, opt_state), metrics

        def learn(carry):
            carry, metrics = jax.lax.scan(one_step, carry, jax.random.split(k_train, gradient_steps))
            return carry, jax.tree.map(jnp.mean, metrics)

        def wait(carry):
            shapes = jax.eval_shape(learn, carry)[1]
            return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        learning = env_steps >= learning_starts
        # only params and optimizer state pass through the cond: under vmap it becomes a select,
        # which must not touch the buffer
        (params, opt_state), metrics = jax.lax.cond(learning, learn, wait, (learner.params, learner.opt_state))
        buffer = replay.add(learner.buffer, rollout, after=params)
        noise = learner.noise if resample_noise is None else resample_noise(params, k_noise)
        return OffPolicyState(params, opt_state, buffer, env_steps,
                              learner.update_step + gradient_steps * learning.astype(jnp.int32), noise), metrics

    return update


# ---- SAC ------------------------------------------------------------------------------------


class SACParams(NamedTuple):
    actor: Any
    critic: Any  # twin critics, stacked on a leading axis of 2
    target_critic: Any
    log_alpha: jax.Array  # log of the temperature alpha


class SACOptState(NamedTuple):
    actor: Any
    critic: Any
    alpha: Any


def soft_target(reward, terminated, next_q, next_log_prob, alpha, gamma):
    """y = r + gamma (1 - terminated) (min_i Qbar_i(s', a') - alpha log pi(a'|s')) for a sampled
    a' (Haarnoja et al. 2018 eq. 3 with clipped double-Q); next_q [2, B]."""
    next_v = jnp.min(next_q, axis=0) - alpha * next_log_prob
    return reward + gamma * (1.0 - terminated.astype(jnp.float32)) * next_v


def discrete_soft_target(reward, terminated, next_q, next_logits, alpha, gamma):
    """y = r + gamma (1 - terminated) sum_a' pi(a'|s') (min_i Qbar_i(s', a') - alpha log pi(a'|s'))
    (Christodoulou 2019 eq. 3, the expectation over actions computed exactly); next_q [2, B, A]."""
    log_p = jax.nn.log_softmax(next_logits, axis=-1)
    next_v = jnp.sum(jnp.exp(log_p) * (jnp.min(next_q, axis=0) - alpha * log_p), axis=-1)
    return reward + gamma * (1.0 - terminated.astype(jnp.float32)) * next_v


def temperature_loss(log_alpha, log_prob, target_entropy):
    """J(alpha) = E[-alpha (log pi(a|s) + Hbar)] (Haarnoja et al. 2018 eq. 18), alpha = exp(log
    alpha) >= 0; for discrete SAC pass log_prob = E_pi[log pi] = -H(pi(.|s)) (Christodoulou eq.
    11). Its gradient raises alpha while the entropy is below the target Hbar."""
    return -jnp.mean(jnp.exp(log_alpha) * (jax.lax.stop_gradient(log_prob) + target_entropy))


def make(spec, cfg, num_updates: int) -> Algorithm:
    del num_updates  # constant learning rates
    algo = cfg.algo
    discrete, use_sde = spec.discrete, algo.use_sde  # use_sde: Box only (check)
    actor, critic = networks.make_offpolicy(cfg.network, spec, num_critics=2, sde=use_sde)
    gamma, tau, learning_starts = algo.gamma, algo.tau, algo.learning_starts
    auto_alpha = algo.ent_coef == "auto"
    alpha_init = algo.ent_coef_init if auto_alpha else algo.ent_coef
    if algo.target_entropy != "auto":
        target_entropy = algo.target_entropy
    elif discrete:
        target_entropy = algo.target_entropy_scale * math.log(spec.num_actions)
    else:
        target_entropy = -float(spec.num_actions)
    tx = optax.adam(algo.learning_rate)

    def init(key):
        k_actor, k_critic, k_noise = jax.random.split(key, 3)
        actor_params, critic_params = init_networks(spec, actor, critic, k_actor, k_critic)
        params = SACParams(actor_params, critic_params, critic_params, jnp.log(jnp.float32(alpha_init)))
        opt_state = SACOptState(tx.init(actor_params), tx.init(critic_params), tx.init(params.log_alpha))
        return initial_state(spec, algo, params, opt_state, sde_noise(params.actor, k_noise) if use_sde else None)

    # per minibatch: (critic target y, Q_i(s, a) [2, B], actor loss and the mean log pi)
    def continuous_target(params, mb, key, alpha):
        mean, log_std, _ = actor.apply(params.actor, mb.next_obs)
        next_action, next_log_prob, _ = distributions.squashed_gaussian_sample(key, (mean, log_std))
        next_q = critic.apply(params.target_critic, mb.next_obs, next_action)
        return soft_target(mb.reward, mb.terminated, next_q, next_log_prob, alpha, gamma)

    def continuous_actor_loss(actor_params, critic_params, mb, key, alpha):
        mean, log_std, _ = actor.apply(actor_params, mb.obs)
        action, log_prob, _ = distributions.squashed_gaussian_sample(key, (mean, log_std))
        q = jnp.min(critic.apply(critic_params, mb.obs, action), axis=0)
        return jnp.mean(alpha * log_prob - q), jnp.mean(log_prob)

    def discrete_target(params, mb, key, alpha):
        next_q = critic.apply(params.target_critic, mb.next_obs)
        return discrete_soft_target(mb.reward, mb.terminated, next_q, actor.apply(params.actor, mb.next_obs),
                                    alpha, gamma)

    def discrete_actor_loss(actor_params, critic_params, mb, key, alpha):
        log_p = jax.nn.log_softmax(actor.apply(actor_params, mb.obs), axis=-1)
        q = jax.lax.stop_gradient(jnp.min(critic.apply(critic_params, mb.obs), axis=0))
        expected_log_prob = jnp.sum(jnp.exp(log_p) * log_p, axis=-1)  # -H(pi(.|s))
        return jnp.mean(jnp.sum(jnp.exp(log_p) * (alpha * log_p - q), axis=-1)), jnp.mean(expected_log_prob)

    target_fn, actor_loss_fn = ((discrete_target, discrete_actor_loss) if discrete
                                else (continuous_target, continuous_actor_loss))
    q_fn = make_q(spec, critic)

    def train_step(params: SACParams, opt_state: SACOptState, mb, key):
        k_target, k_actor = jax.random.split(key)
        alpha = jnp.exp(params.log_alpha)
        target = jax.lax.stop_gradient(target_fn(params, mb, k_target, alpha))

        def critic_loss(critic_params):
            q = q_fn(critic_params, mb)
            return 0.5 * jnp.sum(jnp.mean(jnp.square(q - target), axis=-1)), q

        (loss_critic, q), grads = jax.value_and_grad(critic_loss, has_aux=True)(params.critic)
        updates, critic_opt = tx.update(grads, opt_state.critic, params.critic)
        critic_params = optax.apply_updates(params.critic, updates)

        (loss_actor, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            params.actor, critic_params, mb, k_actor, alpha)
        updates, actor_opt = tx.update(grads, opt_state.actor, params.actor)
        actor_params = optax.apply_updates(params.actor, updates)

        log_alpha, alpha_opt = params.log_alpha, opt_state.alpha
        loss_alpha, grad = jax.value_and_grad(temperature_loss)(log_alpha, log_prob, target_entropy)
        if auto_alpha:
            updates, alpha_opt = tx.update(grad, alpha_opt, log_alpha)
            log_alpha = optax.apply_updates(log_alpha, updates)

        params = SACParams(actor_params, critic_params, polyak(params.target_critic, critic_params, tau), log_alpha)
        return params, SACOptState(actor_opt, critic_opt, alpha_opt), {
            "loss/critic": loss_critic,
            "loss/actor": loss_actor,
            "loss/temperature": loss_alpha,
            "train/alpha": alpha,
            "policy/entropy": -log_prob,
            "train/q_mean": jnp.mean(q),
            "train/target_mean": jnp.mean(target),
        }

    return Algorithm(init, make_act(spec, actor, learning_starts, use_sde),
                     replay_update(train_step, algo, (lambda p, k: sde_noise(p.actor, k)) if use_sde else None))
