"""`rlcli diagnose [run=<run dir>] [key=value ...]`: how noisy is each policy-gradient estimator?

For one policy (the initial policy of `seed` for the composed config, or a run's checkpoint)
whole episodes are sampled on the env (jax backend, one episode per column from a reset,
`rollout.jax_fresh_episodes`) and the policy gradient is estimated with every estimator and
baseline `rlcli train` accepts for an on-policy algorithm (`estimator_names`; what each row is:
COMMAND's description) through the production estimators (`rlcli.estimators`, `rlcli.losses`).
Each estimate is the seed's (1/N) sum_i sum_t grad log pi(a_t|s_t) Phi_t over a batch's N
episodes. The reference, reward_to_go minus V with discounting option 2 and no bootstrap at the
time limit, is unbiased for the gradient of E[sum_t gamma^t r_t] (000 eq. 3.1.10, 4.1.8, 4.2.2)
whatever the critic; with `gamma` = 1 (the default) every Monte-Carlo row has the same
expectation, the mean baseline's up to its (1 - 1/N) factor (000 eq. 3.1.11).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from rlcli import arguments
from rlcli.arguments import Command, Option, text_of
from rlcli.errors import ConfigError
from rlcli.rules import in_unit_interval, int_at_least, non_empty_text

COMMAND = Command(
    "diagnose", "[run=<run dir>] [batches=B] [batch_episodes=N] [reference_episodes=M] [gamma=G] "
    "[out=<dir>] [key=value ...]",
    """Estimates the policy gradient of one policy with every estimator and baseline rlcli train
accepts (total_return x none, mean, leave_one_out, value, optimal; reward_to_go x none, mean,
leave_one_out, value, and q_control_variate for a run that fitted a Q critic; discounting option
2 too when gamma < 1; td, nstep, gae) on B independent batches of N whole episodes and prints,
per estimator, the variance of a single-batch estimate (trace of the covariance), and the
cosine similarity and relative error against a reference gradient (reward_to_go with the value
baseline and discounting option 2, no bootstrap at the time limit, on M more episodes) of the
mean over the batches and of single-batch estimates. gamma (1: every Monte-Carlo estimator is then unbiased for the
undiscounted gradient) discounts the returns. The policy: run=<run dir> restores the run's
latest checkpoint (its first seed); without run=, the initial policy of seed= for the config
composed from the key=value overrides, as `rlcli train` would start it (e.g. env=CartPole-v1
seed=3 network.hidden_sizes=[32]). Writes diagnose.csv, diagnose.json and diagnose.png. Needs
an env of the jax backend and an on-policy actor-critic algorithm (a2c, ppo, reinforce, trpo,
npg ...).""",
    (Option("run", None, non_empty_text(), "the run whose latest checkpoint is the policy", text_of),
     Option("batches", 64, int_at_least(2), "independent batches B"),
     Option("batch_episodes", 16, int_at_least(2), "whole episodes N per batch"),
     Option("reference_episodes", 4096, int_at_least(2), "episodes M of the reference gradient"),
     Option("gamma", 1.0, in_unit_interval(), "discount of the returns"),
     Option("out", None, non_empty_text(), "where to write (default: <run>/diagnose, or "
            "outputs/diagnose/<date>/<time>-<env>; a name taken gets -1, -2, ...)", text_of)),
    overrides="config overrides (key=value, group=option) of the policy's config",
)
REFERENCE = "reward_to_go/value/option2"
BASELINES = {"total_return": ("none", "mean", "leave_one_out", "value", "optimal"),
             "reward_to_go": ("none", "mean", "leave_one_out", "value", "q_control_variate")}
CRITIC_ESTIMATORS = ("td", "nstep", "gae")


def estimator_names(gamma: float, has_q: bool) -> tuple[str, ...]:
    """The rows: <estimator>/<baseline>[/option2] and the critic-based estimators."""
    names = []
    for estimator, baselines in BASELINES.items():
        for baseline in baselines:
            if baseline == "q_control_variate" and not has_q:
                continue
            names.append(f"{estimator}/{baseline}")
            if gamma < 1.0 and baseline not in ("optimal", "q_control_variate"):
                names.append(f"{estimator}/{baseline}/option2")
    return (*names, *CRITIC_ESTIMATORS)
FIELDS = ("estimator", "variance", "cos_mean", "rel_err_mean", "cos_single", "rel_err_single")


class Options(NamedTuple):
    cfg: Any
    run_dir: Path | None
    out: Path
    batches: int
    batch_episodes: int
    reference_episodes: int
    gamma: float
    out_named: bool = False  # out= given: written into as it is; else a new directory is claimed


def parse(args: list[str]) -> Options:
    """Options from the arguments; raises ConfigError (one line) for bad input."""
    from rlcli.commands.common import composition_error, load_run
    from rlcli.config import compose, typed, validate

    parsed = arguments.parse(COMMAND, args)
    own, overrides, values = parsed.given, parsed.overrides, parsed.values
    if "run" in own:
        run_dir, cfg = load_run([f"run={own['run']}", *overrides])
    else:
        run_dir = None
        try:
            cfg = compose(overrides)
        except Exception as err:  # Hydra's parse and composition errors
            raise ConfigError(composition_error(err, overrides)) from None
    validate(cfg)
    cfg = typed(cfg)
    from rlcli import algos, envs

    if envs.resolve_backend(cfg.env.id, cfg.env.backend) != "jax":
        raise ConfigError(f"env.id={cfg.env.id!r} has no jax backend here (allowed with rlcli diagnose: "
                          f"an env of the jax backend, one of {', '.join(_jax_ports())})")
    if "none" in algos.module(cfg.algo.name).ESTIMATORS:
        raise ConfigError(f"algo={cfg.algo.name} is not supported by rlcli diagnose (allowed: an on-policy "
                          "actor-critic algorithm, e.g. algo=reinforce, a2c, ppo)")
    if cfg.network.name == "gru":
        raise ConfigError("network=gru is not supported by rlcli diagnose, whose estimates are of feed-forward "
                          "policies (allowed: network=mlp or network=cnn)")
    for key in ("obs", "reward"):
        if cfg.normalize[key]:
            raise ConfigError(f"normalize.{key}=true is not supported by rlcli diagnose (allowed: "
                              f"normalize.{key}=false)")
    batch_episodes, reference_episodes = int(values["batch_episodes"]), int(values["reference_episodes"])
    if reference_episodes < 2 * batch_episodes:  # the reference's variance is over >= 2 chunks of a batch's size
        raise ConfigError(f"reference_episodes={reference_episodes} is less than two chunks of batch_episodes="
                          f"{batch_episodes} (allowed: reference_episodes >= 2 x batch_episodes = "
                          f"{2 * batch_episodes})")
    if "out" in own:
        out = Path(own["out"])
    elif run_dir is not None:
        out = run_dir / "diagnose"
    else:
        out = Path("outputs") / "diagnose" / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{cfg.env.id}"
    return Options(cfg, run_dir, out, int(values["batches"]), int(values["batch_episodes"]),
                   int(values["reference_episodes"]), float(values["gamma"]), "out" in own)


def _jax_ports():
    from rlcli.envs.jax_backend import PORTS

    return PORTS


def policy_params(opts: Options):
    """The network parameters of the policy: the run's latest checkpoint (first seed) or the
    initial parameters of `seed` (the key the jax loop's init gives the learner)."""
    import jax

    from rlcli import train

    parts = train.setup(opts.cfg)
    if opts.run_dir is not None:
        loop = train.make_loop(parts)
        state, _ = train.restore_checkpoint(loop, opts.run_dir / "checkpoints")
        params = jax.tree.map(lambda x: x[0], state.learner.params)
    else:
        key = jax.random.split(jax.random.PRNGKey(opts.cfg.seed), 3)[0]
        params = parts.algo.init(key).params
    q_params = None
    if isinstance(params, dict) and "actor_critic" in params:  # reinforce with a Q critic
        params, q_params = params["actor_critic"], params["q"]
    return parts.spec, params, q_params


def rollouts(cfg, spec, network, dist, params, key, num: int):
    """`num` episodes, one per column from a reset, to the env's time limit: obs, action,
    reward, terminated, truncated, next_obs [T, num, ...] and mask [T, num] (1 up to the
    episode's end), from `rollout.jax_fresh_episodes` with the policy's sampled actions."""
    import jax.numpy as jnp

    from rlcli import normalize, rollout
    from rlcli.envs import jax_backend
    from rlcli.types import ActInfo

    class Policy(NamedTuple):
        act: Any

    def act(params, obs, key, deterministic=False):
        action = dist.sample(key, network.apply(params, obs)[0])
        zeros = jnp.zeros(obs.shape[:1], jnp.float32)
        return action, ActInfo(zeros, zeros)

    env = jax_backend.make(spec.id, spec.observed)
    batch, mask = rollout.jax_fresh_episodes(Policy(act), env, normalize.make(cfg), params, None, key, num,
                                             int(spec.max_episode_steps))
    return batch.obs, batch.action, batch.reward, batch.terminated, batch.truncated, batch.next_obs, mask


def estimates(cfg, spec, params, data, batches: int, batch_episodes: int, gamma: float, names: tuple[str, ...],
              q_params=None):
    """Per batch and estimator of `names` the gradient estimate, flattened: [batches, len(names), P]."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from rlcli import distributions, estimators, losses, networks

    network = networks.make(cfg.network, spec)
    dist = distributions.for_action_space(spec.discrete)
    lam = cfg.estimator["lambda"] if cfg.estimator.name == "gae" else 0.95
    n = cfg.estimator.n if cfg.estimator.name == "nstep" else None
    flat_params, unravel = ravel_pytree(params)
    q_net = None if q_params is None else networks.QNetwork(
        spec.num_actions, spec.discrete, tuple(cfg.network.hidden_sizes), cfg.network.activation, len(spec.obs_shape))

    def phis(batch):
        obs, action, reward, terminated, truncated, next_obs, mask = batch
        _, values = network.apply(params, obs)
        _, next_values = network.apply(params, next_obs)  # V(s'): td, nstep, gae bootstrap at a truncation
        out = []
        for name in names:
            if name in CRITIC_ESTIMATORS:
                fn = estimators.make(name, gamma, **({"lam": lam} if name == "gae" else {"n": n} if name == "nstep"
                                                     else {}))
            else:
                estimator, baseline, *option = name.split("/")
                fn = estimators.make(estimator, gamma, discounting=(option or ["option1"])[0], baseline=baseline)
            phi = estimators.batched(fn)(reward, values, next_values, terminated, truncated)[0]
            if name.split("/")[1:2] in (["mean"], ["leave_one_out"]):
                phi = estimators.subtract_mean_baseline(phi, terminated, truncated, mask,
                                                        per_step=name.startswith("reward_to_go"),
                                                        leave_one_out="/leave_one_out" in name)
            out.append(phi * mask)
        return jnp.stack(out)

    def surrogate_grad(flat, batch, phi):
        """(1/N) sum_i sum_t grad log pi(a_t|s_t) Phi_t: minus n_steps / N x the gradient of the
        production surrogate `losses.policy_gradient_loss`."""
        obs, action, *_, mask = batch

        def loss(f):
            log_prob = dist.log_prob(network.apply(unravel(f), obs)[0], action)
            return losses.policy_gradient_loss(log_prob, phi, mask)
        return -jax.grad(loss)(flat) * jnp.sum(mask) / batch_episodes

    def control_variate_grad(flat, batch, phi, key):
        """000 eq. 4.2.6 with the run's Q_w: (1/N) sum_i sum_t [grad log pi (G_t - Q_w(s_t, a_t)) +
        grad E_pi Q_w(s_t, .)], from the production `estimators.control_variate_loss`."""
        obs, action, *_, mask = batch

        def loss(f):
            dist_params = network.apply(unravel(f), obs)[0]
            log_prob = dist.log_prob(dist_params, action)
            if spec.discrete:
                q_all = q_net.apply(q_params, obs)
                q_taken = jnp.take_along_axis(q_all, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
                expected_q = estimators.expected_q_discrete(dist_params, q_all)
            else:
                q_taken = q_net.apply(q_params, obs, action)
                mean, log_std = dist_params
                sample = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
                expected_q = q_net.apply(q_params, obs, sample)
            return estimators.control_variate_loss(log_prob, expected_q, phi, q_taken, jnp.ones_like(phi), mask)
        return -jax.grad(loss)(flat) * jnp.sum(mask) / batch_episodes

    def one_batch(batch):
        obs, action, *_, mask = batch
        phi = phis(batch)
        rows = []
        for e, name in enumerate(names):
            if name == "total_return/optimal":
                def episode_score(o, a, m):
                    return jax.grad(lambda f: jnp.sum(m * dist.log_prob(network.apply(unravel(f), o)[0], a)))(
                        flat_params)
                scores = jax.vmap(episode_score, in_axes=1)(obs, action, mask)  # [N, P] g(tau_i)
                returns = phi[e, 0]  # R(tau_i) at each episode's first step
                rows.append(estimators.optimal_baseline_gradient(scores, returns, jnp.ones(batch_episodes))
                            / batch_episodes)
            elif name == "reward_to_go/q_control_variate":
                rows.append(control_variate_grad(flat_params, batch, phi[e], jax.random.PRNGKey(e)))
            else:
                rows.append(surrogate_grad(flat_params, batch, phi[e]))
        return jnp.stack(rows)

    def split(x):  # [T, B * N, ...] -> [B, T, N, ...]
        x = x.reshape((x.shape[0], batches, batch_episodes) + x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    return jax.jit(lambda d: jax.lax.map(one_batch, tuple(split(x) for x in d)))(data), flat_params.size


def reference(cfg, spec, params, data, chunk: int, gamma: float):
    """The reference estimator's estimates [chunks, P] over the data, `chunk` episodes each
    (their mean is the reference gradient)."""
    import numpy as np

    est, _ = estimates(cfg, spec, params, data, data[0].shape[1] // chunk, chunk, gamma, (REFERENCE,))
    return np.asarray(est[:, 0])


def _cos(a, b):
    import numpy as np

    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def summarize(names, batch_estimates, ref, ref_chunks) -> list[dict]:
    """Rows of FIELDS per estimator and one for the reference itself (its variance per
    chunk of the same size as a batch)."""
    import numpy as np

    ref_norm = max(float(np.linalg.norm(ref)), 1e-30)
    rows = []
    for name, est in [*zip(names, np.moveaxis(batch_estimates, 1, 0)), ("reference", ref_chunks)]:
        est = np.asarray(est, np.float64)
        mean = est.mean(axis=0)
        rows.append({
            "estimator": name if name != "reference" else f"reference ({REFERENCE})",
            "variance": float(est.var(axis=0, ddof=1).sum()),
            "cos_mean": _cos(mean, ref) if name != "reference" else _cos(ref, ref),
            "rel_err_mean": float(np.linalg.norm(mean - ref) / ref_norm),
            "cos_single": float(np.mean([_cos(e, ref) for e in est])),
            "rel_err_single": float(np.mean(np.linalg.norm(est - ref, axis=1) / ref_norm)),
        })
    return rows


def run(opts: Options) -> dict:
    import jax
    import numpy as np

    from rlcli import distributions, networks

    spec, params, q_params = policy_params(opts)
    names = estimator_names(opts.gamma, q_params is not None)
    network = networks.make(opts.cfg.network, spec)
    dist = distributions.for_action_space(spec.discrete)
    key = jax.random.fold_in(jax.random.PRNGKey(opts.cfg.seed), 7_000_003)
    k_batches, k_ref = jax.random.split(key)
    collect = jax.jit(lambda k, n: rollouts(opts.cfg, spec, network, dist, params, k, n), static_argnums=1)
    num = opts.batches * opts.batch_episodes
    num_ref = opts.reference_episodes // opts.batch_episodes * opts.batch_episodes
    data, ref_data = collect(k_batches, num), collect(k_ref, num_ref)
    # only the steps up to the longest episode matter (the rest is masked)
    longest = int(max(np.asarray(d[-1]).sum(axis=0).max() for d in (data, ref_data)))
    data, ref_data = (tuple(x[:longest] for x in d) for d in (data, ref_data))
    batch_est, size = estimates(opts.cfg, spec, params, data, opts.batches, opts.batch_episodes, opts.gamma, names,
                                q_params)
    ref_chunks = reference(opts.cfg, spec, params, ref_data, opts.batch_episodes, opts.gamma)
    ref = ref_chunks.astype(np.float64).mean(axis=0)
    rows = summarize(names, np.asarray(batch_est), ref, ref_chunks)
    ref_se = math.sqrt(rows[-1]["variance"] / ref_chunks.shape[0]) / max(float(np.linalg.norm(ref)), 1e-30)
    lengths = np.asarray(data[-1]).sum(axis=0)
    return {"algo": opts.cfg.algo.name, "env": spec.id, "policy": str(opts.run_dir) if opts.run_dir else
            f"initial (seed {opts.cfg.seed})", "gamma": opts.gamma, "batches": opts.batches,
            "batch_episodes": opts.batch_episodes, "reference_episodes": num_ref, "parameters": int(size),
            "episode_length_mean": float(lengths.mean()), "reference_norm": float(np.linalg.norm(ref)),
            "reference_rel_se": ref_se, "rows": rows}


def table(result: dict) -> str:
    from rlcli.commands.common import aligned

    rows = [[r["estimator"], f"{r['variance']:.4g}", f"{r['cos_mean']:.4f}", f"{r['rel_err_mean']:.4f}",
             f"{r['cos_single']:.4f}", f"{r['rel_err_single']:.4f}"] for r in result["rows"]]
    return aligned(list(FIELDS), rows)


def write(result: dict, out: Path) -> None:
    import csv

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnose.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / "diagnose.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(result["rows"])
    rows = result["rows"][:-1]
    names = [r["estimator"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    axes[0].barh(names, [r["variance"] for r in rows], color="tab:blue")
    axes[0].set_xscale("log")
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_xlabel("variance of a single-batch estimate (trace of covariance)")
    axes[1].barh(names, [r["cos_single"] for r in rows], color="tab:orange", label="single batch")
    axes[1].barh(names, [r["cos_mean"] for r in rows], color="none", edgecolor="black", label="mean over batches")
    axes[1].set_xlabel("cosine similarity with the reference gradient")
    axes[1].set_xlim(min(0.0, min(r["cos_single"] for r in rows)), 1.0)
    axes[1].legend(loc="lower right", fontsize=8)
    axes[1].set_yticklabels([])
    fig.suptitle(f"{result['algo']} on {result['env']}, policy {result['policy']}: {result['batches']} batches x "
                 f"{result['batch_episodes']} episodes, gamma {result['gamma']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "diagnose.png", dpi=100)
    plt.close(fig)


def main(args: list[str]) -> int:
    if arguments.wants_help(args):
        print(arguments.usage(COMMAND))
        return 0
    from rlcli.commands.common import quiet_logging
    from rlcli.errors import report
    from rlcli.paths import claim_dir

    quiet_logging()
    try:
        opts = parse(args)
        result = run(opts)
        # a directory diagnose names itself is claimed for this process (-1, -2, ... when taken)
        opts = opts._replace(out=opts.out if opts.out_named else claim_dir("out", opts.out, named_by_user=False))
        write(result, opts.out)
    except Exception as err:
        code = report("diagnose", err)
        if code is None:
            raise
        return code
    print(f"rlcli diagnose: {result['algo']} on {result['env']}, policy {result['policy']}; {result['batches']} "
          f"batches x {result['batch_episodes']} episodes (mean length {result['episode_length_mean']:.1f}), "
          f"gamma {result['gamma']}, {result['parameters']} parameters; reference: {REFERENCE} on "
          f"{result['reference_episodes']} episodes, relative standard error {result['reference_rel_se']:.3f}")
    print(table(result))
    print(f"wrote {opts.out / 'diagnose.csv'}, diagnose.json, diagnose.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
