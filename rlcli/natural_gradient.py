"""Natural-gradient machinery for TRPO and NPG (Schulman et al. 2015, "Trust Region Policy
Optimization", §6 and Appendix C), as pure functions over pytrees of parameters.

The policy step maximises the importance-sampled surrogate of 000 eq. 3.3.2,

    L(theta') = mean_i [pi_theta'(a_i|s_i) / pi_theta(a_i|s_i) A_i],

subject to the trust region  mean_i KL(pi_theta(.|s_i) || pi_theta'(.|s_i)) <= delta.
Linearising L and taking the KL to second order, whose Hessian at theta' = theta is the
Fisher information F, the step is along s = F^{-1} g (g = grad L), found by conjugate gradient
from Fisher-vector products only (F is never formed), and scaled to the boundary of the
quadratic trust region: beta = sqrt(2 delta / s^T F s). TRPO then backtracks along that step
until the exact KL and surrogate are acceptable.

Everything uses `jax.lax` loops of fixed length, so it runs inside jit, vmap (over seeds), scan
and checkify (`debug.nan_check`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def tree_vdot(a, b) -> jax.Array:
    """sum of the elementwise products over all leaves: <a, b>."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def conjugate_gradient(matvec: Callable, b, iters: int, residual_tol: float = 1e-10):
    """Solve A x = b for a symmetric positive-definite A given only v -> A v, over pytrees
    (Hestenes-Stiefel conjugate gradient from x_0 = 0; TRPO Appendix C). Runs `iters`
    iterations; once the squared residual norm r^T r is below residual_tol the rest leave x
    unchanged. (A fixed trip count rather than a while loop: jax's checkify, used by
    `debug.nan_check`, cannot transform a while loop batched by vmap.)"""
    flat_b, unravel = ravel_pytree(b)

    def body(_, state):
        x, r, p, rdotr = state
        active = rdotr >= residual_tol
        ap = ravel_pytree(matvec(unravel(p)))[0]
        pap = jnp.vdot(p, ap)
        alpha = jnp.where(active & (pap > 0), rdotr / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        new_rdotr = jnp.vdot(r, r)
        p = jnp.where(active, r + (new_rdotr / jnp.where(rdotr > 0, rdotr, 1.0)) * p, p)
        return x, r, p, jnp.where(active, new_rdotr, rdotr)

    init = (jnp.zeros_like(flat_b), flat_b, flat_b, jnp.vdot(flat_b, flat_b))
    return unravel(jax.lax.fori_loop(0, iters, body, init)[0])


def mean_kl(kl: Callable, policy: Callable, old_dist_params) -> Callable:
    """theta -> mean_i KL(pi_old(.|s_i) || pi_theta(.|s_i)), the batch-mean KL of the trust
    region (TRPO eq. 12), where `policy(theta)` gives the distribution parameters on the batch
    and the old ones are held constant (stop-gradient)."""
    old = jax.lax.stop_gradient(old_dist_params)
    return lambda params: jnp.mean(kl(old, policy(params)))


def fisher_vector_product(kl_fn: Callable, params, damping: float) -> Callable:
    """v -> (F + damping I) v, with F = the Hessian of the mean KL `kl_fn` (see `mean_kl`) at
    `params`, the old policy's parameters, where it equals the Fisher information matrix
    (TRPO Appendix C.1). A forward-mode derivative of the gradient (jvp of grad), linearised
    once so each product costs one pass; the damping keeps conjugate gradient well posed
    where the sampled F is singular."""
    _, hvp = jax.linearize(jax.grad(kl_fn), params)
    return lambda v: jax.tree.map(lambda h, x: h + damping * x, hvp(v), v)


class NaturalStep(NamedTuple):
    step: object  # beta * s, the full step on the trust-region boundary
    direction: object  # s = (F + damping I)^-1 g
    scale: jax.Array  # beta = sqrt(2 delta / s^T F s)
    expected_improvement: jax.Array  # g^T (beta s), the linear model's surrogate gain


def natural_step(grad, fvp: Callable, max_kl: float, cg_iters: int, residual_tol: float = 1e-10) -> NaturalStep:
    """The natural-gradient step of size delta = max_kl: s = F^-1 g by conjugate gradient and
    beta = sqrt(2 delta / s^T F s), so that the quadratic model of the KL, 1/2 (beta s)^T F
    (beta s), equals delta (TRPO Appendix C). F is the matrix of `fvp`, damping included."""
    direction = conjugate_gradient(fvp, grad, cg_iters, residual_tol)
    shs = tree_vdot(direction, fvp(direction))
    scale = jnp.sqrt(2.0 * max_kl / jnp.maximum(shs, 1e-12))
    step = jax.tree.map(lambda s: scale * s, direction)
    return NaturalStep(step, direction, scale, tree_vdot(grad, step))


class LineSearch(NamedTuple):
    params: object  # the accepted parameters, or the old ones when none was accepted
    accepted: jax.Array  # bool
    backtracks: jax.Array  # int: shrinks before acceptance (= iters when none was accepted)
    fraction: jax.Array  # coef^backtracks where accepted, else 0: the fraction of the step taken


def backtracking_line_search(evaluate: Callable, params, step, max_kl: float, iters: int,
                             coef: float) -> LineSearch:
    """Try params + coef^j step for j = 0, 1, ..., iters - 1 and accept the first candidate
    whose exact mean KL is <= max_kl and whose surrogate improves on the old parameters'
    (TRPO §6, "line search"); keep the old parameters if none does.

    `evaluate(candidate) -> (improvement, kl)`: surrogate(candidate) - surrogate(params) and
    the mean KL from the old policy. A non-finite improvement or KL is rejected. Every
    candidate is evaluated (a scan, not a while loop, for the reason in `conjugate_gradient`;
    under vmap a while loop would run every lane to the slowest one anyway)."""

    def candidate(j):
        return jax.tree.map(lambda p, s: p + coef ** j.astype(jnp.float32) * s, params, step)

    def body(carry, j):
        accepted, first = carry
        improvement, kl = evaluate(candidate(j))
        ok = (kl <= max_kl) & (improvement > 0.0)
        return (accepted | ok, jnp.where(accepted | ~ok, first, j)), None

    init = (jnp.zeros((), bool), jnp.asarray(iters, jnp.int32))
    (accepted, first), _ = jax.lax.scan(body, init, jnp.arange(iters, dtype=jnp.int32))
    new = jax.tree.map(lambda c, p: jnp.where(accepted, c, p), candidate(first), params)
    fraction = jnp.where(accepted, coef ** first.astype(jnp.float32), 0.0)
    return LineSearch(new, accepted, first, fraction)
