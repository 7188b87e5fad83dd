"""`rlcli export`: every format reproduces rlcli's own act function (discrete actions equal,
continuous actions and log-probs within 1e-5) on real runs and on policies with perturbed,
non-trivial weights; the NumPy module needs no JAX and its densities match scipy; bad input
is one line; a failed check writes nothing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import compose, train_run

from rlcli import exported_policy

ATOL = 1e-5
FORMATS = ("npz", "onnx", "stablehlo")
# the runs the issue names: a categorical, a Gaussian and a squashed-Gaussian (SAC) policy
RUNS = {
    "ppo-CartPole": ["algo=ppo", "env=CartPole-v1", "total_steps=2048", "normalize.obs=true"],
    "ppo-Pendulum": ["algo=ppo", "env=Pendulum-v1", "total_steps=2048", "normalize.obs=true"],
    "sac-Pendulum": ["algo=sac", "env=Pendulum-v1", "total_steps=400", "algo.learning_starts=200",
                     "algo.buffer_size=1000"],
}
TINY = ["eval_episodes=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """`runs(name)`: the run directory of RUNS[name]. The runs this session's selected tests ask
    for (ppo-CartPole always; the others in the extended tier) are trained here, once, before
    any test's own capture starts."""
    root = tmp_path_factory.mktemp("export-runs")
    asked = {item.callspec.params.get("run") for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec")}
    wanted = ({"ppo-CartPole"} | asked) - {None}
    for name in RUNS:
        if name in wanted:
            train_run(root / name, [*RUNS[name], *TINY, "logger=quiet"])
    return lambda name: root / name


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("run", ["ppo-CartPole", *(pytest.param(r, marks=pytest.mark.extended) for r in RUNS
                                                    if r != "ppo-CartPole")])
def test_every_format_exports_a_run_and_matches_rlclis_act(runs, run, fmt, cli, tmp_path):
    result = cli(["export", f"run={runs(run)}", f"format={fmt}", f"out={tmp_path / 'out'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["format"] == fmt and manifest["algo"] == run.split("-")[0]
    assert all((tmp_path / "out" / name).is_file() for name in manifest["files"])
    check = manifest["parity"]
    assert check["observations"] == 1000
    if run == "ppo-CartPole":
        assert check["actions_differing"] == 0
    else:
        assert check["max_action_error"] <= ATOL
    if fmt != "onnx":  # npz and stablehlo also give log-probs of given actions
        assert check["max_log_prob_error"] <= ATOL
    assert "checked against rlcli's act: 1000 observations" in result.stdout


# ---- parity on policies with non-trivial weights -----------------------------------------------
# a policy straight from init has a 0.01-scaled head (near-zero actions, near-uniform logits);
# here every weight is drawn anew at unit scale and the normalisation statistics are far from (0, 1)
VARIANTS = {
    "categorical-shared-silu": ["algo=ppo", "env=CartPole-v1", "network.shared=true", "network.activation=silu",
                                "normalize.obs=true"],
    "gaussian-state-std-gelu": ["algo=a2c", "env=Pendulum-v1", "network.state_dependent_std=true",
                                "network.activation=gelu", "normalize.obs=true"],
    "gaussian-elu-gymnasium": ["algo=trpo", "env=MountainCarContinuous-v0", "network.activation=elu",
                               "env.backend=gymnasium"],
    "squashed-gsde": ["algo=sac", "env=Pendulum-v1", "algo.use_sde=true", "algo.learning_starts=0"],
    "squashed-relu": ["algo=sac", "env=MountainCarContinuous-v0", "algo.learning_starts=0"],
    "discrete-actor": ["algo=offpolicy_ac", "env=CartPole-v1", "algo.learning_starts=0"],
    "cnn-stride-2": ["algo=ppo", "env=Breakout-MinAtar", "network=cnn", "network.channels=[8,4]", "network.stride=2",
                     "network.hidden_sizes=[32]", "normalize.obs=true"],
    "control-variate": ["algo=reinforce", "env=Acrobot-v1", "estimator=reward_to_go",
                        "estimator.baseline=q_control_variate", "network.activation=tanh"],
}
# the variants of the per-push tier (the others: `pytest -m extended`)
PER_PUSH = ("categorical-shared-silu", "gaussian-state-std-gelu", "squashed-gsde", "cnn-stride-2")


def every_format(parts, policy, ref, obs, actions, tmp_path):
    """(format, its parity check) for each format written into tmp_path/<format>."""
    from rlcli import export

    for fmt in FORMATS:
        out = tmp_path / fmt
        out.mkdir()
        export.write(fmt, out, policy, ref, parts.spec)
        yield fmt, export.parity(fmt, out, ref, parts.spec, obs, actions)


def perturbed(parts, seed, obs):
    """(learner, norm) of one seed with every parameter redrawn, N(0, 1/fan_in) for a kernel
    (unit-scale activations) and N(0, 0.3^2) otherwise, and observation
    statistics off those of `obs`: means shifted by N(0, 0.5^2) stds, variances scaled by a
    factor in [0.25, 4]."""
    import jax

    from rlcli import normalize

    learner = parts.algo.init(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: np.asarray(rng.normal(0.0, x.shape[-2] ** -0.5 if x.ndim >= 2 else 0.3, x.shape),
                                               np.float32), learner.params)
    shape, std = parts.spec.obs_shape, obs.std(axis=0) + 1e-3
    norm = normalize.init(shape, 1)
    norm = norm._replace(obs=normalize.RunningMeanStd(
        (obs.mean(axis=0) + rng.normal(0.0, 0.5, shape) * std).astype(np.float32),
        (std ** 2 * rng.uniform(0.25, 4.0, shape)).astype(np.float32), np.float32(100.0)))
    return learner._replace(params=params), norm


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v if v in PER_PUSH else pytest.param(v, marks=pytest.mark.extended)
                                     for v in VARIANTS])
def test_every_format_matches_act_on_perturbed_policies(variant, tmp_path):
    import jax

    from rlcli import export, normalize
    from rlcli import train as training

    parts = training.setup(compose(VARIANTS[variant]))
    obs = export.observations(parts, 1000, seed=5)  # the env's, and as many off them by N(0, 1)
    obs = np.concatenate([obs, obs + np.random.default_rng(5).normal(size=obs.shape).astype(np.float32)])
    learner, norm = perturbed(parts, 3, obs)
    ref = export.reference(parts, learner, norm)
    normalizer = normalize.make(parts.cfg)
    sampled, info = jax.jit(lambda o, k: parts.algo.act(learner, normalizer.obs(norm, o), k))(
        obs, jax.random.PRNGKey(7))
    sampled, act_log_prob = np.asarray(sampled), np.asarray(info.log_prob)
    policy = export.arrays(parts.cfg, parts.spec, learner, norm)
    for fmt, result in every_format(parts, policy, ref, obs, sampled, tmp_path):
        assert export.passes(result, ATOL), (fmt, result)
    # the reference's log-density of given actions is act's own for the actions act sampled
    reference_log_prob = np.asarray(jax.jit(ref.log_prob)(obs, sampled))
    if policy["kind"] != "squashed_gaussian":
        np.testing.assert_allclose(reference_log_prob, act_log_prob, rtol=1e-6, atol=1e-5)
    else:  # away from the bounds, where atanh of a float32 action is well conditioned
        low, high = policy["action_low"], policy["action_high"]
        inside = np.all(np.abs(2 * (sampled - low) / (high - low) - 1) < 0.99, axis=-1)
        assert inside.sum() > 100
        np.testing.assert_allclose(reference_log_prob[inside], act_log_prob[inside], rtol=1e-4, atol=1e-4)
    # the weights are not trivial: the deterministic actions vary over the observations
    actions = np.asarray(jax.jit(ref.act)(obs))
    assert len(np.unique(actions)) > 1 if parts.spec.discrete else np.std(actions) > 0.05


RECURRENT = {
    "gru-categorical": ["algo=ppo", "env=CartPole-v1", "network=gru", "network.gru_size=8", "network.hidden_sizes=[16]",
                        "normalize.obs=true"],
    "gru-shared-gaussian": ["algo=a2c", "env=Pendulum-v1", "network=gru", "network.shared=true", "network.gru_size=8",
                            "network.hidden_sizes=[16]", "network.activation=tanh"],
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", RECURRENT)
def test_a_recurrent_policy_exports_its_step_function(variant, tmp_path):
    """network=gru: each format takes the actor's hidden state as input and gives the next one.
    Over 10 consecutive steps of 100 sequences, each side carrying its own state from zeros,
    the actions, the states and (npz, stablehlo) the log-probs match rlcli's act (flax's GRU
    cell); and the state matters: from zeros at every step, policy.py's log-probs differ."""
    from rlcli import export
    from rlcli import train as training

    parts = training.setup(compose(RECURRENT[variant]))
    obs = export.observations(parts, 1000, seed=5)
    learner, norm = perturbed(parts, 3, obs)
    ref = export.reference(parts, learner, norm)
    assert ref.state_size == 8
    rng = np.random.default_rng(0)
    actions = (rng.integers(0, parts.spec.num_actions, 1000) if parts.spec.discrete
               else rng.normal(size=(1000, parts.spec.num_actions)).astype(np.float32))
    policy = export.arrays(parts.cfg, parts.spec, learner, norm)
    for fmt, result in every_format(parts, policy, ref, obs, actions, tmp_path):
        assert (result["sequences"], result["steps"]) == (100, 10)
        assert export.passes(result, ATOL), (fmt, result)
    carried, state = [], exported_policy.initial_state(100, policy)
    for t in range(10):
        log_p, state = exported_policy.log_prob(obs[t * 100:(t + 1) * 100], actions[t * 100:(t + 1) * 100],
                                                policy=policy, state=state)
        carried.append(log_p)
    from_zeros = [exported_policy.log_prob(obs[t * 100:(t + 1) * 100], actions[t * 100:(t + 1) * 100],
                                           policy=policy)[0] for t in range(10)]
    np.testing.assert_array_equal(carried[0], from_zeros[0])
    assert min(np.max(np.abs(a - b)) for a, b in zip(carried[1:], from_zeros[1:])) > 1e-3


# ---- the NumPy module on its own -----------------------------------------------------------------


def hand_policy(kind):
    """One hidden tanh layer of 2 units on a 2-d observation, set by hand."""
    policy = {"kind": kind, "activation": "tanh", "obs_shape": np.array([2]), "num_hidden": np.array(1),
              "hidden_kernel_0": np.array([[1.0, 0.0], [0.0, 2.0]], np.float32),
              "hidden_bias_0": np.array([0.0, 0.5], np.float32)}
    if kind == "categorical":
        policy["head_kernel"] = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
        policy["head_bias"] = np.zeros(3, np.float32)
    else:
        policy["head_kernel"] = np.array([[1.0], [-1.0]], np.float32)
        policy["head_bias"] = np.array([0.25], np.float32)
        policy["log_std"] = np.array([np.log(0.5)], np.float32)
        policy["action_low"], policy["action_high"] = np.array([-2.0], np.float32), np.array([2.0], np.float32)
    return policy


def test_numpy_densities_match_scipy():
    from scipy import stats
    from scipy.special import softmax

    obs = np.array([[0.3, -0.2], [-1.0, 0.4]], np.float32)
    hidden = np.tanh(obs @ np.array([[1.0, 0.0], [0.0, 2.0]]) + np.array([0.0, 0.5]))

    policy = hand_policy("categorical")
    logits = hidden @ policy["head_kernel"]
    np.testing.assert_array_equal(exported_policy.act(obs, policy=policy), np.argmax(logits, axis=-1))
    action = np.array([2, 0])
    np.testing.assert_allclose(exported_policy.log_prob(obs, action, policy=policy),
                               np.log(softmax(logits, axis=-1)[[0, 1], action]), rtol=1e-5)

    mean = hidden @ np.array([1.0, -1.0]) + 0.25
    policy = hand_policy("gaussian")
    np.testing.assert_allclose(exported_policy.act(obs, policy=policy)[:, 0], mean, rtol=1e-5)
    action = np.array([[0.1], [-0.7]], np.float32)
    np.testing.assert_allclose(exported_policy.log_prob(obs, action, policy=policy),
                               stats.norm.logpdf(action[:, 0], mean, 0.5), rtol=1e-5)

    # a = 2 tanh(u), u ~ N(mean, 0.5^2): density of a by the change of variables
    policy = hand_policy("squashed_gaussian")
    np.testing.assert_allclose(exported_policy.act(obs, policy=policy)[:, 0], 2 * np.tanh(mean), rtol=1e-5)
    u = np.arctanh(action[:, 0] / 2)
    expected = stats.norm.logpdf(u, mean, 0.5) - np.log(2 * (1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(exported_policy.log_prob(obs, action, policy=policy), expected, rtol=1e-5)
    # samples: their mean is tanh(mean) scaled, within Monte-Carlo error
    draws = np.stack([exported_policy.act(obs, False, np.random.default_rng(i), policy=policy) for i in range(4000)])
    expected_mean = [np.mean(2 * np.tanh(np.random.default_rng(0).normal(m, 0.5, 200_000))) for m in mean]
    np.testing.assert_allclose(draws[:, :, 0].mean(axis=0), expected_mean, atol=0.05)


@pytest.mark.slow
def test_the_numpy_module_runs_without_jax(runs, cli, tmp_path):
    """Without out=, the export goes to <run>/export/<format>-seed<i>."""
    assert cli(["export", f"run={runs('ppo-CartPole')}", "format=npz"], tmp_path).returncode == 0
    out = runs("ppo-CartPole") / "export" / "npz-seed0"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "policy.npz", "policy.py"]
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import policy; "
            "a = policy.act(np.load(sys.argv[2])); lp = policy.log_prob(np.load(sys.argv[2]), a); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'rlcli', 'flax')]; "
            "print(a.shape, lp.shape)")
    done = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "obs.npy")], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(5,) (5,)"


# ---- bad input, failed checks ---------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["format=npz"], "run= is required once"),
    ([], "format= is required (allowed: one of npz, onnx, stablehlo)"),
    (["format=pickle"], "format=pickle is not allowed (allowed: one of npz, onnx, stablehlo)"),
    (["format=npz", "seed_index=2"], "seed_index=2 is out of range: the run has num_seeds=2"),
    (["format=npz", "checkpoint=5"], "checkpoint=5 is not a checkpoint of run="),
])
def test_bad_input_is_one_line(shared_run, cli, tmp_path, args, message):
    run = [] if args == ["format=npz"] else [f"run={shared_run}"]
    result = cli(["export", *run, *args], tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (shared_run / "export").exists()


@pytest.mark.slow
def test_a_failed_check_writes_nothing(runs, cli, tmp_path, monkeypatch):
    from rlcli import export

    real = export.parity

    def off_by_one(fmt, directory, ref, spec, obs, actions):
        result = real(fmt, directory, ref, spec, obs, actions)
        return {**result, "actions_differing": 1}

    monkeypatch.setattr(export, "parity", off_by_one)
    out = tmp_path / "out"
    result = cli(["export", f"run={runs('ppo-CartPole')}", "format=npz", f"out={out}"], tmp_path)
    assert result.returncode == 1
    assert "does not match rlcli's act function" in result.stderr and "nothing was written" in result.stderr
    assert list(tmp_path.glob("**/policy.*")) == [] and not out.exists()
