"""Online actor-critic: an update after every transition (000 Alg. 18, §4.4.2).

Take an action, get (s, a, s', r); update V_phi towards r + gamma V_phi(s') (000 eq. 4.1.6);
evaluate A = r + gamma V_phi(s') - V_phi(s) with the updated critic; step the actor on
grad log pi(a|s) A. With `num_envs` environments stepped together each update takes one
transition from each: the synchronous parallel online actor-critic of 000 §4.4.2. The update
is batch_ac's with one transition per env, one critic step and the bootstrapped target.
"""

from __future__ import annotations

from rlcli.algos import Algorithm, batch_ac
from rlcli.rules import Key, Rule

KEYS = {
    **{k: v for k, v in batch_ac.KEYS.items() if k not in ("algo.critic_target", "algo.critic_steps")},
    "algo.num_steps": Key(1, Rule(lambda v: v == 1 and not isinstance(v, bool),
                                  "1: Alg. 18 updates after every transition (num_envs sets the batch)", int),
                          "one transition per env per update (Alg. 18); only 1 is allowed"),
    "algo.learning_rate": batch_ac.KEYS["algo.learning_rate"]._replace(
        default=1.0e-3, help="both the critic's step and the actor's step"),
}
ESTIMATORS = ("td",)
ESTIMATOR = "td"
ACTION_SPACES = batch_ac.ACTION_SPACES


def make(spec, cfg, num_updates: int) -> Algorithm:
    return batch_ac.make_actor_critic(spec, cfg, num_updates, critic_target="bootstrap", critic_steps=1)
