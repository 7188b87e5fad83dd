"""Q actor-critic (001 "Q Actor Critic Algorithm"; the critic is the Q-function of 000 eq.
4.4.1).

On a batch of `num_envs` x `algo.num_steps` transitions of the current policy:

* actor: theta <- theta + alpha_theta Q_w(s, a) grad log pi_theta(a|s), i.e. one step on
  -mean(log pi(a_t|s_t) Q_w(s_t, a_t)) - ent_coef * mean H (001, "Actor Critic Algorithms":
  the policy gradient weighted by Q_w), `algo.weight=q`; or, `algo.weight=advantage`,
  by A_w(s, a) = Q_w(s, a) - V_w(s) with V_w(s) = E_{a~pi}[Q_w(s, a)] (000 eq. 4.4.3; 001 "The
  Advantage Function"): the exact sum over actions for a Discrete space, one sample of pi for
  a Box one (an action-independent baseline, so the estimate stays unbiased given Q_w);
  `algo.normalize_advantages` standardises the weights over the batch;
* critic: w <- w + alpha_w delta_t grad_w Q_w(s, a) with the SARSA TD error
  delta_t = r_t + gamma (1 - terminated_t) Q_w(s'_t, a'_t) - Q_w(s_t, a_t): one step on
  1/2 mean delta_t^2 with the target held fixed. a'_t is the action the policy took next
  (a_{t+1} of the batch) where the episode goes on inside the rollout, and a fresh sample
  a' ~ pi(.|s'_t) where the rollout ends or a time limit cut the episode (s'_t is then the
  final observation, bootstrapped; a termination bootstraps nothing).

Both steps start from the same parameters, as in the pseudo code (actor first with the old
Q_w, then the critic), with learning rates `algo.learning_rate` (alpha_theta) and
`algo.critic_learning_rate` (alpha_w) and separate optimizer states. The policy is the
`network=` actor (its value head is not used); Q_w is an MLP of the same `network.hidden_sizes`
over the observation (and the action, for a Box space; for a Discrete one it outputs
Q_w(s, .) for every action).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlcli import losses, networks
from rlcli.algos import BASE_KEYS, OPTIMIZER_KEYS, ActInfo, Algorithm, Batch, actor_critic_policy, make_optimizer
from rlcli.algos.batch_ac import ACTOR_KEYS
from rlcli.rules import Key, one_of, positive, with_defaults

KEYS = {
    **with_defaults(BASE_KEYS, num_steps=(8, "T: steps per env per update (batch = num_envs x num_steps)")),
    **with_defaults(OPTIMIZER_KEYS, learning_rate=(3.0e-4, "alpha_theta, the actor's step size"),
                    anneal_lr=(False, "decay both learning rates linearly to 0 over the run")),
    "algo.critic_learning_rate": Key(1.0e-3, positive(), "alpha_w, Q_w's step size"),
    "algo.weight": Key("advantage", one_of("q", "advantage"),
                       "q: the actor weighted by Q_w(s, a) (001) | advantage: by Q_w(s, a) - E_pi Q_w(s, .) (000 eq. "
                       "4.4.3)"),
    **with_defaults(ACTOR_KEYS, ent_coef=0.01,
                    normalize_advantages=(False, "standardise the actor's weights over the batch (near a "
                                                 "deterministic policy it blows noise up: 3 of 5 seeds collapsed)")),
}
ESTIMATORS = ("none",)  # the critic's TD error is the algorithm's own
ESTIMATOR = "none"
ACTION_SPACES = ("discrete", "continuous")


class QACParams(NamedTuple):
    policy: Any
    q: Any


class QACState(NamedTuple):
    params: QACParams
    opt_state: Any  # the actor's
    critic_opt_state: Any
    update_step: jax.Array


def sarsa_next_actions(actions: jax.Array, sampled: jax.Array, terminated: jax.Array,
                       truncated: jax.Array) -> jax.Array:
    """[T, N, ...] -> a'_t: a_{t+1} where the episode goes on inside the rollout, else the
    sample of pi(.|s'_t) (the rollout's last step, or the end of an episode)."""
    done = jnp.logical_or(terminated, truncated)
    following = jnp.concatenate([actions[1:], sampled[-1:]], axis=0)
    goes_on = jnp.logical_not(done).at[-1].set(False)
    goes_on = goes_on.reshape(goes_on.shape + (1,) * (actions.ndim - goes_on.ndim))
    return jnp.where(goes_on, following, sampled)


def make(spec, cfg, num_updates: int) -> Algorithm:
    algo = cfg.algo
    gamma = algo.gamma
    tx = make_optimizer(algo, num_updates)
    critic_tx = make_optimizer(algo, num_updates, learning_rate=algo.critic_learning_rate)
    network, dist, base_init, base_act, *_ = actor_critic_policy(spec, cfg, tx)
    q_network = networks.QNetwork(spec.num_actions, bool(spec.discrete),
                                  tuple(int(h) for h in cfg.network.hidden_sizes), cfg.network.activation,
                                  len(spec.obs_shape))
    ent_coef = algo.ent_coef
    normalize_advantages = algo.normalize_advantages
    advantage = algo.weight == "advantage"

    def q_of(q_params, obs, action):
        if spec.discrete:
            q_all = q_network.apply(q_params, obs)
            return jnp.take_along_axis(q_all, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return q_network.apply(q_params, obs, action)

    def init(key):
        k_policy, k_q = jax.random.split(key)
        policy = base_init(k_policy).params
        obs = jnp.zeros((1,) + spec.obs_shape, jnp.float32)
        action = None if spec.discrete else jnp.zeros((1, spec.num_actions), jnp.float32)
        q = q_network.init(k_q, obs, action)
        return QACState(QACParams(policy, q), tx.init(policy), critic_tx.init(q), jnp.zeros((), jnp.int32))

    def act(learner: QACState, obs, key, deterministic=False):
        action, info = base_act(learner._replace(params=learner.params.policy), obs, key, deterministic)
        return action, ActInfo(info.log_prob, q_of(learner.params.q, obs, action))

    def actor_loss(policy, q_weights, batch: Batch):
        dist_params, _ = network.apply(policy, batch.obs)
        policy_loss = losses.policy_gradient_loss(dist.log_prob(dist_params, batch.action), q_weights)
        entropy = losses.entropy_bonus(dist.entropy(dist_params))
        return policy_loss - ent_coef * entropy, (policy_loss, entropy)

    def critic_loss(q_params, batch: Batch, targets):
        q = q_of(q_params, batch.obs, batch.action)
        return losses.value_loss(q, targets), q

    def expected_q(params: QACParams, obs, key):
        """V_w(s) = E_{a~pi}[Q_w(s, a)]: exact for Discrete, one sample for Box."""
        dist_params, _ = network.apply(params.policy, obs)
        if spec.discrete:
            return jnp.sum(jax.nn.softmax(dist_params) * q_network.apply(params.q, obs), axis=-1)
        return q_of(params.q, obs, dist.sample(key, dist_params))

    def update(learner: QACState, batch: Batch, key):
        params = learner.params
        k_next, k_baseline = jax.random.split(key)
        next_dist, _ = network.apply(params.policy, batch.next_obs)
        sampled = dist.sample(k_next, next_dist)
        next_actions = sarsa_next_actions(batch.action, sampled, batch.terminated, batch.truncated)
        next_q = q_of(params.q, batch.next_obs, next_actions)
        targets = batch.reward + gamma * (1.0 - batch.terminated.astype(jnp.float32)) * next_q
        q_weights = q_of(params.q, batch.obs, batch.action)
        if advantage:
            q_weights = q_weights - expected_q(params, batch.obs, k_baseline)
        weights = losses.normalize(q_weights) if normalize_advantages else q_weights
        (loss, (policy_loss, entropy)), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
            params.policy, weights, batch)
        (q_loss, q), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(params.q, batch, targets)
        updates, opt_state = tx.update(actor_grads, learner.opt_state, params.policy)
        policy = optax.apply_updates(params.policy, updates)
        updates, critic_opt_state = critic_tx.update(critic_grads, learner.critic_opt_state, params.q)
        q_params = optax.apply_updates(params.q, updates)
        metrics = {
            "loss/policy": policy_loss,
            "loss/q": q_loss,
            "policy/entropy": entropy,
            "loss/total": loss + q_loss,
            "train/q_mean": jnp.mean(q),
            "train/td_error_abs": jnp.mean(jnp.abs(targets - q)),
            "train/explained_variance": losses.explained_variance(q, targets),
            "train/grad_norm": optax.tree.norm(actor_grads),
        }
        return QACState(QACParams(policy, q_params), opt_state, critic_opt_state, learner.update_step + 1), metrics

    return Algorithm(init, act, update)

