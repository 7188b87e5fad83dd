"""TRPO: trust region policy optimization (000 §3.5.1; Schulman et al. 2015).

Each update maximises the importance-sampled surrogate of the policy-iteration view of the
policy gradient (000 eq. 3.3.2, without the gamma^t weight, as usual),

    L(theta') = mean_i [pi_theta'(a_i|s_i) / pi_theta(a_i|s_i) w_i A_i],   w_i = 1,

or, with `algo.discount_surrogate: true`, with the weight of 3.3.2 kept: w_i = gamma^(t_i - t0),
t0 the first step of step i's episode within the rollout segment (the segment's first step for
an episode already running when it starts; `rlcli.estimators.discount_weights`, per env column),
applied after the advantages are standardised over the batch. The weighted L is what the
natural-gradient step and the line search use (its gradient g, the improvement check and the
`loss/policy` metric); the trust region and the critic's regression are unweighted.

within the trust region mean_i KL(pi_theta || pi_theta') <= delta = `algo.max_kl`, which keeps
the state distributions of the two policies close enough for L to be trusted (000 §3.3). The
step is the natural gradient s = F^-1 grad L (conjugate gradient on Fisher-vector products,
`algo.cg_iters`, `algo.damping`) scaled to sqrt(2 delta / s^T F s), then shrunk by
`algo.backtrack_coef` up to `algo.backtrack_iters` times until the exact KL is within delta and
L improves (TRPO §6, Appendix C; `rlcli.natural_gradient`). With `line_search=False` the
scaled step is taken as is: the natural policy gradient (`algo=npg`).

A_i and the critic targets y_i come from the chosen estimator (GAE by default, 000 eq.
4.2.10), computed with the critic before the update. The critic is a separate network (the
two-network design of 000 §4.4.1, required: `network.shared=false`) fitted afterwards by
regression on y (000 eq. 4.1.5) for `algo.vf_epochs` epochs of `algo.vf_minibatches`
minibatches with `make_optimizer` (Adam by default) applied to the critic parameters only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlcli import estimators, losses, natural_gradient
from rlcli.algos import (BASE_KEYS, ON_POLICY_ESTIMATORS, OPTIMIZER_KEYS, Algorithm, Batch, LearnerState,
                         actor_critic_policy, make_optimizer)
from rlcli.errors import ConfigError
from rlcli.rules import Key, Rule, boolean, int_at_least, is_num, positive, with_defaults

# the keys of the natural-gradient step and the critic's regression (shared with npg)
NATURAL_STEP_KEYS = {
    **with_defaults(BASE_KEYS, num_steps=128),
    "algo.max_kl": Key(0.01, positive(), "delta: trust-region bound on the mean KL(pi_old || pi_new)"),
    "algo.damping": Key(0.1, positive(), "added to the Fisher matrix: (F + damping I) s = g"),
    "algo.cg_iters": Key(10, int_at_least(1), "conjugate-gradient iterations for s = F^-1 g"),
    "algo.normalize_advantages": Key(True, boolean(), "standardise the advantages over the batch"),
    "algo.discount_surrogate": Key(False, boolean(), "weight each step's surrogate term by gamma^(t-t0), t0 its "
                                                     "episode's first step in the rollout (000 eq. 3.3.2; applied "
                                                     "after normalising A); false: unweighted, as usual"),
    "algo.vf_epochs": Key(10, int_at_least(1), "critic regression: epochs over the batch ..."),
    "algo.vf_minibatches": Key(4, int_at_least(1), "... of this many minibatches, one optimizer step each"),
    **with_defaults(OPTIMIZER_KEYS, learning_rate=(1.0e-3, "the critic's step size (the policy's step is set by "
                                                           "max_kl)"),
                    max_grad_norm=(0.5, "the critic's gradients clipped to this global norm")),
}
LINE_SEARCH_KEYS = {
    "algo.backtrack_iters": Key(10, int_at_least(1), "line-search candidates: step x backtrack_coef^j, j < "
                                                     "backtrack_iters"),
    "algo.backtrack_coef": Key(0.8, Rule(lambda v: is_num(v) and 0.0 < v < 1.0, "a number in (0, 1)", float),
                               "the line search's step shrink factor"),
}
KEYS = {**NATURAL_STEP_KEYS, **LINE_SEARCH_KEYS}
ESTIMATORS = ON_POLICY_ESTIMATORS
ESTIMATOR = "gae"
ACTION_SPACES = ("discrete", "continuous")

# With network.shared=false, ActorCritic's critic is `critic_torso` plus the value head, the
# first Dense it builds (`Dense_0`); everything else (`actor_torso`, the policy head, log_std
# or, with network.state_dependent_std=true, `log_std_head`) is the policy.
CRITIC_KEYS = ("critic_torso", "Dense_0")


def split(params):
    """Full network params -> (policy params, critic params), two disjoint subtrees."""
    inner = params["params"]
    return ({"params": {k: v for k, v in inner.items() if k not in CRITIC_KEYS}},
            {"params": {k: v for k, v in inner.items() if k in CRITIC_KEYS}})


def merge(policy_params, critic_params):
    return {"params": {**policy_params["params"], **critic_params["params"]}}


def check(cfg, spec) -> None:
    """The policy and critic must be separate networks; the critic's minibatches must split
    the batch evenly."""
    name = cfg.algo.name
    if cfg.network.shared:
        raise ConfigError(f"network.shared=true is not allowed with algo={name} "
                          f"(allowed with algo={name}: network.shared=false; the critic is fitted "
                          "separately from the natural-gradient policy step)")
    batch = cfg.num_envs * cfg.algo.num_steps
    if batch % cfg.algo.vf_minibatches:
        raise ConfigError(
            f"algo.vf_minibatches={cfg.algo.vf_minibatches} does not divide the batch of num_envs x "
            f"algo.num_steps = {cfg.num_envs} x {cfg.algo.num_steps} = {batch} (allowed: a divisor of {batch})")


def make(spec, cfg, num_updates: int, line_search: bool = True) -> Algorithm:
    algo = cfg.algo
    vf_epochs, vf_minibatches = algo.vf_epochs, algo.vf_minibatches
    tx = make_optimizer(algo, num_updates * vf_epochs * vf_minibatches)  # one step per minibatch
    # the critic optimizer's state covers the critic subtree only
    critic_tx = optax.GradientTransformation(lambda params: tx.init(split(params)[1]), tx.update)
    network, dist, init, act, *_ = actor_critic_policy(spec, cfg, critic_tx)
    estimator = estimators.batched(estimators.make_from_config(cfg.estimator, algo.gamma))
    max_kl, damping, cg_iters = algo.max_kl, algo.damping, algo.cg_iters
    normalize_advantages, discount_surrogate, gamma = algo.normalize_advantages, algo.discount_surrogate, algo.gamma
    if line_search:
        backtrack_iters, backtrack_coef = algo.backtrack_iters, algo.backtrack_coef

    def policy_step(policy_params, critic_params, batch: Batch, advantages):
        """The natural-gradient (and, for TRPO, line-searched) step of the policy params."""
        def policy(p):
            return network.apply(merge(p, critic_params), batch.obs)[0]

        old_dist = jax.lax.stop_gradient(policy(policy_params))
        old_log_prob = dist.log_prob(old_dist, batch.action)

        def surrogate(dist_params):  # 000 eq. 3.3.2: mean of the likelihood ratio times (w) A
            ratio = jnp.exp(dist.log_prob(dist_params, batch.action) - old_log_prob)
            return jnp.mean(ratio * advantages)

        kl_fn = natural_gradient.mean_kl(dist.kl, policy, old_dist)
        surrogate_old, grad = jax.value_and_grad(lambda p: surrogate(policy(p)))(policy_params)
        fvp = natural_gradient.fisher_vector_product(kl_fn, policy_params, damping)
        step = natural_gradient.natural_step(grad, fvp, max_kl, cg_iters)
        metrics = {"train/step_size": step.scale, "train/grad_norm": optax.tree.norm(grad),
                   "train/expected_improvement": step.expected_improvement}
        if line_search:
            def evaluate(p):
                dist_params = policy(p)
                return surrogate(dist_params) - surrogate_old, jnp.mean(dist.kl(old_dist, dist_params))

            search = natural_gradient.backtracking_line_search(
                evaluate, policy_params, step.step, max_kl, backtrack_iters, backtrack_coef)
            new_params = search.params
            metrics |= {"train/accepted": search.accepted.astype(jnp.float32),
                        "train/backtracks": search.backtracks.astype(jnp.float32),
                        "train/step_fraction": search.fraction}
        else:
            new_params = jax.tree.map(jnp.add, policy_params, step.step)
        new_dist = policy(new_params)
        metrics |= {"loss/policy": -surrogate(new_dist),
                    "policy/kl": jnp.mean(dist.kl(old_dist, new_dist)),
                    "policy/entropy": jnp.mean(dist.entropy(new_dist))}
        return new_params, metrics

    def fit_critic(critic_params, opt_state, policy_params, obs, targets, key):
        """`vf_epochs` passes over the batch in `vf_minibatches` shuffled minibatches, one
        optimizer step on 1/2 mean (V(s) - y)^2 (000 eq. 4.1.5) per minibatch; the gradient
        is taken with respect to the critic params only."""
        def minibatch(carry, idx):
            params, opt_state = carry
            grads = jax.grad(lambda c: losses.value_loss(
                network.apply(merge(policy_params, c), obs[idx])[1], targets[idx]))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def epoch(carry, k):
            perm = jax.random.permutation(k, targets.shape[0]).reshape(vf_minibatches, -1)
            return jax.lax.scan(minibatch, carry, perm)[0], None

        return jax.lax.scan(epoch, (critic_params, opt_state), jax.random.split(key, vf_epochs))[0]

    def update(learner, batch, key):
        policy_params, critic_params = split(learner.params)
        _, values = network.apply(learner.params, batch.obs)
        _, next_values = network.apply(learner.params, batch.next_obs)
        advantages, targets = estimator(batch.reward, values, next_values, batch.terminated, batch.truncated)
        metrics = {"loss/value": losses.value_loss(values, targets),
                   "train/advantage_mean": jnp.mean(advantages),
                   "train/value_mean": jnp.mean(values),
                   "train/explained_variance": losses.explained_variance(values, targets)}
        if normalize_advantages:
            advantages = losses.normalize(advantages)
        if discount_surrogate:  # 000 eq. 3.3.2's gamma^(t - t0), after normalising
            advantages = advantages * estimators.batched(
                lambda te, tr: estimators.discount_weights(te, tr, gamma=gamma))(batch.terminated, batch.truncated)
        policy_params, policy_metrics = policy_step(policy_params, critic_params, batch, advantages)
        flat_obs = batch.obs.reshape((-1,) + batch.obs.shape[2:])
        critic_params, opt_state = fit_critic(critic_params, learner.opt_state, policy_params, flat_obs,
                                              targets.reshape(-1), key)
        learner = LearnerState(merge(policy_params, critic_params), opt_state, learner.update_step + 1)
        return learner, metrics | policy_metrics

    return Algorithm(init, act, update)
