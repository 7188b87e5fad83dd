"""NPG: the natural policy gradient (Kakade 2001), TRPO's step without the line search.

The policy moves along the natural gradient F^-1 grad L of the importance-sampled surrogate
(000 eq. 3.3.2; its gamma^(t - t0) weight kept with `algo.discount_surrogate: true`, as in TRPO),
scaled to sqrt(2 delta / s^T F s) so that the quadratic model of the mean KL equals delta =
`algo.max_kl`; the critic is fitted as in TRPO. See `rlcli.algos.trpo`.
"""

from __future__ import annotations

from rlcli.algos import trpo

KEYS = trpo.NATURAL_STEP_KEYS
ESTIMATORS = trpo.ESTIMATORS
ESTIMATOR = trpo.ESTIMATOR
ACTION_SPACES = trpo.ACTION_SPACES
check = trpo.check


def make(spec, cfg, num_updates: int):
    return trpo.make(spec, cfg, num_updates, line_search=False)
