"""Tests for rlcli.distributions against scipy.stats / scipy.special references (seed 001:
categorical and diagonal Gaussian policies)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from rlcli import distributions as D

TOL = dict(rtol=1e-5, atol=1e-5)
Z = 5.0  # Monte-Carlo checks: |estimate - target| below Z standard errors (as tests/test_exact_gradient.py)

# The functions are called under jax.jit (as in training): one compilation per call instead of
# one per eager op keeps the file fast.


def _f32(x):
    return np.asarray(x, np.float32)


def _f64(x):
    return np.asarray(x, np.float64)


def z_scores(estimate, se, target):
    """(estimate - target) / standard error, per component."""
    return (np.asarray(estimate, np.float64) - np.asarray(target, np.float64)) / np.maximum(se, 1e-12)


# ---- categorical ------------------------------------------------------------------------------


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return _f32(rng.normal(scale=2.0, size=(3, 5)))


def test_categorical_log_prob(logits):
    actions = np.array([4, 0, 2])
    got = jax.jit(D.categorical_log_prob)(jnp.asarray(logits), jnp.asarray(actions))
    assert got.shape == (3,)
    ref = special.log_softmax(_f64(logits), axis=-1)[np.arange(3), actions]
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_categorical_log_prob_extra_batch_axis():
    rng = np.random.default_rng(1)
    logits = _f32(rng.normal(size=(2, 3, 4)))
    actions = rng.integers(0, 4, size=(2, 3))
    got = jax.jit(D.categorical_log_prob)(jnp.asarray(logits), jnp.asarray(actions))
    assert got.shape == (2, 3)
    log_p = special.log_softmax(_f64(logits), axis=-1)
    ref = np.array([[log_p[i, j, actions[i, j]] for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_categorical_entropy(logits):
    got = jax.jit(D.categorical_entropy)(jnp.asarray(logits))
    assert got.shape == (3,)
    ref = stats.entropy(special.softmax(_f64(logits), axis=-1), axis=-1)
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_categorical_entropy_uniform():
    # uniform over 5 actions: H = log 5
    got = jax.jit(D.categorical_entropy)(jnp.zeros((2, 5)))
    np.testing.assert_allclose(np.asarray(got), np.full(2, np.log(5.0)), **TOL)


def test_categorical_kl(logits):
    rng = np.random.default_rng(2)
    q_logits = _f32(rng.normal(scale=2.0, size=(3, 5)))
    got = jax.jit(D.categorical_kl)(jnp.asarray(logits), jnp.asarray(q_logits))
    assert got.shape == (3,)
    p = special.softmax(_f64(logits), axis=-1)
    q = special.softmax(_f64(q_logits), axis=-1)
    ref = stats.entropy(p, q, axis=-1)
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)
    # KL(p || p) = 0
    np.testing.assert_allclose(
        np.asarray(jax.jit(D.categorical_kl)(jnp.asarray(logits), jnp.asarray(logits))),
        np.zeros(3),
        **TOL,
    )


def test_categorical_mode(logits):
    got = jax.jit(D.categorical_mode)(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(got), np.argmax(logits, axis=-1))


def test_categorical_sample_frequencies():
    """Each action's frequency in 200k draws is within Z standard errors of softmax(logits),
    the standard error sqrt(f (1 - f) / n) from the draws; a 2% relative error in p would not be."""
    logits = _f32([1.0, -0.5, 0.3, 2.0, -1.0])
    n = 200_000
    samples = jax.jit(D.categorical_sample)(
        jax.random.PRNGKey(0), jnp.broadcast_to(jnp.asarray(logits), (n, 5))
    )
    assert samples.shape == (n,)
    counts = np.bincount(np.asarray(samples), minlength=5)
    assert counts.sum() == n  # every draw is an action in range
    freq = counts / n
    p = special.softmax(_f64(logits))
    se = np.sqrt(freq * (1.0 - freq) / n)
    assert np.all(np.abs(z_scores(freq, se, p)) < Z), z_scores(freq, se, p)
    # the bound resolves a 2% error in the largest probability
    assert abs(z_scores(freq, se, p * 1.02)[3]) > Z


# ---- diagonal Gaussian ------------------------------------------------------------------------


@pytest.fixture
def gaussian():
    rng = np.random.default_rng(3)
    B, Dim = 4, 3
    mean = _f32(rng.normal(size=(B, Dim)))
    log_std = _f32([-0.5, 0.2, 0.7])  # shape [D], broadcast against mean [B, D]
    action = _f32(rng.normal(size=(B, Dim)) * 1.5)
    return mean, log_std, action


def test_gaussian_log_prob_vs_multivariate_normal(gaussian):
    mean, log_std, action = gaussian
    params = (jnp.asarray(mean), jnp.asarray(log_std))
    got = jax.jit(D.gaussian_log_prob)(params, jnp.asarray(action))
    assert got.shape == (mean.shape[0],)
    cov = np.diag(np.exp(2.0 * _f64(log_std)))
    ref = np.array(
        [
            stats.multivariate_normal(_f64(mean[b]), cov).logpdf(_f64(action[b]))
            for b in range(mean.shape[0])
        ]
    )
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_gaussian_log_prob_vs_sum_of_norm(gaussian):
    mean, log_std, action = gaussian
    params = (jnp.asarray(mean), jnp.asarray(log_std))
    got = jax.jit(D.gaussian_log_prob)(params, jnp.asarray(action))
    ref = stats.norm.logpdf(_f64(action), loc=_f64(mean), scale=np.exp(_f64(log_std))).sum(-1)
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_gaussian_log_prob_full_shape_log_std():
    # log_std given per batch element, shape [B, D]
    rng = np.random.default_rng(4)
    mean = _f32(rng.normal(size=(3, 2)))
    log_std = _f32(rng.normal(scale=0.5, size=(3, 2)))
    action = _f32(rng.normal(size=(3, 2)))
    params = (jnp.asarray(mean), jnp.asarray(log_std))
    got = jax.jit(D.gaussian_log_prob)(params, jnp.asarray(action))
    ref = stats.norm.logpdf(_f64(action), loc=_f64(mean), scale=np.exp(_f64(log_std))).sum(-1)
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_gaussian_entropy(gaussian):
    mean, log_std, _ = gaussian
    got = jax.jit(D.gaussian_entropy)((jnp.asarray(mean), jnp.asarray(log_std)))
    assert got.shape == (mean.shape[0],)
    cov = np.diag(np.exp(2.0 * _f64(log_std)))
    ref = np.array(
        [stats.multivariate_normal(_f64(mean[b]), cov).entropy() for b in range(mean.shape[0])]
    )
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def _kl_diag_gauss(mp, sp, mq, sq):
    """KL(N(mp, diag sp^2) || N(mq, diag sq^2))
    = sum_k [log(sq/sp) + (sp^2 + (mp - mq)^2) / (2 sq^2) - 1/2]."""
    return np.sum(np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2.0 * sq**2) - 0.5, axis=-1)


def test_gaussian_kl(gaussian):
    mean_p, log_std_p, _ = gaussian
    rng = np.random.default_rng(5)
    mean_q = _f32(rng.normal(size=mean_p.shape))
    log_std_q = _f32(rng.normal(scale=0.5, size=mean_p.shape))  # [B, D] against p's [D]
    got = jax.jit(D.gaussian_kl)(
        (jnp.asarray(mean_p), jnp.asarray(log_std_p)), (jnp.asarray(mean_q), jnp.asarray(log_std_q))
    )
    assert got.shape == (mean_p.shape[0],)
    ref = _kl_diag_gauss(
        _f64(mean_p), np.exp(_f64(log_std_p)), _f64(mean_q), np.exp(_f64(log_std_q))
    )
    np.testing.assert_allclose(np.asarray(got), ref, **TOL)
    # KL(p || p) = 0
    p = (jnp.asarray(mean_p), jnp.asarray(log_std_p))
    kl_pp = jax.jit(D.gaussian_kl)(p, p)
    np.testing.assert_allclose(np.asarray(kl_pp), np.zeros(mean_p.shape[0]), **TOL)


def test_gaussian_kl_hand_computed():
    # 1-D: p = N(0, 1), q = N(1, 2^2): log 2 + (1 + 1) / 8 - 1/2 = log 2 - 0.25
    got = jax.jit(D.gaussian_kl)(
        (jnp.array([0.0]), jnp.array([0.0])), (jnp.array([1.0]), jnp.array([np.log(2.0)]))
    )
    np.testing.assert_allclose(np.asarray(got), np.log(2.0) - 0.25, **TOL)


def test_gaussian_mode(gaussian):
    mean, log_std, _ = gaussian
    got = jax.jit(D.gaussian_mode)((jnp.asarray(mean), jnp.asarray(log_std)))
    np.testing.assert_array_equal(np.asarray(got), mean)


def test_gaussian_sample_statistics():
    """Sample mean and variance of a = mu + sigma z over 200k draws, per dimension, within Z
    standard errors of mu and sigma^2: the mean's standard error s / sqrt(n), the variance's
    that of the mean of (a - mu)^2 (both from the draws). A 2% error in mu (in units of
    sigma) or in sigma would be outside the bound."""
    mu = _f32([0.5, -1.0, 2.0])
    sigma = _f32([0.3, 1.0, 1.7])
    n = 200_000
    mean = jnp.broadcast_to(jnp.asarray(mu), (n, 3))
    samples = jax.jit(D.gaussian_sample)(jax.random.PRNGKey(1), (mean, jnp.log(sigma)))
    samples = np.asarray(samples, np.float64)
    assert samples.shape == (n, 3)
    mu, sigma = _f64(mu), _f64(sigma)
    se_mean = samples.std(0, ddof=1) / np.sqrt(n)
    z_mean = z_scores(samples.mean(0), se_mean, mu)
    assert np.all(np.abs(z_mean) < Z), z_mean
    squared = (samples - mu) ** 2  # E = sigma^2
    se_var = squared.std(0, ddof=1) / np.sqrt(n)
    z_var = z_scores(squared.mean(0), se_var, sigma**2)
    assert np.all(np.abs(z_var) < Z), z_var
    # resolving power: 2% shifts of the targets are rejected in every dimension
    assert np.all(np.abs(z_scores(samples.mean(0), se_mean, mu + 0.02 * sigma)) > Z)
    assert np.all(np.abs(z_scores(squared.mean(0), se_var, (1.02 * sigma) ** 2)) > Z)


# ---- dispatch ---------------------------------------------------------------------------------


def test_for_action_space():
    assert D.for_action_space(True) is D.CATEGORICAL
    assert D.for_action_space(False) is D.GAUSSIAN
    assert D.CATEGORICAL.log_prob is D.categorical_log_prob
    assert D.GAUSSIAN.log_prob is D.gaussian_log_prob
