"""TRPO and NPG: conjugate gradient against numpy.linalg.solve, Fisher-vector products against
a dense Fisher matrix, the line search on a hand-computed quadratic, the trust region on a fixed
batch, CartPole learning, and the command line."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import compose
from rlcli import config, distributions, envs, networks
from rlcli import natural_gradient as ng
from rlcli.algos import Batch, trpo

# ---- conjugate gradient --------------------------------------------------------------------


def spd(n, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    return (m @ m.T + n * np.eye(n)).astype(np.float32), rng.normal(size=n).astype(np.float32)


def test_conjugate_gradient_solves_spd_system():
    a, b = spd(6, 0)
    x = jax.jit(lambda b: ng.conjugate_gradient(lambda v: jnp.asarray(a) @ v, b, iters=20,
                                                residual_tol=1e-12))(b)
    np.testing.assert_allclose(x, np.linalg.solve(a.astype(np.float64), b), rtol=1e-4, atol=1e-5)
    # one iteration is steepest descent with exact line search: x_1 = (b^T b / b^T A b) b
    x1 = ng.conjugate_gradient(lambda v: jnp.asarray(a) @ v, b, iters=1)
    np.testing.assert_allclose(x1, (b @ b) / (b @ a @ b) * b, rtol=1e-5)
    # b = 0: x = 0, without a 0/0 in the iterations that follow convergence
    np.testing.assert_array_equal(ng.conjugate_gradient(lambda v: jnp.asarray(a) @ v, np.zeros(6, np.float32), 5), 0)


def test_conjugate_gradient_over_a_pytree():
    """A acts on the concatenation [w.ravel(), c] of the tree {"w": [2, 3], "c": [4]}."""
    a, b_flat = spd(10, 1)

    def concat(tree):
        return jnp.concatenate([tree["w"].ravel(), tree["c"]])

    def unconcat(v):
        return {"w": v[:6].reshape(2, 3), "c": v[6:]}

    x = ng.conjugate_gradient(lambda t: unconcat(jnp.asarray(a) @ concat(t)), unconcat(jnp.asarray(b_flat)),
                              iters=30, residual_tol=1e-12)
    assert jax.tree.map(jnp.shape, x) == {"w": (2, 3), "c": (4,)}
    np.testing.assert_allclose(concat(x), np.linalg.solve(a.astype(np.float64), b_flat), rtol=1e-4, atol=1e-5)


# ---- Fisher-vector products ----------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def tiny_policy(discrete):
    """A 2-d observation, one hidden layer of 3 units, 3 actions (or a 2-d Gaussian), a batch
    of 5: the policy params and the function params -> dist params on the batch."""
    net = networks.ActorCritic(num_actions=3 if discrete else 2, discrete=discrete, hidden_sizes=(3,))
    obs = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)), jnp.float32)

    @jax.jit
    def init(key):
        params = net.init(key, obs)
        # move off the initialisation (policy head 0.01, log_std 0): a less degenerate Fisher
        return jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)

    params = init(jax.random.PRNGKey(0))
    policy_params, critic_params = trpo.split(params)
    return policy_params, lambda p: net.apply(trpo.merge(p, critic_params), obs)[0]


@pytest.mark.parametrize("discrete", [True, False], ids=["categorical", "gaussian"])
def test_fisher_vector_product_matches_dense_hessian_of_mean_kl(discrete):
    dist = distributions.for_action_space(discrete)
    params, policy = tiny_policy(discrete)
    flat, unravel = ravel_pytree(params)
    damping = 0.1
    vectors = jax.random.normal(jax.random.PRNGKey(10), (3,) + flat.shape)

    @jax.jit
    def compute(flat):
        kl_fn = ng.mean_kl(dist.kl, policy, policy(unravel(flat)))
        dense = jax.hessian(lambda f: kl_fn(unravel(f)))(flat)  # [P, P], only here
        fvp = ng.fisher_vector_product(kl_fn, unravel(flat), damping)
        products = jax.vmap(lambda v: ravel_pytree(fvp(unravel(v)))[0])(vectors)
        if not discrete:
            return dense, products, None
        # the Fisher E_s E_a~pi[grad log pi grad log pi^T], summed exactly over the 3 actions
        log_p = lambda f: jax.nn.log_softmax(policy(unravel(f)), axis=-1)  # noqa: E731
        probs, scores = jnp.exp(log_p(flat)), jax.jacobian(log_p)(flat)  # [B, A], [B, A, P]
        return dense, products, jnp.einsum("ba,bap,baq->pq", probs, scores, scores) / probs.shape[0]

    dense, products, fisher = map(lambda x: None if x is None else np.asarray(x, np.float64), compute(flat))
    vectors = np.asarray(vectors, np.float64)
    np.testing.assert_allclose(products, vectors @ dense.T + damping * vectors, rtol=1e-4, atol=1e-5)
    if discrete:  # the Hessian of the mean KL at the old policy is the Fisher matrix
        np.testing.assert_allclose(dense, fisher, rtol=1e-4, atol=1e-6)


def test_natural_step_lies_on_the_quadratic_trust_region_boundary():
    """s solves (F + damping I) s = g and 1/2 (beta s)^T (F + damping I) (beta s) = max_kl."""
    dist = distributions.CATEGORICAL
    params, policy = tiny_policy(True)
    flat, unravel = ravel_pytree(params)
    kl_fn = ng.mean_kl(dist.kl, policy, policy(params))
    matrix = np.asarray(jax.jit(jax.hessian(lambda f: kl_fn(unravel(f))))(flat)) + 0.1 * np.eye(flat.size)
    grad = np.asarray(jax.random.normal(jax.random.PRNGKey(3), flat.shape))
    out = jax.jit(lambda g: ng.natural_step(unravel(g), ng.fisher_vector_product(kl_fn, params, 0.1), 0.01,
                                            cg_iters=flat.size))(grad)
    direction, step = ravel_pytree(out.direction)[0], ravel_pytree(out.step)[0]
    np.testing.assert_allclose(direction, np.linalg.solve(matrix.astype(np.float64), grad), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(0.5 * step @ matrix @ step, 0.01, rtol=1e-4)
    np.testing.assert_allclose(out.expected_improvement, grad @ step, rtol=1e-5)


# ---- line search ---------------------------------------------------------------------------


def toy(params):
    """surrogate(x) = -(x - 1)^2, so the improvement over x = 0 is 2x - x^2; "kl" = x^2 / 2."""
    x = params["x"]
    return 2 * x - x * x, 0.5 * x * x


@pytest.mark.parametrize("step,max_kl,iters,x,backtracks", [
    (4.0, 1.0, 10, 1.0, 2),   # x = 4 (kl 8), 2 (kl 2) exceed the KL; x = 1: kl 0.5, gain 1
    (3.0, 10.0, 10, 1.5, 1),  # x = 3 is within the KL (4.5) but loses 3; x = 1.5 gains 0.75
    (2.0, 10.0, 10, 1.0, 1),  # x = 2 gains exactly 0: not an improvement; x = 1 gains 1
    (4.0, 1.0, 2, 0.0, 2),    # both candidates rejected: the old params are kept
])
def test_line_search_on_a_quadratic(step, max_kl, iters, x, backtracks):
    search = jax.jit(lambda s: ng.backtracking_line_search(toy, {"x": jnp.float32(0.0)}, {"x": s}, max_kl,
                                                           iters, 0.5))(jnp.float32(step))
    assert float(search.params["x"]) == x
    assert int(search.backtracks) == backtracks
    assert bool(search.accepted) == (x != 0.0)
    assert float(search.fraction) == (0.5 ** backtracks if x != 0.0 else 0.0)


def test_line_search_vmapped_over_steps():
    """Each lane stops at its own candidate: steps 4, 1.5, 0.5 with max_kl = 1 accept x = 1
    (2 backtracks), 0.75 (1) and 0.5 (0)."""
    search = jax.jit(jax.vmap(lambda s: ng.backtracking_line_search(
        toy, {"x": jnp.float32(0.0)}, {"x": s}, 1.0, 10, 0.5)))(jnp.array([4.0, 1.5, 0.5]))
    np.testing.assert_array_equal(search.params["x"], [1.0, 0.75, 0.5])
    np.testing.assert_array_equal(search.backtracks, [2, 1, 0])


# ---- the TRPO update -----------------------------------------------------------------------


def fixed_batch(spec, seed, t=32, n=4):
    """Random observations, actions, rewards and terminations (float32, time-major)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(t + 1, n) + spec.obs_shape).astype(np.float32)
    if spec.discrete:
        action = rng.integers(0, spec.num_actions, (t, n))
    else:
        action = rng.normal(size=(t, n, spec.num_actions)).astype(np.float32)
    zeros = np.zeros((t, n), np.float32)
    return Batch(obs[:-1], action, rng.normal(size=(t, n)).astype(np.float32), rng.random((t, n)) < 0.05,
                 zeros.astype(bool), zeros, zeros, obs[1:])


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_trpo_update_stays_in_the_trust_region(env_id):
    """On a fixed batch, the step is accepted, changes the policy with a mean KL in (0, max_kl]
    (recomputed here from the old and new params), fits the critic, and is deterministic."""
    cfg = compose(["algo=trpo", f"env={env_id}", "algo.max_kl=0.02", "algo.num_steps=32", "num_envs=4"])
    config.validate(cfg)
    spec = envs.make_spec(env_id, envs.resolve_backend(env_id, "auto"))
    algo = trpo.make(spec, cfg, num_updates=10)
    dist = distributions.for_action_space(spec.discrete)
    learner = jax.jit(algo.init)(jax.random.PRNGKey(0))
    batch = fixed_batch(spec, 1)
    update = jax.jit(algo.update)
    new, metrics = update(learner, batch, jax.random.PRNGKey(2))
    again, metrics_again = update(learner, batch, jax.random.PRNGKey(2))

    @jax.jit
    def kl_and_values(old_params, new_params):
        apply = networks.make(cfg.network, spec).apply
        (old_dist, old_value), (new_dist, new_value) = apply(old_params, batch.obs), apply(new_params, batch.obs)
        return jnp.mean(dist.kl(old_dist, new_dist)), old_value, new_value

    kl, old_value, new_value = kl_and_values(learner.params, new.params)
    kl = float(kl)
    assert float(metrics["train/accepted"]) == 1.0
    assert 0.0 < kl <= 0.02 * (1 + 1e-5)
    np.testing.assert_allclose(float(metrics["policy/kl"]), kl, rtol=1e-4)
    assert not np.allclose(old_value, new_value)  # the critic moved
    assert jax.tree.all(jax.tree.map(np.array_equal, new, again))
    assert metrics == metrics_again


@pytest.mark.parametrize("discount", [False, True], ids=["unweighted", "discounted"])
def test_discounted_surrogate_gradient_hand_computed(discount):
    """algo.discount_surrogate (000 eq. 3.3.2) on a 5-step rollout of one CartPole env with a
    termination after t=1 and a truncation after t=2 (episodes start at t = 0, 2, 3), gamma = 0.5.
    With every parameter 0 the policy is uniform, V = 0 (the TD advantage is the reward) and only
    the policy head's bias b moves the logits, so the surrogate's gradient is
    d/db mean_t w_t A_t pi(a_t)/pi_old(a_t) = mean_t w_t A_t (onehot(a_t) - 1/2),
    A standardised over the batch, w_t = gamma^(t - t0) = (1, g, 1, 1, g) with the option and 1
    without. The step moves b along that gradient (it is an eigenvector of the Fisher matrix)."""
    gamma = 0.5
    cfg = compose(["algo=trpo", "env=CartPole-v1", "estimator=td", "num_envs=1", "algo.num_steps=5",
                   "algo.vf_minibatches=1", f"algo.gamma={gamma}", f"algo.discount_surrogate={str(discount).lower()}"])
    config.validate(cfg)
    algo = trpo.make(envs.make_spec("CartPole-v1", "jax"), config.typed(cfg), num_updates=10)
    learner = jax.jit(algo.init)(jax.random.PRNGKey(0))
    learner = learner._replace(params=jax.tree.map(jnp.zeros_like, learner.params))
    rewards, actions = np.array([1.0, -1.0, 2.0, 0.5, -2.0]), np.array([0, 1, 1, 0, 1])
    terminated, truncated = np.array([0, 1, 0, 0, 0], bool), np.array([0, 0, 1, 0, 0], bool)
    obs = np.random.default_rng(0).normal(size=(6, 1, 4)).astype(np.float32)
    col = lambda x: jnp.asarray(x)[:, None]  # noqa: E731
    zeros = np.zeros(5, np.float32)
    batch = Batch(obs[:-1], col(actions), col(rewards.astype(np.float32)), col(terminated), col(truncated),
                  col(zeros), col(zeros), obs[1:])
    new, metrics = jax.jit(algo.update)(learner, batch, jax.random.PRNGKey(1))

    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
    weights = np.array([1.0, gamma, 1.0, 1.0, gamma]) if discount else np.ones(5)
    grad = np.mean((weights * adv)[:, None] * (np.eye(2)[actions] - 0.5), axis=0)
    np.testing.assert_allclose(float(metrics["train/grad_norm"]), np.linalg.norm(grad), rtol=1e-5)
    policy, _ = trpo.split(new.params)
    bias = np.asarray(policy["params"]["Dense_1"]["bias"], np.float64)
    assert float(metrics["train/accepted"]) == 1.0
    np.testing.assert_allclose(bias / np.linalg.norm(bias), grad / np.linalg.norm(grad), rtol=1e-4)
    unweighted = np.mean(adv[:, None] * (np.eye(2)[actions] - 0.5), axis=0)
    assert discount == (abs(np.linalg.norm(grad) - np.linalg.norm(unweighted)) > 1e-3)


def test_policy_and_critic_subtrees_are_separate():
    """With network.shared=false the critic subtree does not change the policy's output and
    the policy subtree does not change the value."""
    cfg = compose(["algo=trpo"])
    spec = envs.make_spec("CartPole-v1", "jax")
    net = networks.make(cfg.network, spec)
    obs = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    params = jax.jit(net.init)(jax.random.PRNGKey(1), obs)
    policy_params, critic_params = trpo.split(params)
    assert trpo.merge(policy_params, critic_params) == params
    shift = lambda tree: jax.tree.map(lambda p: p + 1.0, tree)  # noqa: E731
    apply = jax.jit(net.apply)
    logits, value = apply(params, obs)
    logits_c, value_c = apply(trpo.merge(policy_params, shift(critic_params)), obs)
    logits_p, value_p = apply(trpo.merge(shift(policy_params), critic_params), obs)
    np.testing.assert_array_equal(logits, logits_c)
    np.testing.assert_array_equal(value, value_p)
    assert not np.allclose(value, value_c) and not np.allclose(logits, logits_p)


def test_rules_and_checks():
    from rlcli.algos import npg

    assert "algo.backtrack_iters" not in npg.KEYS and "algo.max_kl" in npg.KEYS
    for overrides, text in [
        (["algo=trpo", "algo.backtrack_coef=1.0"],
         "algo.backtrack_coef=1.0 is not allowed (allowed: a number in (0, 1))"),
        (["algo=npg", "algo.max_kl=0"], "algo.max_kl=0 is not allowed"),
        (["algo=trpo", "algo.vf_minibatches=3"], "algo.vf_minibatches=3 does not divide the batch"),
        (["algo=npg", "network.shared=true"], "network.shared=true is not allowed with algo=npg"),
    ]:
        with pytest.raises(config.ConfigError) as err:
            config.validate(compose(overrides))
        assert text in str(err.value) and "\n" not in str(err.value)


# ---- training ------------------------------------------------------------------------------


@pytest.mark.extended
def test_cli_npg_trains_and_trpo_refuses_a_shared_network(tmp_path, cli):
    run = tmp_path / "npg"
    result = cli(["train", "algo=npg", "total_steps=3000", "log_interval=1000", "eval_episodes=2",
                  "logger=quiet", f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["algo"], summary["estimator"], summary["num_updates"]) == ("npg", "gae", 3)

    refused = cli(["train", "algo=trpo", "network.shared=true", f"hydra.run.dir={tmp_path / 'trpo'}"], tmp_path)
    assert refused.returncode == 2, refused.stderr
    line, = refused.stderr.strip().splitlines()
    assert "network.shared=true is not allowed with algo=trpo" in line and "network.shared=false" in line
    assert not (tmp_path / "trpo").exists()
