"""A trained policy out of rlcli (`rlcli export`): its weights as plain arrays, written as
NumPy (`npz` + a NumPy module), ONNX or StableHLO (`jax.export`), each checked against rlcli's
own act function.

* `arrays(cfg, spec, learner, norm)`: the deterministic policy as named float32 arrays (the
  layout `rlcli/exported_policy.py` reads): the frozen observation-normalisation statistics,
  the actor's torso (convolutions, MLP, the GRU cell of network=gru), its head and, for a Box
  space, the log-std (vector, head or gSDE matrix), with the action bounds. The ONNX graph of
  those arrays is `rlcli.export_onnx.onnx_model`.
* `reference(parts, learner, norm)`: rlcli's own functions that every format must reproduce:
  `act(obs)`, the algorithm's `act` with `deterministic=True` after the run's observation
  normalisation (training's evaluation policy), and `log_prob(obs, action)`, log pi(a|s) of
  given actions with the algorithm's distribution (001; for the squashed Gaussian of SAC,
  Haarnoja et al. 2018 eq. 26 with u = atanh of the action scaled to [-1, 1]). For a recurrent
  policy both take the actor's hidden state last and act also returns the next one.
* `write(fmt, directory, ...)` writes one format; `parity(fmt, directory, ...)` loads what was
  written with its own runtime (NumPy, onnxruntime, `jax.export.deserialize`) and measures it
  against `reference` on given observations.

The actor is read by the flax modules' parameter names (rlcli.networks): the on-policy
`ActorCritic` has its torso under `actor_torso` (or `torso` when shared), the value head first
(`Dense_0`) and the policy head second (`Dense_1`); the off-policy actors have `MLP_0` and
`Dense_0` (then `Dense_1`, the log-std head, or `sde_log_std`). The parity checks in
tests/test_export.py fail if that reading and rlcli's act part ways.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlcli import exported_policy


FILES = {"npz": ("policy.npz", "policy.py"), "onnx": ("policy.onnx",),
         "stablehlo": ("act.stablehlo", "log_prob.stablehlo", "act.mlir")}


class Reference(NamedTuple):
    act: Callable  # obs [B, *obs_shape] -> deterministic action [B] or [B, D]
    log_prob: Callable  # (obs [B, ...], action) -> log pi(a|s) [B]
    # network=gru: the actor's hidden state size H; act and log_prob then take the state [B, H]
    # last and act returns (action, state')
    state_size: int | None = None


def policy_params(learner):
    """The policy network's parameters within a learner: the actor (sac, offpolicy_ac), the
    policy (q_ac), the actor-critic beside REINFORCE's control-variate Q, else the whole
    actor-critic."""
    params = learner.params
    for field in ("actor", "policy"):
        if hasattr(params, field):
            return getattr(params, field)
    if isinstance(params, dict) and "actor_critic" in params:
        return params["actor_critic"]
    return params


def _dense_layers(tree: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted((k for k in tree if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
    return [(tree[k]["kernel"], tree[k]["bias"]) for k in names]


def arrays(cfg, spec, learner, norm) -> dict[str, np.ndarray]:
    """One seed's deterministic policy as named float32 arrays (see the module docstring)."""
    from rlcli import networks, normalize

    p = jax.device_get(policy_params(learner))["params"]
    off_policy = cfg.algo.name in networks.OFF_POLICY_ACTORS
    torso = p["MLP_0"] if off_policy else p["torso" if cfg.network.shared else "actor_torso"]
    head = p["Dense_0"] if off_policy else p["Dense_1"]
    out: dict[str, np.ndarray] = {"format_version": np.asarray(1), "obs_shape": np.asarray(spec.obs_shape, np.int64),
                                  "activation": np.asarray(cfg.network.activation)}
    convs = sorted((k for k in torso if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    if convs:  # network=cnn: the convolutions (kernels [k, k, C_in, C_out]), then the torso's MLP
        out["conv_stride"] = np.asarray(cfg.network.stride)
        for i, name in enumerate(convs):
            out[f"conv_kernel_{i}"], out[f"conv_bias_{i}"] = torso[name]["kernel"], torso[name]["bias"]
        torso = torso["MLP_0"]
    out["num_conv"] = np.asarray(len(convs))
    hidden = _dense_layers(torso)
    out["num_hidden"] = np.asarray(len(hidden))
    for i, (kernel, bias) in enumerate(hidden):
        out[f"hidden_kernel_{i}"], out[f"hidden_bias_{i}"] = kernel, bias
    if cfg.network.name == "gru":  # the actor's GRU cell (flax GRUCell: ir, iz, in with biases, hn with one)
        cell = p["gru" if cfg.network.shared else "actor_gru"]
        out["gru_size"] = np.asarray(cfg.network.gru_size)
        for name, dense in cell.items():
            out[f"gru_{name}_kernel"] = dense["kernel"]
            if "bias" in dense:
                out[f"gru_{name}_bias"] = dense["bias"]
    out["head_kernel"], out["head_bias"] = head["kernel"], head["bias"]
    if spec.discrete:
        out["kind"] = np.asarray("categorical")
    elif off_policy:
        out["kind"] = np.asarray("squashed_gaussian")
        if "sde_log_std" in p:
            out["sde_log_std"] = p["sde_log_std"]
        else:
            out["log_std_kernel"], out["log_std_bias"] = p["Dense_1"]["kernel"], p["Dense_1"]["bias"]
            out["log_std_clip"] = np.asarray([networks.LOG_STD_MIN, networks.LOG_STD_MAX], np.float32)
    else:
        out["kind"] = np.asarray("gaussian")
        if "log_std" in p:
            out["log_std"] = p["log_std"]
        else:
            out["log_std_kernel"], out["log_std_bias"] = p["log_std_head"]["kernel"], p["log_std_head"]["bias"]
    if not spec.discrete:
        out["action_low"] = np.asarray(spec.action_low, np.float32)
        out["action_high"] = np.asarray(spec.action_high, np.float32)
    if cfg.normalize.obs:
        stats = jax.device_get(norm.obs)
        out["obs_mean"] = np.asarray(stats.mean, np.float32).reshape(-1)
        out["obs_scale"] = np.sqrt(np.asarray(stats.var, np.float32) + np.float32(normalize.EPS)).reshape(-1)
        out["obs_clip"] = np.asarray(cfg.normalize.clip_obs, np.float32)
    return {k: _float32(np.asarray(v)) for k, v in out.items()}


def _float32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype.kind == "f" else x


def reference(parts, learner, norm) -> Reference:
    """rlcli's own act (deterministic) and log-density of given actions for one seed's learner
    and normalisation statistics."""
    from rlcli import distributions, networks, normalize
    from rlcli.algos import sac

    cfg, spec = parts.cfg, parts.spec
    normalizer = normalize.make(cfg)
    key = jax.random.PRNGKey(0)  # unused by a deterministic act

    def act(obs):
        return parts.algo.act(learner, normalizer.obs(norm, obs), key, deterministic=True)[0]

    params = policy_params(learner)
    if cfg.algo.name in networks.OFF_POLICY_ACTORS:
        actor, _ = networks.make_offpolicy(cfg.network, spec, 1, bool(cfg.algo.get("use_sde", False)))

        def log_prob(obs, action):
            obs = normalizer.obs(norm, obs)
            if spec.discrete:
                return distributions.categorical_log_prob(actor.apply(params, obs), action)
            mean, log_std, _ = actor.apply(params, obs)
            low, high = sac.bounds(spec)
            limit = exported_policy.ATANH_LIMIT
            u = jnp.arctanh(jnp.clip(sac.to_unit(action, low, high), -limit, limit))
            return (distributions.squashed_gaussian_log_prob((mean, log_std), u)
                    - jnp.sum(jnp.log(0.5 * (high - low))))
    else:
        network, dist = networks.make(cfg.network, spec), distributions.for_action_space(spec.discrete)

        def log_prob(obs, action):
            dist_params, _ = network.apply(params, normalizer.obs(norm, obs))
            return dist.log_prob(dist_params, action)

    if cfg.network.name != "gru":
        return Reference(act, log_prob)
    size = int(cfg.network.gru_size)

    def full(state):  # the actor's state, beside a critic's (zeros: it does not reach the policy)
        return state if cfg.network.shared else jnp.concatenate([state, jnp.zeros_like(state)], axis=-1)

    def act_recurrent(obs, state):
        action, _, state = parts.algo.act(learner, normalizer.obs(norm, obs), key, deterministic=True,
                                          state=full(state), episode_start=jnp.zeros(obs.shape[:1], bool))
        return action, state[..., :size]

    def log_prob_recurrent(obs, action, state):
        dist_params, _, _ = network.apply(params, normalizer.obs(norm, obs), full(state))
        return dist.log_prob(dist_params, action)

    return Reference(act_recurrent, log_prob_recurrent, size)


def observations(parts, count: int, seed: int) -> np.ndarray:
    """`count` observations [count, *obs_shape] of the run's env, met by 50 envs under uniformly
    random actions (an env resets where its episode ends), collected by the run's loop kind's
    rollout (rlcli.rollout)."""
    from rlcli import normalize, rollout
    from rlcli.algos import sac
    from rlcli.types import ActInfo, Algorithm, Batch

    spec, num_envs = parts.spec, 50
    steps = -(-count // num_envs)

    def random_act(learner, obs, key, deterministic=False):
        action, log_prob = sac.random_action(key, spec, obs.shape[:1])
        return action, ActInfo(log_prob, jnp.zeros_like(log_prob))

    if parts.backend_name == "jax":
        from rlcli.envs import jax_backend

        env = jax_backend.make(spec.id, spec.observed)
        collect = rollout.jax_collect(Algorithm(None, random_act, None), env,
                                      normalize.Normalizer(lambda norm, x: x, None), num_envs)

        @jax.jit
        def run(key):
            k_reset, k_run = jax.random.split(key)
            first_obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
            carry = rollout.EnvCarry(env_state, first_obs, k_run, rollout.empty_stats(num_envs))
            return collect(None, None, carry, steps)[1].obs

        seen = np.asarray(run(jax.random.PRNGKey(seed)))
    else:
        from rlcli.envs import gymnasium_backend

        @jax.jit
        def policy(obs, key):  # obs [1, N, ...] (one seed)
            key, k_act = jax.random.split(key)
            return random_act(None, obs[0], k_act)[0][None], None, key

        envs = gymnasium_backend.make(spec.id, num_envs, seed, "sync")
        try:
            first_obs = envs.reset()[None]
            shape = (steps, 1, num_envs)
            action = np.zeros(shape if spec.discrete else shape + (spec.num_actions,),
                              np.int32 if spec.discrete else np.float32)
            empty = np.zeros(shape, np.float32)
            batch = Batch(np.zeros(shape + spec.obs_shape, np.float32), action, empty.copy(),
                                  empty.astype(bool), empty.astype(bool), None, None,
                                  np.zeros(shape + spec.obs_shape, np.float32))
            seen = rollout.host_collect(policy, [envs], batch, first_obs, jax.random.PRNGKey(seed))[0].obs
        finally:
            envs.close()
    return np.asarray(seen).reshape((-1, *spec.obs_shape))[:count].astype(np.float32)


# ---- the formats ------------------------------------------------------------------------------


def _exported(fn, spec, with_action: bool, state_size: int | None = None):
    from jax import export

    (batch,) = export.symbolic_shape("batch")
    args = [jax.ShapeDtypeStruct((batch, *spec.obs_shape), jnp.float32)]
    if with_action:
        args.append(jax.ShapeDtypeStruct((batch,), jnp.int32) if spec.discrete
                    else jax.ShapeDtypeStruct((batch, spec.num_actions), jnp.float32))
    if state_size is not None:
        args.append(jax.ShapeDtypeStruct((batch, state_size), jnp.float32))
    return export.export(jax.jit(fn))(*args)


def write(fmt: str, directory: Path, policy: dict[str, np.ndarray], ref: Reference, spec) -> list[str]:
    """Write format `fmt` into `directory`; returns the files' names."""
    if fmt == "npz":
        np.savez(directory / "policy.npz", **policy)
        shutil.copyfile(exported_policy.__file__, directory / "policy.py")
    elif fmt == "onnx":
        import onnx

        from rlcli.export_onnx import onnx_model

        onnx.save(onnx_model(policy), str(directory / "policy.onnx"))
    else:
        act = _exported(ref.act, spec, False, ref.state_size)
        (directory / "act.stablehlo").write_bytes(act.serialize())
        (directory / "log_prob.stablehlo").write_bytes(_exported(ref.log_prob, spec, True, ref.state_size).serialize())
        (directory / "act.mlir").write_text(act.mlir_module())
    return list(FILES[fmt])


def runtime(fmt: str, directory: Path) -> tuple[Callable, Callable | None]:
    """(act, log_prob or None) of an export as its own runtime loads it: policy.py's functions on
    policy.npz, an onnxruntime session, or the deserialized `jax.export` programs."""
    if fmt == "npz":
        policy = exported_policy.load(directory / "policy.npz")
        if "gru_size" in policy:
            return (lambda obs, state: exported_policy.act(obs, policy=policy, state=state),
                    lambda obs, action, state: exported_policy.log_prob(obs, action, policy=policy, state=state)[0])
        return (lambda obs: exported_policy.act(obs, policy=policy),
                lambda obs, action: exported_policy.log_prob(obs, action, policy=policy))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(directory / "policy.onnx"), providers=["CPUExecutionProvider"])
        if "state" in [i.name for i in session.get_inputs()]:
            return (lambda obs, state: tuple(session.run(["action", "next_state"], {
                "obs": np.asarray(obs, np.float32), "state": np.asarray(state, np.float32)})), None)
        return lambda obs: session.run(["action"], {"obs": np.asarray(obs, np.float32)})[0], None
    from jax import export

    act = export.deserialize(bytearray((directory / "act.stablehlo").read_bytes()))
    log_prob = export.deserialize(bytearray((directory / "log_prob.stablehlo").read_bytes()))
    return act.call, log_prob.call


def parity(fmt: str, directory: Path, ref: Reference, spec, obs: np.ndarray, actions: np.ndarray) -> dict:
    """The export in `directory` against rlcli's reference on observations `obs` [B, ...]: for a
    Discrete space how many deterministic actions differ, for a Box one the largest absolute
    difference; where the format gives them, the largest absolute difference of log pi(a|s)
    at `actions`."""
    act, log_prob = runtime(fmt, directory)
    if ref.state_size is not None:
        return _parity_recurrent(act, log_prob, ref, spec, obs, actions)
    expected = np.asarray(jax.jit(ref.act)(obs))
    got = np.asarray(act(obs))
    result = {"observations": int(obs.shape[0])}
    if spec.discrete:
        result["actions_differing"] = int(np.sum(got.astype(np.int64) != expected.astype(np.int64)))
    else:
        result["max_action_error"] = float(np.max(np.abs(got - expected)))
    if log_prob is not None:
        expected_lp = np.asarray(jax.jit(ref.log_prob)(obs, actions))
        result["max_log_prob_error"] = float(np.max(np.abs(np.asarray(log_prob(obs, actions)) - expected_lp)))
    return result


def _parity_recurrent(act, log_prob, ref: Reference, spec, obs, actions, steps: int = 10) -> dict:
    """A recurrent policy's parity: the observations as `steps` consecutive steps of B
    sequences, each side carrying its own hidden state from zeros; every step's actions are
    compared, log pi(a|s) at the reference's state, and the states themselves."""
    batch = obs.shape[0] // steps
    obs = obs[:batch * steps].reshape((steps, batch, *obs.shape[1:]))
    actions = actions[:batch * steps].reshape((steps, batch, *actions.shape[1:]))
    ref_act, ref_log_prob = jax.jit(ref.act), jax.jit(ref.log_prob)
    ref_state = got_state = np.zeros((batch, ref.state_size), np.float32)
    differing, action_error, log_prob_error, state_error = 0, 0.0, 0.0, 0.0
    for t in range(steps):
        expected, next_ref = (np.asarray(x) for x in ref_act(obs[t], ref_state))
        got, got_state = (np.asarray(x) for x in act(obs[t], got_state))
        if spec.discrete:
            differing += int(np.sum(got.astype(np.int64) != expected.astype(np.int64)))
        else:
            action_error = max(action_error, float(np.max(np.abs(got - expected))))
        if log_prob is not None:
            lp = np.asarray(log_prob(obs[t], actions[t], ref_state))
            log_prob_error = max(log_prob_error, float(np.max(np.abs(lp - np.asarray(ref_log_prob(obs[t], actions[t],
                                                                                                  ref_state))))))
        ref_state = next_ref
        state_error = max(state_error, float(np.max(np.abs(got_state - ref_state))))
    result = {"observations": batch * steps, "sequences": batch, "steps": steps, "max_state_error": state_error}
    result.update({"actions_differing": differing} if spec.discrete else {"max_action_error": action_error})
    if log_prob is not None:
        result["max_log_prob_error"] = log_prob_error
    return result


def passes(result: dict, atol: float = 1e-5) -> bool:
    """Discrete actions all equal; continuous actions, log-probs and hidden states within `atol`."""
    return (result.get("actions_differing", 0) == 0 and result.get("max_action_error", 0.0) <= atol
            and result.get("max_log_prob_error", 0.0) <= atol and result.get("max_state_error", 0.0) <= atol)


def manifest(fmt: str, files: list[str], parts, meta: dict, seed_index: int, result: dict) -> str:
    """export.json: what was exported, from where, and its parity check."""
    spec = parts.spec
    action_space = ({"type": "Discrete", "n": spec.num_actions} if spec.discrete else
                    {"type": "Box", "shape": [spec.num_actions], "low": list(spec.action_low),
                     "high": list(spec.action_high)})
    recurrent = {"state_size": int(parts.cfg.network.gru_size)} if parts.cfg.network.name == "gru" else {}
    return json.dumps({"format": fmt, "files": files, "algo": parts.cfg.algo.name, "env": spec.id, **recurrent,
                       "obs_shape": list(spec.obs_shape), "action_space": action_space,
                       "checkpoint": int(meta["env_steps"]), "update": int(meta["update"]),
                       "seed_index": seed_index, "seed": parts.cfg.seed + seed_index,
                       "normalize_obs": bool(parts.cfg.normalize.obs), "parity": result}, indent=2) + "\n"
