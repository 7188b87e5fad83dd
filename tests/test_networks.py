"""The state-dependent std of the Gaussian policy (`network.state_dependent_std`, 001: a =
mu_theta(s) + sigma_phi(s) z): the log-probability against scipy, the head's initialisation and
output against a NumPy forward pass, TRPO's policy/critic split, the refusal for discrete
actions, and one Pendulum update of every on-policy algorithm; the orthogonal initialisation
with its gains, the initial std, the Q ensemble, SAC's squashed-Gaussian actor and the
discrete actors against NumPy forward passes and scipy."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import compose
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


# each on-policy algorithm's smallest Pendulum-v1 configuration (ppo and a2c: both designs)
RUNS = {
    "ppo": ["num_envs=2", "algo.num_steps=64", "algo.num_minibatches=2"],
    "ppo-shared": ["network.shared=true", "num_envs=2", "algo.num_steps=64", "algo.num_minibatches=2"],
    "a2c-shared": ["network.shared=true", "num_envs=2", "algo.num_steps=8"],
    "a3c": ["num_envs=4", "algo.num_workers=2", "algo.num_steps=8"],  # shared by default
    "trpo": ["num_envs=2", "algo.num_steps=64", "algo.vf_minibatches=2"],
    "npg": ["num_envs=2", "algo.num_steps=64", "algo.vf_minibatches=2"],
    "reinforce": ["num_envs=2", "algo.num_steps=200"],
    "is_pg": ["num_envs=2", "algo.num_steps=200"],
    "batch_ac": ["num_envs=2", "algo.num_steps=32"],
    "online_ac": ["num_envs=2"],
    "q_ac": ["num_envs=2", "algo.num_steps=8"],
}


@pytest.mark.extended
@pytest.mark.parametrize("case", list(RUNS))
def test_every_on_policy_algorithm_learns_a_state_dependent_std(case):
    """One update of each on-policy algorithm on Pendulum-v1 with
    network.state_dependent_std=true, through its training loop: the metrics are finite, and
    the policy's log-std head (initialised with a zero kernel) has moved, so the std differs
    between states; there is no state-free log-std parameter. (For batch_ac, online_ac and q_ac
    this is also the test that their losses take continuous actions.)"""
    overrides = [f"algo={case.split('-')[0]}", "env=Pendulum-v1", "network.state_dependent_std=true",
                 "total_steps=100000", *RUNS[case]]
    parts = training.setup(compose(["logger=quiet", *overrides]))
    loop = training.make_loop(parts)
    try:
        state, out = loop.chunk(loop.init(), 1)
        learner = loop.checkpoint_state(state)["learner"]
    finally:
        loop.close()
    metrics = {k: np.asarray(v) for k, v in out.metrics.items() if k.startswith(("loss/", "policy/"))}
    assert metrics and all(np.isfinite(v).all() for v in metrics.values()), metrics
    params = jax.tree.map(lambda x: np.asarray(x)[0], learner.params)  # seed 0
    head, = subtrees(params, "log_std_head")
    assert np.abs(head["kernel"]).max() > 0 and not subtrees(params, "log_std")
    network = networks.make(parts.cfg.network, parts.spec)
    variables, = actor_critic_params(params)
    (_, log_std), _ = network.apply(variables, RNG.normal(size=(2, 3)).astype(np.float32))
    assert log_std.shape == (2, 1) and log_std[0, 0] != log_std[1, 0]


# ---- initialisation and the off-policy modules ------------------------------------------------------


def assert_orthogonal(kernel, gain, name):
    """An orthogonal [in, out] kernel scaled by `gain`: W^T W = gain^2 I (in >= out, orthonormal
    columns) or W W^T = gain^2 I (in < out, orthonormal rows)."""
    w = np.asarray(kernel, np.float64)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    np.testing.assert_allclose(gram, gain ** 2 * np.eye(gram.shape[0]), rtol=0, atol=1e-5 * max(gain ** 2, 1e-2),
                               err_msg=name)


def assert_zero_biases(tree):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jax.tree_util.keystr(path).endswith("['bias']"):
            np.testing.assert_array_equal(leaf, np.zeros_like(leaf), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_orthogonal_initialisation_with_the_stated_gains(shared):
    """The module docstring's gains: sqrt(2) for hidden layers, 0.01 for the policy head, 1 for
    the value head; biases 0; hidden sizes (7, 4) from 3 inputs cover both shapes of kernel
    (3 x 7 wide, 7 x 4 tall)."""
    network = networks.ActorCritic(num_actions=2, discrete=True, hidden_sizes=(7, 4), shared=shared)
    params = network.init(jax.random.PRNGKey(0), OBS)["params"]
    torsos = ["torso"] if shared else ["actor_torso", "critic_torso"]
    assert set(params) == {*torsos, "Dense_0", "Dense_1"}
    for torso in torsos:
        assert params[torso]["Dense_0"]["kernel"].shape == (3, 7)
        for layer in ("Dense_0", "Dense_1"):
            assert_orthogonal(params[torso][layer]["kernel"], math.sqrt(2.0), f"{torso}/{layer}")
    assert params["Dense_0"]["kernel"].shape == (4, 1)  # the value head
    assert_orthogonal(params["Dense_0"]["kernel"], 1.0, "value head")
    assert params["Dense_1"]["kernel"].shape == (4, 2)  # the policy head
    assert_orthogonal(params["Dense_1"]["kernel"], 0.01, "policy head")
    assert_zero_biases(params)
    if not shared:  # two networks: their own draws
        assert not np.allclose(params["actor_torso"]["Dense_0"]["kernel"], params["critic_torso"]["Dense_0"]["kernel"])


@pytest.mark.parametrize("log_std_init", [0.0, -1.3])
def test_initial_std_is_exp_log_std_init(log_std_init):
    """The state-independent default: the Gaussian's std is exp(log_std_init) in every state,
    the scale of a sample's deviation from the mean; its mean starts near 0 (policy head gain
    0.01)."""
    network = networks.ActorCritic(num_actions=2, discrete=False, hidden_sizes=(5,), log_std_init=log_std_init)
    params = network.init(jax.random.PRNGKey(0), OBS)
    (mean, log_std), value = network.apply(params, OBS)
    assert mean.shape == (6, 2) and log_std.shape == (2,) and value.shape == (6,)
    np.testing.assert_allclose(np.exp(np.broadcast_to(log_std, mean.shape)), np.full((6, 2), math.exp(log_std_init)),
                               rtol=1e-6)
    key = jax.random.PRNGKey(1)
    z = np.asarray(jax.random.normal(key, mean.shape))
    sample = distributions.gaussian_sample(key, (mean, log_std))
    np.testing.assert_allclose(sample - mean, math.exp(log_std_init) * z, rtol=1e-5, atol=1e-6)
    # |mean| <= 0.01 ||features||, features = tanh(.) in [-1, 1]^5
    assert float(jnp.abs(mean).max()) <= 0.01 * math.sqrt(5) + 1e-6


def _numpy_mlp(layers, x, activation=np.tanh):
    for layer in layers[:-1]:
        x = activation(x @ np.float64(layer["kernel"]) + np.float64(layer["bias"]))
    return x @ np.float64(layers[-1]["kernel"]) + np.float64(layers[-1]["bias"])


def relu(x):
    return np.maximum(x, 0.0)


@pytest.mark.parametrize("discrete", [False, True], ids=["box", "discrete"])
def test_q_ensemble_members_are_independent_networks(discrete):
    """QEnsemble(num_critics=3): each member has its own parameters (stacked on a leading axis,
    drawn separately, each kernel orthogonal with gain sqrt(2), head 1), and member i's output
    is the one-hidden-layer ReLU network of its slice, written in NumPy (the Box action
    concatenated to the observation); SAC's clipped double-Q takes their minimum."""
    ensemble = networks.QEnsemble(num_actions=2, discrete=discrete, hidden_sizes=(6,), activation="relu",
                                  num_critics=3)
    action = RNG.uniform(-1, 1, size=(6, 2)).astype(np.float32)
    params = ensemble.init(jax.random.PRNGKey(0), OBS, None if discrete else action)
    q = np.asarray(ensemble.apply(params, OBS, None if discrete else action))
    assert q.shape == ((3, 6, 2) if discrete else (3, 6))
    p = params["params"]["q"]
    x = OBS if discrete else np.concatenate([OBS, action], axis=-1)
    for i in range(3):
        hidden = {k: v[i] for k, v in p["MLP_0"]["Dense_0"].items()}
        head = {k: v[i] for k, v in p["Dense_0"].items()}
        assert_orthogonal(hidden["kernel"], math.sqrt(2.0), f"member {i} hidden")
        assert_orthogonal(head["kernel"], 1.0, f"member {i} head")
        out = _numpy_mlp([hidden, head], np.float64(x), relu)
        np.testing.assert_allclose(q[i], out if discrete else out[:, 0], rtol=1e-5, atol=1e-5)
    kernels = np.asarray(p["MLP_0"]["Dense_0"]["kernel"])
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])
    assert np.all(q.min(axis=0) <= q) and np.any(q[0] != q.min(axis=0))
    assert_zero_biases(params)


def test_squashed_gaussian_actor_init_bounds_and_log_prob():
    """SAC's actor: hidden sqrt(2), mean and log-std heads 0.01, log-std bias log_std_init (so the
    initial log-std is log_std_init + f(s) K, within 0.01 ||f(s)|| of it); `make_act`'s actions
    lie within the env's bounds even for a mean far outside, and its log-prob is the Gaussian
    log-density of u = atanh(a / 2) (scipy) minus sum log(1 - tanh(u)^2) minus log of the half
    range (Pendulum: [-2, 2])."""
    from rlcli import envs
    from rlcli.algos import sac

    actor = networks.SquashedGaussianActor(1, (6,), "relu", log_std_init=-0.4)
    params = actor.init(jax.random.PRNGKey(0), OBS)
    p = params["params"]
    assert_orthogonal(p["MLP_0"]["Dense_0"]["kernel"], math.sqrt(2.0), "hidden")
    assert_orthogonal(p["Dense_0"]["kernel"], 0.01, "mean head")
    assert_orthogonal(p["Dense_1"]["kernel"], 0.01, "log-std head")
    np.testing.assert_array_equal(p["Dense_1"]["bias"], [np.float32(-0.4)])
    mean, log_std, features = actor.apply(params, OBS)
    f = relu(np.float64(OBS) @ np.float64(p["MLP_0"]["Dense_0"]["kernel"]))
    np.testing.assert_allclose(features, f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_std, -0.4 + f @ np.float64(p["Dense_1"]["kernel"]), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(np.asarray(log_std) + 0.4) <= 0.01 * np.linalg.norm(f, axis=-1, keepdims=True) + 1e-6)

    spec = envs.make_spec("Pendulum-v1", "jax")

    class Learner(NamedTuple):
        params: Any
        env_steps: Any
        noise: Any

    class Params(NamedTuple):
        actor: Any

    act = jax.jit(sac.make_act(spec, actor, learning_starts=0))
    obs = jnp.asarray(RNG.normal(size=(4000, 3)), jnp.float32)
    far = jax.tree.map(lambda x: x, params)
    far["params"]["Dense_0"]["bias"] = jnp.float32([6.0])  # tanh(u) rounds to 1 for most samples
    action, _ = act(Learner(Params(far), jnp.int32(0), None), obs, jax.random.PRNGKey(1))
    assert float(action.min()) >= -2.0 and float(action.max()) <= 2.0 and float(action.max()) == 2.0
    action, info = act(Learner(Params(params), jnp.int32(0), None), obs[:50], jax.random.PRNGKey(2))
    a = np.float64(action)
    assert np.all(np.abs(a) < 2.0)
    mean, log_std, _ = actor.apply(params, obs[:50])
    u = np.arctanh(a / 2.0)
    expected = (stats.norm.logpdf(u, np.float64(mean), np.exp(np.float64(log_std)))
                - np.log(1.0 - np.tanh(u) ** 2)).sum(-1) - math.log(2.0)
    np.testing.assert_allclose(info.log_prob, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module", ["actor_critic", "discrete_actor"])
def test_discrete_actors_give_one_logit_per_action(module):
    """A Discrete space's policies: logits [B, A] from the policy head (gain 0.01), whose softmax
    sums to 1 in every state, the logits of a NumPy forward pass."""
    if module == "actor_critic":
        net = networks.ActorCritic(num_actions=4, discrete=True, hidden_sizes=(5,))
        params = net.init(jax.random.PRNGKey(0), OBS)
        logits, value = net.apply(params, OBS)
        assert value.shape == (6,)
        p = params["params"]
        layers, act = [p["actor_torso"]["Dense_0"], p["Dense_1"]], np.tanh
    else:
        net = networks.DiscreteActor(num_actions=4, hidden_sizes=(5,))
        params = net.init(jax.random.PRNGKey(0), OBS)
        logits = net.apply(params, OBS)
        p = params["params"]
        layers, act = [p["MLP_0"]["Dense_0"], p["Dense_0"]], relu
    assert logits.shape == (6, 4)
    np.testing.assert_allclose(logits, _numpy_mlp(layers, np.float64(OBS), act), rtol=1e-5, atol=1e-7)
    assert_orthogonal(layers[-1]["kernel"], 0.01, "policy head")
    probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
    np.testing.assert_allclose(probs.sum(-1), np.ones(6), rtol=1e-6)
    assert np.all(probs > 0)


def test_cnn_torso_is_a_same_convolution_then_the_mlp():
    """networks.CNN against scipy: each output channel the sum over input channels of
    scipy.signal.correlate(..., 'same') (SAME padding of a 3x3 kernel at stride 1), plus the
    bias, ReLU, flattened in (H, W, C) order, then the dense layer and ReLU."""
    import jax
    from scipy.signal import correlate

    from rlcli.networks import CNN

    x = np.random.default_rng(0).normal(size=(2, 6, 7, 4)).astype(np.float32)
    cnn = CNN(channels=(3,), kernel_size=3, stride=1, hidden_sizes=(5,), activation="relu")
    params = cnn.init(jax.random.PRNGKey(0), x)
    p = jax.tree.map(np.asarray, params)["params"]
    kernel, bias = p["Conv_0"]["kernel"], p["Conv_0"]["bias"] + 0.1
    params = {"params": {**p, "Conv_0": {"kernel": kernel, "bias": bias}}}
    conv = np.stack([[sum(correlate(x[b, :, :, c], kernel[:, :, c, o], mode="same") for c in range(4)) + bias[o]
                      for o in range(3)] for b in range(2)])  # [B, O, H, W]
    features = np.maximum(conv, 0).transpose(0, 2, 3, 1).reshape(2, -1)
    dense = p["MLP_0"]["Dense_0"]
    expected = np.maximum(features @ dense["kernel"] + dense["bias"], 0)
    np.testing.assert_allclose(np.asarray(cnn.apply(params, x)), expected, rtol=1e-5, atol=1e-5)
    assert kernel.shape == (3, 3, 4, 3)
