"""Advantage estimators: pure functions over one trajectory segment of length T.

Every estimator has the signature

    fn(rewards, values, next_values, terminated, truncated, *, gamma, ...) -> (advantages, targets)

over time-major arrays of shape [T] (use `jax.vmap` for [T, N] batches):

* rewards[t]      r_t, the reward of the transition s_t -> s'_t;
* values[t]       V(s_t);
* next_values[t]  V(s'_t), the value of the *true* next observation: at a time-limit
                  truncation this is the final observation of the episode, not the reset one;
* terminated[t]   s'_t is terminal: its value is 0, nothing is bootstrapped;
* truncated[t]    the episode was cut by a time limit after this step: the target bootstraps
                  from V(s'_t), but no return flows across into the next episode.

`targets` are the critic's regression targets y_t (000 eq. 4.1.5) and
`advantages = targets - values` for the n-step family.

Semantics at boundaries, shared by all estimators: a sum over future rewards stops at the
end of the episode (terminated or truncated) and at the end of the segment; where it stops
it adds gamma^k * (1 - terminated) * V(s'), the bootstrap (000 eq. 4.1.6).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

from rlcli.rules import Choice, Key, boolean, in_unit_interval, one_of, optional_int_at_least

Estimator = Callable[..., tuple[jax.Array, jax.Array]]


def _not(x: jax.Array) -> jax.Array:
    return 1.0 - x.astype(jnp.float32)


def td(rewards, values, next_values, terminated, truncated, *, gamma):
    """One-step TD error as the advantage (000 eq. 4.1.4 with the discount of 4.1.6;
    001 "Advantage Actor Critic (A2C)"):

        delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t),  y_t = delta_t + V(s_t).
    """
    del truncated  # a truncated step bootstraps from V(s'_t) exactly like a normal step
    targets = jnp.asarray(rewards, jnp.float32) + gamma * _not(terminated) * next_values
    return targets - values, targets


def nstep(rewards, values, next_values, terminated, truncated, *, gamma, n=None):
    """n-step advantage (000 eq. 4.2.8):

        A_t = sum_{k=0}^{m-1} gamma^k r_{t+k} + gamma^m (1 - terminated) V(s'_{t+m-1}) - V(s_t),

    with m = n, or fewer where the episode or the segment ends first. (As printed, 4.2.8 sums
    t..t+n, n+1 rewards, beside gamma^n; this uses the usual reading, n rewards then gamma^n V,
    which is also rlax's `n_step_bootstrapped_returns`.) `n=None` sums to the
    end of the segment, as in A3C (001, "N-Step Returns for A3C updates").

    n=None (or n >= T) is a reverse `jax.lax.scan` over time, y_t = r_t + gamma y_{t+1}, or
    r_t + gamma (1 - terminated_t) V(s'_t) where the episode or the segment ends (O(T)). A
    finite n < T is a `jax.lax.scan` over the offset k = 0..n-1, all t at once: step k adds
    gamma^k r_{t+k} to every window still open and closes, with its bootstrap, those that end
    at t+k (O(T n) work; each return summed in increasing k). Either way the traced program is one
    scan body, whatever n and T.
    """
    if n is not None and int(n) < 1:
        raise ValueError(f"nstep: n={n} is not allowed (allowed: null or an integer >= 1)")
    rewards = jnp.asarray(rewards, jnp.float32)
    horizon = rewards.shape[0]
    done = jnp.logical_or(terminated, truncated)
    bootstrap = jnp.asarray(_not(terminated) * next_values, jnp.float32)
    if n is None or int(n) >= horizon:
        stop = done.at[-1].set(True)  # the return ends: the episode's end or the segment's

        def backward(carry, inputs):
            r, b, s = inputs
            g = r + gamma * jnp.where(s, b, carry)
            return g, g

        returns = jax.lax.scan(backward, jnp.zeros((), jnp.float32), (rewards, bootstrap, stop),
                               reverse=True)[1]
        return returns - values, returns
    n = int(n)
    steps = jnp.arange(horizon)

    def offset(carry, inputs):
        returns, alive = carry  # alive: 1 while the window of step t is still open at offset k
        k, discount = inputs
        idx = jnp.minimum(steps + k, horizon - 1)
        returns = returns + alive * discount * rewards[idx]
        stops = done[idx] | (steps + k >= horizon - 1) | (k == n - 1)
        stop_now = alive * stops.astype(jnp.float32)
        returns = returns + stop_now * discount * gamma * bootstrap[idx]
        return (returns, alive - stop_now), None

    discounts = [1.0]  # gamma^k, each rounded once from double precision
    for _ in range(n - 1):
        discounts.append(discounts[-1] * gamma)
    init = (jnp.zeros_like(rewards), jnp.ones_like(rewards))
    (returns, _), _ = jax.lax.scan(offset, init, (jnp.arange(n), jnp.asarray(discounts, jnp.float32)))
    return returns - values, returns


def gae(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    """Generalized advantage estimation (000 eq. 4.2.10):

        A_t = sum_{t'>=t} (gamma lambda)^{t'-t} delta_{t'}, cut at the end of the episode,
        delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t),  y_t = A_t + V(s_t).

    lambda = 0 gives the TD error, lambda = 1 the Monte-Carlo return minus V (000 eq. 4.2.7).
    """
    deltas, _ = td(rewards, values, next_values, terminated, truncated, gamma=gamma)
    cont = _not(jnp.logical_or(terminated, truncated))

    def backward(carry, inputs):
        delta, c = inputs
        advantage = delta + gamma * lam * c * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros((), deltas.dtype), (deltas, cont), reverse=True
    )
    return advantages, advantages + values


# baselines of the Monte-Carlo estimators (`estimator.baseline`): 'value' is subtracted by the
# estimator; 'mean', 'leave_one_out', 'optimal' and 'q_control_variate' by the algorithm, which
# holds the batch (`subtract_mean_baseline`, `optimal_baseline_gradient`, `control_variate_loss`)
BASELINES = ("none", "mean", "leave_one_out", "value", "optimal", "q_control_variate")


def discount_weights(terminated, truncated, *, gamma):
    """w_t = gamma^{t-t0} over one [T] segment, t0 the first step of t's episode in the segment
    (0 for an episode already running at the segment's start): the factor of option 2 before
    grad log pi (000 eq. 4.1.8, last line)."""
    done = jnp.logical_or(terminated, truncated)
    starts = jnp.concatenate([jnp.ones((1,), bool), done[:-1]])
    return jax.lax.scan(lambda w, s: (jnp.where(s, 1.0, w * gamma),) * 2, jnp.ones((), jnp.float32), starts)[1]


def _monte_carlo(rewards, values, next_values, terminated, truncated, *, gamma, whole_episode,
                 discounting, baseline, bootstrap_truncation=False):
    """Shared body of `total_return` and `reward_to_go` (one [T] segment).

    G_t = sum_{t'>=t} gamma^{t'-t} r_t', cut at the episode's end; t0 is the first step of
    the episode of t in the segment (t0 = 0 for an episode already running when the segment
    starts) and w_t = gamma^{t-t0}. Where the return stops without a termination (time-limit
    truncation, or the end of the segment), Phi adds gamma V(s') only with
    `bootstrap_truncation`: off, a truncation is the end of the return, the finite-horizon
    objective of the seed (000 eq. 3.1.1), whatever the baseline; the baseline changes only the
    variance. The critic's targets (the second output) bootstrap there whenever a critic is
    fitted (baseline='value' or bootstrap_truncation), as every critic in rlcli does.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r} is not allowed (allowed: one of {', '.join(BASELINES)})")
    rewards = jnp.asarray(rewards, jnp.float32)
    done = jnp.logical_or(terminated, truncated)
    last = done.at[-1].set(True)  # where the return stops: episode end or segment end
    no_bootstrap = jnp.zeros_like(rewards)
    critic_bootstrap = (_not(terminated) * next_values if baseline == "value" or bootstrap_truncation
                        else no_bootstrap)
    bootstrap = critic_bootstrap if bootstrap_truncation else no_bootstrap  # Phi's
    last_f = last.astype(jnp.float32)

    def backward(discount, bootstrap=bootstrap):
        def body(carry, inputs):
            r, b, stop = inputs
            g = r + discount * (stop * b + (1.0 - stop) * carry)
            return g, g

        return jax.lax.scan(body, jnp.zeros((), jnp.float32), (rewards, bootstrap, last_f),
                            reverse=True)[1]

    starts = jnp.concatenate([jnp.ones((1,), bool), done[:-1]])

    def forward(body_fn, init, xs):
        return jax.lax.scan(body_fn, init, xs)[1]

    weight = discount_weights(terminated, truncated, gamma=gamma)  # gamma^(t - t0)
    returns = backward(gamma)  # G_t, the discounted reward-to-go of Phi
    targets = returns if bootstrap_truncation or baseline != "value" else backward(gamma, critic_bootstrap)
    if whole_episode:
        # option 1: R(tau), undiscounted (3.1.8); option 2: sum_t gamma^(t-t0) r_t (4.1.7)
        episode = returns if discounting == "option2" else backward(1.0)
        phi = forward(lambda c, x: (jnp.where(x[0], x[1], c),) * 2, jnp.zeros((), jnp.float32),
                      (starts, episode))
    else:
        phi = returns if discounting == "option1" else weight * returns
    if baseline == "value":
        phi = phi - (weight if discounting == "option2" else 1.0) * values
    return phi, targets


def total_return(rewards, values, next_values, terminated, truncated, *, gamma,
                 discounting="option1", baseline="none", bootstrap_truncation=False):
    """Phi_t = the return of the whole episode of t, the same for each of its steps (Alg. 15,
    000 eq. 3.1.8). `discounting` (000 §4.1.4, "before or after causality"): option1 keeps
    R(tau) = sum_t r_t undiscounted (3.1.8; gamma is introduced only after causality, which
    this estimator does not apply); option2 is sum_t gamma^{t-t0} r_t from the episode's first
    step t0 (000 eq. 4.1.7, option 2).

    baseline: 'none', 'mean', 'leave_one_out' and 'optimal' return Phi (the episode mean of
    000 eq. 3.1.11 and the optimal baseline of 3.1.17 are the algorithm's, which holds the
    batch: `subtract_mean_baseline`, `optimal_baseline_gradient`); 'value' returns
    Phi_t - w V(s_t) (000 eq. 4.2.2), w = 1 for option1, gamma^{t-t0} for option2. `targets`
    are always the discounted reward-to-go G_t (see `reward_to_go`), the critic's target.
    Truncation and the segment's end: see `_monte_carlo` (Phi bootstraps only with
    `bootstrap_truncation`, the bootstrap V(s') then counting as one more reward).
    """
    return _monte_carlo(rewards, values, next_values, terminated, truncated, gamma=gamma,
                        whole_episode=True, discounting=discounting, baseline=baseline,
                        bootstrap_truncation=bootstrap_truncation)


def reward_to_go(rewards, values, next_values, terminated, truncated, *, gamma,
                 discounting="option1", baseline="none", bootstrap_truncation=False):
    """Phi_t = G_t = sum_{t'>=t} gamma^{t'-t} r_t' to the episode's end (causality, 000 eq.
    3.1.10, with the discount of option 1, §4.1.4). option2 keeps the factor gamma^{t-t0} on
    the whole term, Phi_t = gamma^{t-t0} G_t (000 eq. 4.1.8, last line: later decisions
    count less); option1 drops it (the version used in practice, 000 §4.1.4).

    baseline: 'none'/'mean'/'leave_one_out'/'q_control_variate' return Phi ('mean',
    'leave_one_out': the algorithm subtracts b_t, the mean over the batch's episodes of their
    reward-to-go at the same step of the episode, `subtract_mean_baseline`; 'q_control_variate':
    the algorithm subtracts w_t Q_w(s_t, a_t) and adds the correction term, 000 eq. 4.2.6,
    `control_variate_loss`); 'value': w_t (G_t - V(s_t)) with w_t = 1 (option1, 000
    eq. 4.2.2) or gamma^{t-t0} (option2). `targets` = G_t. At a truncation (or the segment's
    end) Phi's G_t bootstraps with gamma V(s') only with `bootstrap_truncation` (it is then the
    n-step return to the end of the segment, `nstep` with n=None); otherwise the truncation is
    the end of the return (the seed's finite-horizon objective), and the critic's targets
    bootstrap there (see `_monte_carlo`). Termination never bootstraps.
    """
    return _monte_carlo(rewards, values, next_values, terminated, truncated, gamma=gamma,
                        whole_episode=False, discounting=discounting, baseline=baseline,
                        bootstrap_truncation=bootstrap_truncation)


def episode_steps(terminated, truncated):
    """[T, N] -> [T, N] int: t - t0, the step's index within its episode (t0 its first step in
    the segment)."""
    done = jnp.logical_or(terminated, truncated)
    starts = jnp.concatenate([jnp.ones_like(done[:1]), done[:-1]], axis=0)
    return jax.lax.scan(lambda j, s: (jnp.where(s, 0, j + 1),) * 2, jnp.zeros(done.shape[1:], jnp.int32), starts)[1]


def subtract_mean_baseline(phi, terminated, truncated, mask, *, per_step: bool, leave_one_out: bool = False):
    """Phi minus the mean baseline of 000 eq. 3.1.11, a mean over the batch's used episodes
    (mask 1), not over its steps, on a time-major [T, N] batch:

    * per_step=False (total_return, Phi = R(tau) on every step): b = (1/N) sum_i R(tau_i);
    * per_step=True (reward_to_go): b_t = the mean of Phi at the same step j = t - t0 of every
      used episode still running at j (the analogue of 3.1.11 for each term of the sum).

    Subtracting a mean that includes the episode itself scales the gradient's expectation by
    (1 - 1/N) (N fixed; N_j for the step-j term). `leave_one_out` takes each episode's b from
    the other episodes only, b_{-i} = (sum - own) / (N - 1) (0 where no other episode has step
    j), independent of episode i and so unbiased (000 eq. 3.1.12)."""
    mask = mask.astype(jnp.float32)
    done = jnp.logical_or(terminated, truncated)
    if per_step:
        index = episode_steps(terminated, truncated).reshape(-1)
        num = phi.size
        total = jax.ops.segment_sum((phi * mask).reshape(-1), index, num_segments=num)[index].reshape(phi.shape)
        count = jax.ops.segment_sum(mask.reshape(-1), index, num_segments=num)[index].reshape(phi.shape)
    else:
        starts = jnp.concatenate([jnp.ones_like(done[:1]), done[:-1]], axis=0).astype(jnp.float32) * mask
        total, count = jnp.sum(phi * starts), jnp.sum(starts)
    if leave_one_out:
        return phi - jnp.where(count > 1.0, (total - phi) / jnp.maximum(count - 1.0, 1.0), 0.0)
    return phi - total / jnp.maximum(count, 1.0)


def optimal_baseline(scores, returns, valid):
    """The optimal baseline of 000 eq. 3.1.17, b = E[g(tau)^2 r(tau)] / E[g(tau)^2] with
    g(tau) = grad log p_theta(tau), taken per parameter component k as the derivation
    3.1.13-3.1.16 runs (the variance of each component of the estimate is a quadratic in b_k,
    and minimising every component minimises the trace of the covariance too):
    b_k = E[g_k^2 R] / E[g_k^2]. Estimated for episode i from the *other* episodes of the
    batch (leave-one-out),

        b_{k,-i} = sum_{j != i} g_{jk}^2 R_j / sum_{j != i} g_{jk}^2   (0 where the sum is 0),

    so that b_{-i} is independent of episode i and the estimate stays unbiased (000 eq. 3.1.12).

    scores: pytree of [E, ...] per-episode g(tau_i); returns [E] R(tau_i); valid [E] (1 = the
    slot holds an episode of the batch, 0 = padding). Returns the pytree of [E, ...] b_{-i}."""
    valid = valid.astype(jnp.float32)

    def per_leaf(g):
        shape = (-1,) + (1,) * (g.ndim - 1)
        g2 = jnp.square(g) * valid.reshape(shape)
        num = jnp.sum(g2 * returns.reshape(shape), axis=0) - g2 * returns.reshape(shape)
        den = jnp.sum(g2, axis=0) - g2
        ok = den > 1e-12 * jnp.maximum(jnp.sum(g2, axis=0), 1e-30)
        return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)

    return jax.tree.map(per_leaf, scores)


def optimal_baseline_gradient(scores, returns, valid):
    """sum_i g(tau_i) (R(tau_i) - b_{-i}) with the per-component leave-one-out optimal baseline
    of `optimal_baseline` (000 eq. 3.1.14 with 3.1.17): the per-episode gradients combined
    directly, component by component (with a per-component b there is no single
    scalar-weighted surrogate). Same arguments as `optimal_baseline`; returns a pytree shaped
    like one episode's gradient (a sum: divide by the batch size for the mean)."""
    baselines = optimal_baseline(scores, returns, valid)
    valid = valid.astype(jnp.float32)

    def per_leaf(g, b):
        shape = (-1,) + (1,) * (g.ndim - 1)
        return jnp.sum(valid.reshape(shape) * g * (returns.reshape(shape) - b), axis=0)

    return jax.tree.map(per_leaf, scores, baselines)


def expected_q_discrete(logits, q_values):
    """E_{a~pi(.|s)}[Q_w(s, a)] = sum_a pi(a|s) Q_w(s, a) exactly over a Discrete action space,
    differentiable in the logits only (Q_w held constant): the correction term of 000 eq.
    4.2.6 for one state. logits, q_values [..., A] -> [...]."""
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * jax.lax.stop_gradient(q_values), axis=-1)


def control_variate_loss(log_prob, expected_q, phi, q_taken, weight, mask=None, normalize=False):
    """Surrogate whose gradient is the action-dependent control-variate estimate of 000 eq. 4.2.6,

        (1/n) sum_t [grad log pi(a_t|s_t) (Phi_t - w_t Q_w(s_t, a_t)) + w_t grad E_{a~pi}[Q_w(s_t, a)]],

    to minimise (negated); Phi_t = w_t Qhat_t, the reward-to-go (with w_t = gamma^{t-t0} for
    option 2, 1 for option 1). log_prob [...] log pi(a_t|s_t); expected_q [...] E_{a~pi}[Q_w(s_t,
    a)] as a differentiable function of the policy (`expected_q_discrete`, or a reparameterised
    sample for a Gaussian policy), Q_w's own parameters held constant; phi, q_taken, weight [...]
    held constant. `mask`: see `rlcli.losses.mean`. `normalize`: A_t = Phi_t - w_t Q_w is
    standardised, (A_t - m) / s over the counted samples, and the correction term divided by
    the same s: the whole estimate scaled by 1/s, with the constant m as one more baseline."""
    from rlcli.losses import mean

    advantages = jax.lax.stop_gradient(phi - weight * q_taken)
    scale = 1.0
    if normalize:
        centred = advantages - mean(advantages, mask)
        scale = 1.0 / (jnp.sqrt(mean(jnp.square(centred), mask)) + 1e-8)
        advantages = centred * scale
    correction = jax.lax.stop_gradient(weight * scale) * expected_q
    return -mean(log_prob * advantages + correction, mask)


REGISTRY: dict[str, Estimator] = {"td": td, "nstep": nstep, "gae": gae, "total_return": total_return,
                                  "reward_to_go": reward_to_go}
# Monte-Carlo estimators: their config has `discounting` and `baseline`
MONTE_CARLO = ("total_return", "reward_to_go")


def make(name: str, gamma: float, **hyper) -> Estimator:
    """Bind gamma and the estimator's own hyperparameters; the result maps one trajectory
    (rewards, values, next_values, terminated, truncated) to (advantages, targets)."""
    return partial(REGISTRY[name], gamma=gamma, **hyper)


def batched(estimator: Estimator) -> Estimator:
    """The estimator over time-major [T, N] arrays (vmap over the env axis)."""
    return jax.vmap(estimator, in_axes=1, out_axes=1)


_DISCOUNTING = "option1: {} | option2: {}"
_BASELINE_HELP = ("none | mean: minus the mean over the batch's episodes (000 eq. 3.1.11), biased by the factor "
                  "(1 - 1/N) | leave_one_out: minus the mean over the batch's other episodes, unbiased | value: minus "
                  "V(s_t), critic fitted to the reward-to-go (000 eq. 4.2.2) | {}")


def _monte_carlo_keys(option1: str, option2: str, baseline: str) -> dict[str, Key]:
    return {"estimator.discounting": Key("option1", one_of("option1", "option2"),
                                         _DISCOUNTING.format(option1, option2)),
            # optimal: total_return only, q_control_variate: reward_to_go only (checked with the
            # algorithm: rlcli.algos.reinforce.check)
            "estimator.baseline": Key("none", one_of(*BASELINES), _BASELINE_HELP.format(baseline)),
            "estimator.bootstrap_truncation": Key(
                False, boolean(), "at a time-limit truncation add gamma V(s') to Phi's return (a critic is then "
                                  "fitted); false: the truncation ends the return, the seed's finite-horizon objective "
                                  "(000 eq. 3.1.1), whatever the baseline")}


# the estimator= choices and their keys
CHOICES = {
    "gae": Choice("generalized advantage estimation (000 eq. 4.2.10)",
                  {"estimator.lambda": Key(0.95, in_unit_interval(), "lambda: 0 gives the TD error, 1 the "
                                                                     "Monte-Carlo advantage")}),
    "none": Choice("no advantage estimator: the off-policy algorithms (sac, offpolicy_ac) learn a Q critic from "
                   "replayed transitions instead (those algorithms select it)", {}),
    "nstep": Choice("n-step returns (000 eq. 4.2.8); n: null sums to the end of the rollout, as in A3C (001)",
                    {"estimator.n": Key(None, optional_int_at_least(1), "steps before bootstrapping; null: to the "
                                                                        "end of the rollout")}),
    "reward_to_go": Choice(
        "reward-to-go sum_{t'>=t} gamma^(t'-t) r_t' (causality, 000 eq. 3.1.10; discount 4.1.7/4.1.8)",
        _monte_carlo_keys("no factor before the sum (used in practice)",
                          "gamma^(t-t0) x the reward-to-go, discounting later decisions (000 eq. 4.1.8)",
                          "q_control_variate: minus Q_w(s_t,a_t) plus grad E_pi[Q_w(s_t,.)] (exact sum for discrete "
                          "actions, reparameterised for Gaussian ones), Q critic fitted to the reward-to-go with "
                          "weight algo.vf_coef (000 eq. 4.2.6; algo=reinforce) (optimal needs "
                          "estimator=total_return: 000 eq. 3.1.17 is defined for the whole-trajectory return)")),
    "td": Choice("one-step TD error as the advantage (000 eq. 4.1.4; 001 \"A2C\")", {}),
    "total_return": Choice(
        "whole-episode return R(tau) for every step (Alg. 15, 000 eq. 3.1.8; discounted: 4.1.7)",
        _monte_carlo_keys("R(tau) = sum_t r_t, undiscounted (3.1.8)", "sum_t gamma^(t-t0) r_t (000 eq. 4.1.7)",
                          "optimal: per-parameter b_k = E[g_k^2 R]/E[g_k^2] from per-episode gradients, "
                          "leave-one-out (000 eq. 3.1.17; algo=reinforce) (q_control_variate needs "
                          "estimator=reward_to_go)")),
}


def make_from_config(cfg, gamma: float) -> Estimator:
    """The estimator chosen by the `estimator=` config group."""
    if cfg.name == "gae":
        return make("gae", gamma, lam=cfg["lambda"])
    if cfg.name == "nstep":
        return make("nstep", gamma, n=cfg.n)
    if cfg.name in MONTE_CARLO:
        return make(cfg.name, gamma, discounting=cfg.discounting, baseline=cfg.baseline,
                    bootstrap_truncation=cfg.bootstrap_truncation)
    return make(cfg.name, gamma)
