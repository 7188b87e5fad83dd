"""The state-dependent std of the Gaussian policy (`network.state_dependent_std`, 001: a =
mu_theta(s) + sigma_phi(s) z): the log-probability against scipy, the head's initialisation and
output against a NumPy forward pass, TRPO's policy/critic split, the refusal for discrete
actions, and short Pendulum runs of every on-policy algorithm."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import compose, train
from rlcli import config, distributions, networks, train as training
from rlcli.algos import trpo

RNG = np.random.default_rng(0)
OBS = RNG.normal(size=(6, 3)).astype(np.float32)


def test_gaussian_with_per_state_std_matches_scipy():
    """log pi, entropy and KL with a log-std shaped like the mean ([B, D], one sigma per state
    and dimension) against scipy and the closed form of the KL of two normals."""
    mean = RNG.normal(size=(4, 2)).astype(np.float32)
    log_std = RNG.normal(scale=0.5, size=(4, 2)).astype(np.float32)
    action = RNG.normal(size=(4, 2)).astype(np.float32)
    std = np.exp(log_std.astype(np.float64))
    params = (jnp.asarray(mean), jnp.asarray(log_std))
    np.testing.assert_allclose(distributions.gaussian_log_prob(params, jnp.asarray(action)),
                               stats.norm.logpdf(action, mean, std).sum(axis=-1), rtol=1e-5)
    np.testing.assert_allclose(distributions.gaussian_entropy(params), stats.norm.entropy(mean, std).sum(axis=-1),
                               rtol=1e-5)
    mean_q, log_std_q = mean[::-1].copy(), log_std[::-1].copy()
    std_q = np.exp(log_std_q.astype(np.float64))
    kl = (np.log(std_q / std) + (std ** 2 + (mean - mean_q) ** 2) / (2 * std_q ** 2) - 0.5).sum(axis=-1)
    np.testing.assert_allclose(distributions.gaussian_kl(params, (jnp.asarray(mean_q), jnp.asarray(log_std_q))), kl,
                               rtol=1e-4, atol=1e-6)
    # a sample is mean + sigma(s) z with the z of a standard normal draw on the same key
    key = jax.random.PRNGKey(3)
    z = distributions.gaussian_sample(key, (jnp.zeros((4, 2)), jnp.zeros((4, 2))))
    np.testing.assert_allclose(distributions.gaussian_sample(key, params), mean + std * np.asarray(z), rtol=1e-5,
                               atol=1e-6)


def net(shared, state_dependent_std=True, log_std_init=-0.7):
    return networks.ActorCritic(num_actions=2, discrete=False, hidden_sizes=(5,), shared=shared,
                                log_std_init=log_std_init, state_dependent_std=state_dependent_std)


def torso_name(shared):
    return "torso" if shared else "actor_torso"


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_initial_log_std_is_log_std_init_in_every_state(shared):
    network = net(shared)
    params = network.init(jax.random.PRNGKey(0), OBS)
    (mean, log_std), value = network.apply(params, OBS)
    assert log_std.shape == mean.shape == (6, 2) and value.shape == (6,)
    np.testing.assert_array_equal(log_std, np.full((6, 2), np.float32(-0.7)))
    assert "log_std" not in params["params"] and set(params["params"]["log_std_head"]) == {"kernel", "bias"}
    # the default keeps the state-independent [D] vector
    default = net(shared, state_dependent_std=False).init(jax.random.PRNGKey(0), OBS)
    assert "log_std_head" not in default["params"] and default["params"]["log_std"].shape == (2,)


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_log_std_head_reads_the_actor_features(shared):
    """With a non-zero kernel, log sigma(s) = tanh(s W + b) K + c (one hidden layer, computed
    here in NumPy from the params) and differs between observations."""
    network = net(shared)
    params = network.init(jax.random.PRNGKey(0), OBS)
    kernel = RNG.normal(size=(5, 2)).astype(np.float32)
    params = jax.tree.map(lambda x: x, params)  # a copy to edit
    params["params"]["log_std_head"]["kernel"] = jnp.asarray(kernel)
    (_, log_std), _ = network.apply(params, OBS)
    layer = params["params"][torso_name(shared)]["Dense_0"]
    features = np.tanh(OBS.astype(np.float64) @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"]))
    np.testing.assert_allclose(log_std, features @ kernel - 0.7, rtol=1e-5, atol=1e-5)
    assert not np.allclose(log_std[0], log_std[1])


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_a_gradient_step_makes_the_std_state_dependent(shared):
    """The zero kernel gets a gradient (the features are not zero): after one SGD step on the
    log-likelihood of some actions, two observations have different stds."""
    network = net(shared)
    dist = distributions.GAUSSIAN
    params = network.init(jax.random.PRNGKey(0), OBS)
    actions = jnp.asarray(RNG.normal(scale=2.0, size=(6, 2)), jnp.float32)
    grads = jax.grad(lambda p: -jnp.mean(dist.log_prob(network.apply(p, OBS)[0], actions)))(params)
    assert np.abs(np.asarray(grads["params"]["log_std_head"]["kernel"])).max() > 0
    stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    (_, log_std), _ = network.apply(stepped, OBS)
    assert not np.allclose(log_std[0], log_std[1])


def test_trpo_split_puts_the_log_std_head_on_the_policy_side():
    network = net(shared=False)
    params = network.init(jax.random.PRNGKey(0), OBS)
    policy_params, critic_params = trpo.split(params)
    assert "log_std_head" in policy_params["params"] and "log_std_head" not in critic_params["params"]
    assert set(critic_params["params"]) == {"critic_torso", "Dense_0"}
    assert trpo.merge(policy_params, critic_params) == params
    shift = lambda tree: jax.tree.map(lambda p: p + 0.3, tree)  # noqa: E731
    (mean, log_std), value = network.apply(params, OBS)
    (mean_c, log_std_c), value_c = network.apply(trpo.merge(policy_params, shift(critic_params)), OBS)
    (_, log_std_p), value_p = network.apply(trpo.merge(shift(policy_params), critic_params), OBS)
    np.testing.assert_array_equal(mean, mean_c)
    np.testing.assert_array_equal(log_std, log_std_c)
    np.testing.assert_array_equal(value, value_p)
    assert not np.allclose(value, value_c) and not np.allclose(log_std, log_std_p)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "trpo", "reinforce", "sac"])
def test_discrete_action_spaces_refuse_a_state_dependent_std(algo):
    with pytest.raises(config.ConfigError) as err:
        config.validate(compose([f"algo={algo}", "env=CartPole-v1", "network.state_dependent_std=true"]))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("network.state_dependent_std=true needs a continuous action space")
    assert "network.state_dependent_std=false" in message
    config.validate(compose([f"algo={algo}", "env=CartPole-v1"]))  # the default passes


def subtrees(tree, name):
    """Every subtree stored under the key `name` in nested dicts, tuples and NamedTuples."""
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == name] + [s for v in tree.values() for s in subtrees(v, name)]
    if isinstance(tree, (tuple, list)):
        return [s for v in tree for s in subtrees(v, name)]
    return []


def actor_critic_params(tree):
    """The flax variables {"params": ...} of the actor-critic inside an algorithm's params."""
    if isinstance(tree, dict) and "log_std_head" in tree.get("params", {}):
        return [tree]
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (tuple, list)) else ()
    return [found for child in children for found in actor_critic_params(child)]


# (algo, overrides): a few updates of each on-policy algorithm on Pendulum-v1, both designs
RUNS = {
    "ppo": ["num_envs=2", "algo.num_steps=64", "algo.num_minibatches=2", "total_steps=512"],
    "ppo-shared": ["network.shared=true", "num_envs=2", "algo.num_steps=64", "algo.num_minibatches=2",
                   "total_steps=512"],
    "a2c-shared": ["network.shared=true", "num_envs=2", "algo.num_steps=8", "total_steps=256"],
    "a3c": ["num_envs=4", "algo.num_workers=2", "algo.num_steps=8", "total_steps=256"],  # shared by default
    "trpo": ["num_envs=2", "algo.num_steps=64", "algo.vf_minibatches=2", "total_steps=512"],
    "npg": ["num_envs=2", "algo.num_steps=64", "algo.vf_minibatches=2", "total_steps=512"],
    "reinforce": ["num_envs=2", "algo.num_steps=200", "total_steps=800"],
    "is_pg": ["num_envs=2", "algo.num_steps=200", "total_steps=800"],
    "batch_ac": ["num_envs=2", "algo.num_steps=32", "total_steps=256"],
    "online_ac": ["num_envs=2", "total_steps=64"],
    "q_ac": ["num_envs=2", "algo.num_steps=8", "total_steps=256"],
}


# ppo (two networks) and a2c (shared torso) in the quick tier; the rest with the slow tests
QUICK = ("ppo", "a2c-shared")


@pytest.mark.parametrize("case", [c if c in QUICK else pytest.param(c, marks=pytest.mark.slow) for c in RUNS])
def test_every_on_policy_algorithm_learns_a_state_dependent_std(tmp_path, case):
    """A short Pendulum-v1 run with network.state_dependent_std=true finishes with finite
    metrics, and its final policy's log-std head has moved off its zero kernel: the std differs
    between states."""
    overrides = [f"algo={case.split('-')[0]}", "env=Pendulum-v1", "network.state_dependent_std=true",
                 "eval_episodes=1", *RUNS[case]]
    summary, records = train(tmp_path, overrides)
    assert records and all(math.isfinite(v) for r in records for k, v in r.items()
                           if k.startswith(("loss/", "policy/")) and isinstance(v, float))
    assert math.isfinite(summary["final_eval_return_mean"])
    parts = training.setup(compose(["logger=quiet", *overrides]))
    loop = training.make_loop(parts)
    state, _ = training.restore_checkpoint(loop, tmp_path / "run" / "checkpoints")
    params = jax.tree.map(lambda x: np.asarray(x)[0], loop.checkpoint_state(state)["learner"].params)  # seed 0
    loop.close()
    head, = subtrees(params, "log_std_head")
    assert np.abs(head["kernel"]).max() > 0 and not subtrees(params, "log_std")
    network = networks.make(parts.cfg.network, parts.spec)
    variables, = actor_critic_params(params)
    (_, log_std), _ = network.apply(variables, RNG.normal(size=(2, 3)).astype(np.float32))
    assert log_std.shape == (2, 1) and log_std[0, 0] != log_std[1, 0]
