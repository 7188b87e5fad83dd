"""Tests for rlcli.estimators (000 eq. 4.1.4, 4.1.6, 4.2.8, 4.2.10).

Conventions checked here (see the module docstring of rlcli.estimators):
* next_values[t] = V(s'_t), the value of the true next observation (the final observation at a
  time-limit truncation, not the reset one);
* terminated[t]: no bootstrap, and no return flows into the next episode;
* truncated[t]: bootstrap from next_values[t], and no return flows into the next episode;
* the end of the segment bootstraps from next_values[T-1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from rlcli import estimators

TOL = dict(rtol=1e-5, atol=1e-5)

# The hand-computed tests call the estimators eagerly; the randomized tests call them under
# jax.jit with static hyperparameters (as the training loop does), which also checks that they
# trace, and keeps the file fast by compiling each configuration once.
JIT_TD = jax.jit(estimators.td, static_argnames=("gamma",))
JIT_NSTEP = jax.jit(estimators.nstep, static_argnames=("gamma", "n"))
JIT_GAE = jax.jit(estimators.gae, static_argnames=("gamma", "lam"))
RLAX_GAE = jax.jit(rlax.truncated_generalized_advantage_estimation)
RLAX_NSTEP = jax.jit(rlax.n_step_bootstrapped_returns, static_argnames=("n",))


def _check(out, adv, tgt):
    got_adv, got_tgt = out
    np.testing.assert_allclose(np.asarray(got_adv), np.asarray(adv, np.float64), **TOL)
    np.testing.assert_allclose(np.asarray(got_tgt), np.asarray(tgt, np.float64), **TOL)


# ---- hand-computed single trajectory ---------------------------------------------------------
#
#   t            0     1     2     3     4     5
#   rewards      1     2     3     4     5     6
#   values V(s)  0.5   1.0   1.5   2.0   2.5   3.0
#   terminated   F     T     F     F     F     F     (episode ends after step 1; s_2 is a reset)
#   truncated    F     F     F     F     T     F     (time limit after step 4; s_5 is a reset)
#   next_values  1.0   7.0   2.0   2.5   10.0  4.0
#
# next_values[0] = V(s_1) = values[1], next_values[2] = values[3], next_values[3] = values[4];
# next_values[1] = 7.0 is the value of a terminal state and must be ignored;
# next_values[4] = 10.0 is V(final observation) at the truncation, deliberately != values[5] = 3.0;
# next_values[5] = 4.0 is the end-of-segment bootstrap.
# gamma = 0.5, lambda = 0.5 (gamma * lambda = 0.25).

GAMMA = 0.5
REWARDS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32)
VALUES = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], np.float32)
NEXT_VALUES = np.array([1.0, 7.0, 2.0, 2.5, 10.0, 4.0], np.float32)
TERMINATED = np.array([False, True, False, False, False, False])
TRUNCATED = np.array([False, False, False, False, True, False])
HAND = (REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED)


def test_td_hand_computed():
    # y_t = r_t + gamma * (1 - terminated_t) * next_values_t
    # y0 = 1 + 0.5 * 1.0  = 1.5    A0 = 1.5 - 0.5  = 1.0
    # y1 = 2 + 0 (terminal; 7.0 ignored) = 2.0    A1 = 2.0 - 1.0 = 1.0
    # y2 = 3 + 0.5 * 2.0  = 4.0    A2 = 4.0 - 1.5  = 2.5
    # y3 = 4 + 0.5 * 2.5  = 5.25   A3 = 5.25 - 2.0 = 3.25
    # y4 = 5 + 0.5 * 10.0 = 10.0   A4 = 10.0 - 2.5 = 7.5  (final-obs value, not V(s_5) = 3.0)
    # y5 = 6 + 0.5 * 4.0  = 8.0    A5 = 8.0 - 3.0  = 5.0  (end-of-segment bootstrap)
    out = estimators.td(*HAND, gamma=GAMMA)
    _check(out, [1.0, 1.0, 2.5, 3.25, 7.5, 5.0], [1.5, 2.0, 4.0, 5.25, 10.0, 8.0])


def test_nstep_n2_hand_computed():
    # y0 = r0 + g r1, step 1 terminates (no bootstrap)  = 1 + 0.5*2            = 2.0   A0 = 1.5
    #      (bootstrapping the terminal 7.0 would add 0.25*7)
    # y1 = r1, terminal                                  = 2.0                  A1 = 1.0
    #      (leaking across the termination: 2 + 0.5*3 + 0.25*2.0 = 4.0)
    # y2 = r2 + g r3 + g^2 nv3 = 3 + 0.5*4 + 0.25*2.5    = 5.625                A2 = 4.125
    # y3 = r3 + g r4 + g^2 nv4 = 4 + 0.5*5 + 0.25*10.0   = 9.0                  A3 = 7.0
    # y4 = r4 + g nv4 (truncated: stop, bootstrap the final obs) = 5 + 0.5*10 = 10.0   A4 = 7.5
    #      (leaking across the truncation: 5 + 0.5*6 + 0.25*4 = 9.0)
    # y5 = r5 + g nv5 (end of segment) = 6 + 0.5*4       = 8.0                  A5 = 5.0
    out = estimators.nstep(*HAND, gamma=GAMMA, n=2)
    _check(out, [1.5, 1.0, 4.125, 7.0, 7.5, 5.0], [2.0, 2.0, 5.625, 9.0, 10.0, 8.0])


def test_nstep_full_hand_computed():
    # n=None: sum to the end of the episode or of the segment.
    # y0 = 1 + 0.5*2 (terminated at 1)                      = 2.0    A0 = 1.5
    # y1 = 2                                                 = 2.0    A1 = 1.0
    # y2 = 3 + 0.5*4 + 0.25*5 + 0.125*10.0 (truncated at 4)  = 7.5    A2 = 6.0
    #      (leak: 3 + 2 + 1.25 + 0.125*6 + 0.0625*4 = 7.25)
    # y3 = 4 + 0.5*5 + 0.25*10.0                             = 9.0    A3 = 7.0
    # y4 = 5 + 0.5*10.0                                      = 10.0   A4 = 7.5
    # y5 = 6 + 0.5*4.0                                       = 8.0    A5 = 5.0
    out = estimators.nstep(*HAND, gamma=GAMMA, n=None)
    _check(out, [1.5, 1.0, 6.0, 7.0, 7.5, 5.0], [2.0, 2.0, 7.5, 9.0, 10.0, 8.0])


def test_gae_hand_computed():
    # deltas (TD errors above) = [1.0, 1.0, 2.5, 3.25, 7.5, 5.0]
    # A_t = delta_t + gamma*lam * (1 - done_t) * A_{t+1}, gamma*lam = 0.25, done = term | trunc
    # A5 = 5.0
    # A4 = 7.5                          (truncated: nothing flows back; leak -> 7.5 + 0.25*5)
    # A3 = 3.25 + 0.25*7.5    = 5.125
    # A2 = 2.5  + 0.25*5.125  = 3.78125
    # A1 = 1.0                          (terminated: leak -> 1.0 + 0.25*3.78125)
    # A0 = 1.0  + 0.25*1.0    = 1.25
    # targets = A + V = [1.75, 2.0, 5.28125, 7.125, 10.0, 8.0]
    out = estimators.gae(*HAND, gamma=GAMMA, lam=0.5)
    _check(out, [1.25, 1.0, 3.78125, 5.125, 7.5, 5.0], [1.75, 2.0, 5.28125, 7.125, 10.0, 8.0])


def test_truncation_uses_final_observation_value_and_does_not_leak():
    # A trajectory where leaking across the truncation and using V(reset obs) both change the
    # answer.  T=3, gamma=0.5, truncated after step 0, no termination.
    #   rewards [1, 10, 100], values [0, 3, 0], next_values [2 (final obs), 0, 4]
    r = np.array([1.0, 10.0, 100.0], np.float32)
    v = np.array([0.0, 3.0, 0.0], np.float32)
    nv = np.array([2.0, 0.0, 4.0], np.float32)
    term = np.array([False, False, False])
    trunc = np.array([True, False, False])
    # td / nstep(any n) at t=0: y0 = 1 + 0.5*2 = 2.0 (leak: 1 + 0.5*10 + ...; V(reset)=3: 2.5)
    # t=1: n=2 / None: y1 = 10 + 0.5*100 + 0.25*4 = 61.0;  n=1: y1 = 10 + 0.5*0 = 10.0
    # t=2: y2 = 100 + 0.5*4 = 102.0
    _check(estimators.td(r, v, nv, term, trunc, gamma=0.5), [2.0, 7.0, 102.0], [2.0, 10.0, 102.0])
    for n in (2, 3, None):
        _check(
            estimators.nstep(r, v, nv, term, trunc, gamma=0.5, n=n),
            [2.0, 58.0, 102.0],
            [2.0, 61.0, 102.0],
        )
    # gae lam=1: deltas = [2 - 0, 10 + 0 - 3, 102 - 0] = [2, 7, 102]
    # A2 = 102, A1 = 7 + 0.5*102 = 58, A0 = 2 (cut at the truncation)
    _check(
        estimators.gae(r, v, nv, term, trunc, gamma=0.5, lam=1.0),
        [2.0, 58.0, 102.0],
        [2.0, 61.0, 102.0],
    )


# ---- terminated and truncated at the same step -----------------------------------------------


def test_terminated_wins_over_truncated():
    # r = [1, 2, 3], V = [0.5, 1.0, 1.5], nv = [1.0, 9.0, 2.0], gamma = 0.5,
    # step 1 is both terminated and truncated -> treated as terminal (no bootstrap from 9.0).
    r = np.array([1.0, 2.0, 3.0], np.float32)
    v = np.array([0.5, 1.0, 1.5], np.float32)
    nv = np.array([1.0, 9.0, 2.0], np.float32)
    both = np.array([False, True, False])
    args = (r, v, nv, both, both)
    # td: y = [1 + 0.5*1, 2 + 0, 3 + 0.5*2] = [1.5, 2.0, 4.0]  (truncation winning: y1 = 6.5)
    _check(estimators.td(*args, gamma=0.5), [1.0, 1.0, 2.5], [1.5, 2.0, 4.0])
    # nstep n=None: y0 = 1 + 0.5*2 = 2.0, y1 = 2.0, y2 = 4.0  (truncation winning: y0 = 4.25)
    _check(estimators.nstep(*args, gamma=0.5, n=None), [1.5, 1.0, 2.5], [2.0, 2.0, 4.0])
    _check(estimators.nstep(*args, gamma=0.5, n=2), [1.5, 1.0, 2.5], [2.0, 2.0, 4.0])
    # gae lam=0.5: deltas [1.0, 1.0, 2.5]; A2 = 2.5, A1 = 1.0, A0 = 1 + 0.25*1 = 1.25
    _check(estimators.gae(*args, gamma=0.5, lam=0.5), [1.25, 1.0, 2.5], [1.75, 2.0, 4.0])


# ---- independent pure-Python references ------------------------------------------------------


def ref_td(r, v, nv, term, trunc, gamma):
    """000 eq. 4.1.4 with the discount of 4.1.6: y_t = r_t + gamma * V(s'_t), V(terminal) = 0."""
    T = len(r)
    y = [float(r[t]) + (0.0 if term[t] else gamma * float(nv[t])) for t in range(T)]
    return np.array(y) - v, np.array(y)


def ref_nstep(r, v, nv, term, trunc, gamma, n):
    """000 eq. 4.2.8 with n rewards, cut at the end of the episode or of the segment."""
    T = len(r)
    n = T if n is None else n
    y = np.zeros(T)
    for t in range(T):
        g, disc = 0.0, 1.0
        for k in range(n):
            i = t + k
            g += disc * float(r[i])
            disc *= gamma
            if term[i]:
                break  # terminal: V = 0
            if trunc[i] or i == T - 1 or k == n - 1:
                g += disc * float(nv[i])
                break
        y[t] = g
    return y - v, y


def ref_gae(r, v, nv, term, trunc, gamma, lam):
    """000 eq. 4.2.10 as a forward sum, cut at the end of the episode or of the segment."""
    T = len(r)
    delta = [
        float(r[t]) + (0.0 if term[t] else gamma * float(nv[t])) - float(v[t]) for t in range(T)
    ]
    adv = np.zeros(T)
    for t in range(T):
        total, weight = 0.0, 1.0
        for tp in range(t, T):
            total += weight * delta[tp]
            if term[tp] or trunc[tp]:
                break
            weight *= gamma * lam
        adv[t] = total
    return adv, adv + np.asarray(v, np.float64)


def random_trajectory(seed, T=16, p=0.15):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=T).astype(np.float32)
    v = rng.normal(size=T).astype(np.float32)
    term = rng.random(T) < p
    trunc = rng.random(T) < p
    # next_values[t] = values[t+1] inside an episode; at a truncation the final observation's
    # value (distinct from the reset observation's values[t+1]); at a termination an arbitrary
    # number that must be ignored; at the end of the segment the bootstrap value.
    nv = np.empty(T, np.float32)
    nv[:-1] = v[1:]
    nv[-1] = rng.normal()
    boundary = term | trunc
    nv[boundary] = rng.normal(size=int(boundary.sum())).astype(np.float32) + 5.0
    return r, v, nv, term, trunc


SEEDS = range(6)


def test_random_trajectories_have_boundaries():
    # Guard: the random fixtures below actually exercise both kinds of boundary.
    trajs = [random_trajectory(s) for s in SEEDS]
    assert sum(t[3].sum() for t in trajs) > 0
    assert sum(t[4].sum() for t in trajs) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_td_matches_reference(seed):
    traj = random_trajectory(seed)
    _check(JIT_TD(*traj, gamma=0.99), *ref_td(*traj, 0.99))


@pytest.mark.parametrize("n", [1, 3, None])
@pytest.mark.parametrize("seed", SEEDS)
def test_nstep_matches_reference(seed, n):
    traj = random_trajectory(seed)
    _check(JIT_NSTEP(*traj, gamma=0.99, n=n), *ref_nstep(*traj, 0.99, n))


def ref_nstep_formula(r, v, nv, term, trunc, gamma, n):
    """000 eq. 4.2.8 written from the formula, independently of `ref_nstep`:
    y_t = sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - terminated_{t+m-1}) V(s'_{t+m-1}), where m
    is n cut to the first episode end (terminated or truncated) at or after t, and to the end
    of the segment. float64 throughout."""
    T = len(r)
    horizon = T if n is None else n
    y = np.zeros(T)
    for t in range(T):
        end = t  # the last step of the window: the first of t+horizon-1, an episode end, T-1
        while end < min(t + horizon, T) - 1 and not (term[end] or trunc[end]):
            end += 1
        m = end - t + 1
        y[t] = sum(gamma**k * float(r[t + k]) for k in range(m))
        y[t] += gamma**m * (0.0 if term[end] else float(nv[end]))
    return y - np.asarray(v, np.float64), y


@pytest.mark.parametrize("n", [1, 2, 5, 31, 32, 100, None])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.3])
def test_nstep_matches_formula(n, p):
    # T=32, several boundary densities (none, a few, many), n=1, n<T, n=T-1, n=T, n>T, None.
    traj = random_trajectory(2, T=32, p=p)
    if p > 0:
        assert traj[3].any() and traj[4].any()
    for gamma in (0.9, 1.0):
        _check(JIT_NSTEP(*traj, gamma=gamma, n=n), *ref_nstep_formula(*traj, gamma, n))


def test_nstep_formula_reference_is_hand_checked():
    # the formula reference itself against the hand-computed numbers above
    _check(ref_nstep_formula(*HAND, GAMMA, 2), [1.5, 1.0, 4.125, 7.0, 7.5, 5.0],
           [2.0, 2.0, 5.625, 9.0, 10.0, 8.0])
    _check(ref_nstep_formula(*HAND, GAMMA, None), [1.5, 1.0, 6.0, 7.0, 7.5, 5.0],
           [2.0, 2.0, 7.5, 9.0, 10.0, 8.0])


def _eqn_count(jaxpr) -> int:
    """Equations of a jaxpr, those of its sub-jaxprs (scan, cond and while bodies) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _eqn_count(inner)
    return total


def _nstep_size(T, n):
    x, flags = jnp.zeros(T, jnp.float32), jnp.zeros(T, bool)
    closed = jax.make_jaxpr(lambda *a: estimators.nstep(*a, gamma=0.99, n=n))(x, x, x, flags, flags)
    return len(closed.jaxpr.eqns), _eqn_count(closed.jaxpr)


def test_nstep_trace_size_does_not_grow_with_T_or_n():
    # The traced program must not be unrolled over the rollout (n=None: n = T, quadratic) or
    # over n: its size is the same for T=100 and T=400, for n=5 and n=50, and stays within a
    # few times that of gae (one scan) for every n.
    sizes = {(T, n): _nstep_size(T, n) for T in (100, 400) for n in (5, 50, None)}
    x, flags = jnp.zeros(400), jnp.zeros(400, bool)
    gae_top = len(jax.make_jaxpr(lambda *a: estimators.gae(*a, gamma=0.99, lam=0.95))(
        x, x, x, flags, flags).jaxpr.eqns)
    for n in (5, 50, None):
        (top_100, all_100), (top_400, all_400) = sizes[100, n], sizes[400, n]
        assert top_400 <= top_100 + 2 and all_400 <= all_100 + 2, sizes
        assert top_400 <= 3 * gae_top and all_400 <= 100, (sizes, gae_top)
    for T in (100, 400):
        (top_5, all_5), (top_50, all_50) = sizes[T, 5], sizes[T, 50]
        assert top_50 <= top_5 + 2 and all_50 <= all_5 + 2, sizes


@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_reference(seed, lam):
    traj = random_trajectory(seed)
    _check(JIT_GAE(*traj, gamma=0.99, lam=lam), *ref_gae(*traj, 0.99, lam))


def _random_batch(seed, N=5, T=16):
    cols = [random_trajectory(1000 * seed + j, T=T) for j in range(N)]
    return tuple(np.stack([c[i] for c in cols], axis=1) for i in range(5)), cols


@pytest.mark.parametrize(
    "name, hyper, ref",
    [
        ("td", {}, lambda traj: ref_td(*traj, 0.99)),
        ("nstep", {"n": 1}, lambda traj: ref_nstep(*traj, 0.99, 1)),
        ("nstep", {"n": 3}, lambda traj: ref_nstep(*traj, 0.99, 3)),
        ("nstep", {"n": None}, lambda traj: ref_nstep(*traj, 0.99, None)),
        ("gae", {"lam": 0.0}, lambda traj: ref_gae(*traj, 0.99, 0.0)),
        ("gae", {"lam": 0.9}, lambda traj: ref_gae(*traj, 0.99, 0.9)),
        ("gae", {"lam": 1.0}, lambda traj: ref_gae(*traj, 0.99, 1.0)),
    ],
)
def test_batched_matches_reference(name, hyper, ref):
    batch, cols = _random_batch(seed=3)
    assert batch[0].shape == (16, 5)
    adv, tgt = jax.jit(estimators.batched(estimators.make(name, gamma=0.99, **hyper)))(*batch)
    assert adv.shape == (16, 5) and tgt.shape == (16, 5)
    ref_adv = np.stack([ref(c)[0] for c in cols], axis=1)
    ref_tgt = np.stack([ref(c)[1] for c in cols], axis=1)
    _check((adv, tgt), ref_adv, ref_tgt)


# ---- identities ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_identities(seed):
    traj = random_trajectory(seed)
    td = JIT_TD(*traj, gamma=0.99)
    # gae(lambda=0) == td
    _check(JIT_GAE(*traj, gamma=0.99, lam=0.0), *td)
    # nstep(n=1) == td
    _check(JIT_NSTEP(*traj, gamma=0.99, n=1), *td)
    # gae(lambda=1) == nstep(n=None)
    _check(JIT_GAE(*traj, gamma=0.99, lam=1.0), *JIT_NSTEP(*traj, gamma=0.99, n=None))


# ---- rlax ------------------------------------------------------------------------------------


def _terminations_only(seed, T=16):
    """A trajectory without truncations, next_values[t] = values[t+1], plus the bootstrap."""
    rng = np.random.default_rng(100 + seed)
    r = rng.normal(size=T).astype(np.float32)
    v_ext = rng.normal(size=T + 1).astype(np.float32)  # V(s_0), ..., V(s_T)
    term = rng.random(T) < 0.15
    trunc = np.zeros(T, bool)
    return r, v_ext[:-1], v_ext[1:], term, trunc, v_ext


@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_gae_matches_rlax(seed, lam):
    r, v, nv, term, trunc, v_ext = _terminations_only(seed)
    assert term.any()
    discount = jnp.asarray(0.99 * (1.0 - term), jnp.float32)
    expected = RLAX_GAE(jnp.asarray(r), discount, jnp.float32(lam), jnp.asarray(v_ext))
    adv, tgt = JIT_GAE(r, v, nv, term, trunc, gamma=0.99, lam=lam)
    np.testing.assert_allclose(np.asarray(adv), np.asarray(expected, np.float64), **TOL)
    np.testing.assert_allclose(np.asarray(tgt), np.asarray(expected, np.float64) + v, **TOL)


# rlax.n_step_bootstrapped_returns(r_t, discount_t, v_t, n) computes
#     G_t = r_t + d_t (r_{t+1} + d_{t+1} (... (r_{t+n-1} + d_{t+n-1} v_{t+n-1})))
# with v_t the bootstrap values of the *next* states (times 1..T, i.e. our next_values) and,
# past the end of the sequence, padding r = 0, d = 1, v = v_t[-1], which is exactly a
# bootstrap from next_values[T-1] with gamma^m at the end of the segment.  With
# discount_t = gamma * (1 - terminated) a termination cuts the sum with no bootstrap, so the
# semantics coincide with ours when there is no truncation (rlax has no way to bootstrap at
# a cut without letting the return flow across it).  n=None corresponds to n=T.
@pytest.mark.parametrize("n", [1, 3, None])
@pytest.mark.parametrize("seed", range(4))
def test_nstep_matches_rlax(seed, n):
    r, v, nv, term, trunc, _ = _terminations_only(seed)
    T = len(r)
    discount = jnp.asarray(0.99 * (1.0 - term), jnp.float32)
    expected = RLAX_NSTEP(jnp.asarray(r), discount, jnp.asarray(nv), n=T if n is None else n)
    adv, tgt = JIT_NSTEP(r, v, nv, term, trunc, gamma=0.99, n=n)
    np.testing.assert_allclose(np.asarray(tgt), np.asarray(expected, np.float64), **TOL)
    np.testing.assert_allclose(np.asarray(adv), np.asarray(expected, np.float64) - v, **TOL)


# ---- make ------------------------------------------------------------------------------------


def test_make_binds_hyperparameters():
    traj = random_trajectory(7)
    fn = estimators.make("gae", gamma=0.9, lam=0.8)
    direct = estimators.gae(*traj, gamma=0.9, lam=0.8)
    _check(fn(*traj), *direct)
    _check(fn(*traj), *ref_gae(*traj, 0.9, 0.8))
    # and the binding matters: other hyperparameters give a different answer
    other = estimators.gae(*traj, gamma=0.99, lam=0.95)
    assert not np.allclose(np.asarray(fn(*traj)[0]), np.asarray(other[0]), rtol=1e-5, atol=1e-5)


def test_make_registry_names():
    traj = random_trajectory(8)
    _check(estimators.make("td", gamma=0.9)(*traj), *ref_td(*traj, 0.9))
    _check(estimators.make("nstep", gamma=0.9, n=4)(*traj), *ref_nstep(*traj, 0.9, 4))
