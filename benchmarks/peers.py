"""Side-by-side benchmark: rlcli against rejax and Stable-Baselines3, one table.

Run from the repository root:

    python benchmarks/peers.py --peers-python /work/peers-venv/bin/python   # peers in their own venv
    python benchmarks/peers.py --reps 5             # repetitions (default 3; SB3 SAC alone ~4 min each)
    python benchmarks/peers.py --rows 1,2           # only some rows (default: 1-6)
    python benchmarks/peers.py --scale 0.2          # throughput budgets (rows 1, 3, 4, 5) x 0.2
    python benchmarks/peers.py --quick --reps 1     # smoke test: tiny budgets
    python benchmarks/peers.py --only rlcli         # rlcli rows only (peers skipped, with the reason)
    python benchmarks/peers.py --seeds 1024 --seed-counts 1,32,1024   # on a GPU: many seeds

The table is printed after every repetition (medians so far), so a long run stopped early still
leaves one. Stable-Baselines3 runs with torch.set_num_threads(1) (--torch-threads): its small
MLPs are fastest on one thread, and torch's two-thread pool stalls badly on a busy machine.

Rows (figures are medians over the repetitions; the repetitions of all rows are interleaved,
so a change in background load hits every row alike):

1. PPO CartPole-v1 with rejax's own configuration (5 envs x 100 steps, 5 epochs, 5 minibatches,
   500k env steps): wall time including compilation, compile time and run-phase env steps/s,
   for one seed (rlcli twice: a cold and a warm persistent compilation cache, a fresh
   cache directory per pair, rlcli's compile_cache; every other rlcli run compiles cold) and
   for 8 seeds (--seeds; rlcli num_seeds=8; rejax jit(vmap), and, where JAX runs on the CPU,
   rejax pmap over 2 host devices x vmap 4, the reference of the 8-seed goal).
2. Wall time from the start of training (compilation included) to the first mean evaluation
   return >= 475 on CartPole-v1 (10 deterministic episodes every 10k env steps): rlcli PPO and
   A2C with their shipped tuned configs (cold and warm cache) against Stable-Baselines3 PPO and
   A2C with the RL Baselines3 Zoo settings (8 envs) and an EvalCallback that stops training.
3. SAC Pendulum-v1, 20k env steps, Stable-Baselines3's settings (256x256 ReLU networks, batch
   256, one gradient step per env step, Adam 1e-3 as in the RL Zoo, 20k-row buffer): wall and
   final return of rlcli, Stable-Baselines3 and rejax; rlcli also with a 1M-row buffer; the
   achieved GFLOP/s of rlcli's update beside the machine's measured f32 matmul GFLOP/s.
4. gymnasium backend: rlcli A2C on CartPole-v1 with 64 envs, env steps/s, against the host-loop
   ceiling "gymnasium vector env (64 envs, vector_entry_point) + a jitted flax policy per step".
5. num_seeds=K for K = 1, 4, 16 (--seed-counts; PPO, row 1's settings): wall per seed, against
   one run, and run-phase env steps/s over all seeds.
6. Peak resident memory of a default `rlcli train algo=ppo env=CartPole-v1` (getrusage of the
   child process).

Every measurement runs in its own subprocess (a fresh interpreter: one package's imports and
thread pools don't disturb another's); rlcli's run in this interpreter, the peers' in
--peers-python (default: this interpreter). A row whose peer cannot be imported there is
skipped with the reason printed; rlcli's rows always run. The ratio column is ours/peer for
every row (times: lower is better; steps/s: higher is better); the goal column holds rlcli's
performance goals.
Timings depend on the machine and on what else runs on it: compare rows of one invocation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

TARGET_RETURN = 475.0
EVAL_INTERVAL = 10_000  # env steps between evaluations of the time-to-475 runs
RSS_LIMIT_GIB = 1.5

# rejax's PPO CartPole-v1 configuration (rejax configs/gymnax/cartpole.yaml; 500k steps), with rlcli's keys
REJAX_PPO = {"num_envs": 5, "num_steps": 100, "num_epochs": 5, "num_minibatches": 5,
             "learning_rate": 7.5e-4, "max_grad_norm": 0.5, "gamma": 0.99, "gae_lambda": 0.95,
             "clip_eps": 0.2, "ent_coef": 0.01, "vf_coef": 0.5}
RLCLI_PPO = ["algo=ppo", "env=CartPole-v1", "num_envs=5", "algo.num_steps=100", "algo.update_epochs=5",
             "algo.num_minibatches=5", "algo.learning_rate=7.5e-4", "algo.anneal_lr=false",
             "algo.max_grad_norm=0.5", "algo.gamma=0.99", "estimator.lambda=0.95",
             "algo.clip_coef=0.2", "algo.ent_coef=0.01", "algo.vf_coef=0.5",
             "network.hidden_sizes=[64,64]", "network.activation=tanh"]
# SAC on Pendulum-v1 with Stable-Baselines3's network and batch, the RL Zoo's learning rate
SAC = {"hidden": 256, "batch_size": 256, "learning_rate": 1e-3, "buffer_size": 20_000,
       "learning_starts": 100, "tau": 0.005}
RLCLI_SAC = ["algo=sac", "env=Pendulum-v1", "num_envs=1", "network.hidden_sizes=[256,256]",
             "network.activation=relu", f"algo.batch_size={SAC['batch_size']}",
             f"algo.learning_rate={SAC['learning_rate']}", f"algo.learning_starts={SAC['learning_starts']}",
             "algo.gradient_steps=1", "algo.num_steps=1"]

BUDGET = {  # env steps (per seed)
    "full": {"ppo": 500_000, "ppo8": 500_000, "solve_ppo": 100_000, "solve_a2c": 500_000,
             "sac": 20_000, "gym": 200_000, "ceiling": 3_000, "seeds": 100_000, "rss": None},
    "quick": {"ppo": 25_000, "ppo8": 25_000, "solve_ppo": 20_000, "solve_a2c": 20_000,
              "sac": 600, "gym": 10_000, "ceiling": 300, "seeds": 5_000, "rss": 5_000},
}
SEED_COUNTS = (1, 4, 16)  # row 5 (the first, 1, is the reference)
SEEDS = 8  # row 1's many-seed runs
ROWS = (1, 2, 3, 4, 5, 6)


def budget(mode: str, scale: float = 1.0) -> dict:
    """The mode's budgets, the throughput ones (not time-to-475, not peak RSS) times `scale`."""
    out = dict(BUDGET[mode])
    for key in ("ppo", "ppo8", "sac", "gym", "ceiling", "seeds"):
        out[key] = max(int(out[key] * scale), 1)
    if out["sac"] <= SAC["learning_starts"]:
        out["sac"] = SAC["learning_starts"] + 100
    return out


# ==== workers: each runs in its own subprocess and prints one line "RESULT <json>" ==============


def _compose(overrides: list[str]):
    from rlcli.config import compose

    return compose(overrides)


def work_rlcli(p: dict) -> dict:
    """One rlcli training run in-process (this subprocess), into a temporary directory."""
    from rlcli import train as training
    from rlcli.logger import read_metrics
    from rlcli.runtime import limit_threads

    overrides = list(p["overrides"]) + ["logger=quiet", "checkpoint_interval=100000000"]
    if "compile_cache" in _compose([]):  # rlcli's persistent compilation cache: the given directory
        overrides.append(f"compile_cache={p['cache']}")
    cfg = _compose(overrides)
    limit_threads(cfg)  # as `rlcli train` does before JAX starts: threads, one CPU device per core
    with tempfile.TemporaryDirectory(prefix="rlcli-peers-") as run_dir:
        summary = training.train(cfg, Path(run_dir))
        records = read_metrics(Path(run_dir))
    solve = next(((r["wall_time"], r["env_steps"]) for r in records
                  if r.get("eval/return_mean") is not None and r["eval/return_mean"] >= TARGET_RETURN),
                 (math.inf, math.inf))
    return {"wall_s": summary["wall_time_s"], "compile_s": summary["compile_time_s"],
            "run_s": summary["run_time_s"], "steps_per_s": summary["steps_per_second"],
            "return": summary["final_eval_return_mean"], "solve_s": solve[0], "solve_steps": solve[1],
            "num_updates": summary["num_updates"]}


def work_ceiling(p: dict) -> dict:
    """gymnasium's CartPole vector env (vector_entry_point) stepped from the host with a jitted
    flax actor-critic (64x64 tanh, separate actor and critic as rlcli's default) sampling each
    action: the host-loop ceiling of a gymnasium-backend trainer that never updates."""
    import gymnasium
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    class MLP(nn.Module):
        out: int

        @nn.compact
        def __call__(self, x):
            for _ in range(2):
                x = jnp.tanh(nn.Dense(64)(x))
            return nn.Dense(self.out)(x)

    class ActorCritic(nn.Module):
        @nn.compact
        def __call__(self, obs):
            return MLP(2)(obs), MLP(1)(obs)[..., 0]

    num_envs, iters = p["num_envs"], p["iters"]
    envs = gymnasium.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="vector_entry_point")
    obs, _ = envs.reset(seed=0)
    net = ActorCritic()
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((num_envs, 4)))

    @jax.jit
    def act(params, obs, key):
        key, sub = jax.random.split(key)
        logits, value = net.apply(params, obs)
        return jax.random.categorical(sub, logits), value, key

    key = jax.random.PRNGKey(1)
    for _ in range(20):  # compile and warm up
        action, _, key = act(params, obs, key)
        obs, *_ = envs.step(np.asarray(action))
    start = time.perf_counter()
    for _ in range(iters):
        action, _, key = act(params, obs, key)
        obs, *_ = envs.step(np.asarray(action))
    elapsed = time.perf_counter() - start
    return {"steps_per_s": iters * num_envs / elapsed}


def work_rss(p: dict) -> dict:
    """Peak RSS of a `rlcli train` child process (getrusage RUSAGE_CHILDREN: this worker has
    no other child)."""
    import resource

    with tempfile.TemporaryDirectory(prefix="rlcli-peers-rss-") as run_dir:
        args = [sys.executable, "-m", "rlcli", "train", *p["overrides"], f"hydra.run.dir={run_dir}"]
        out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {out.stderr[-2000:]}")
    return {"rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def work_matmul(p: dict) -> dict:
    """The machine's f32 matmul GFLOP/s through XLA (n x n, all cores)."""
    import jax
    import jax.numpy as jnp

    n = p["n"]
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * n**3 / best / 1e9}


def _timed(staged, *args):
    """(output, compile seconds, run seconds) of `staged(*args)`, a jax.jit or jax.pmap function."""
    import jax

    start = time.perf_counter()
    compiled = staged.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, compile_s, time.perf_counter() - start


def work_rejax_ppo(p: dict) -> dict:
    """rejax PPO on CartPole-v1 with its own configuration; num_seeds > 1: jit(vmap(train))."""
    import jax
    import numpy as np
    from rejax import PPO

    start = time.perf_counter()
    # eval_freq = the budget: rejax evaluates (128 episodes) at the start and at the end only
    algo = PPO.create(env="CartPole-v1", total_timesteps=p["steps"], eval_freq=p["steps"],
                      agent_kwargs={"activation": "tanh"}, **REJAX_PPO)
    seeds = p["num_seeds"]
    if seeds == 1:
        (_, (_, returns)), compile_s, run_s = _timed(jax.jit(algo.train), jax.random.PRNGKey(0))
    elif p.get("devices", 1) > 1:  # pmap over host devices (XLA_FLAGS set by the parent) x vmap
        devices = p["devices"]
        keys = jax.random.split(jax.random.PRNGKey(0), seeds).reshape(devices, seeds // devices, -1)
        (_, (_, returns)), compile_s, run_s = _timed(jax.pmap(jax.vmap(algo.train)), keys)
    else:
        keys = jax.random.split(jax.random.PRNGKey(0), seeds)
        (_, (_, returns)), compile_s, run_s = _timed(jax.jit(jax.vmap(algo.train)), keys)
    wall = time.perf_counter() - start
    final = np.asarray(returns)[..., -1, :].mean()
    return {"wall_s": wall, "compile_s": compile_s, "run_s": run_s,
            "steps_per_s": p["steps"] * seeds / run_s, "return": float(final)}


def work_rejax_sac(p: dict) -> dict:
    """rejax SAC on Pendulum-v1 with Stable-Baselines3's settings."""
    import jax
    import numpy as np
    from rejax import SAC as RejaxSAC

    start = time.perf_counter()
    algo = RejaxSAC.create(env="Pendulum-v1", num_envs=1, total_timesteps=p["steps"],
                           eval_freq=p["steps"], buffer_size=SAC["buffer_size"],
                           batch_size=SAC["batch_size"], learning_rate=SAC["learning_rate"],
                           fill_buffer=SAC["learning_starts"], num_epochs=1, polyak=1 - SAC["tau"],
                           hidden_layer_sizes=(SAC["hidden"],) * 2, agent_kwargs={"activation": "relu"})
    (_, (_, returns)), compile_s, run_s = _timed(jax.jit(algo.train), jax.random.PRNGKey(0))
    return {"wall_s": time.perf_counter() - start, "compile_s": compile_s, "run_s": run_s,
            "return": float(np.asarray(returns)[-1].mean())}


def work_sb3_solve(p: dict) -> dict:
    """Stable-Baselines3 PPO / A2C on CartPole-v1 with the RL Zoo settings (8 envs), stopped by
    an EvalCallback at the first mean evaluation return >= 475."""
    import torch
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(p["torch_threads"])
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=1000)
    start = time.perf_counter()
    if p["algo"] == "ppo":  # rl-baselines3-zoo hyperparams/ppo.yml CartPole-v1
        model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                    n_epochs=20, ent_coef=0.0, learning_rate=lambda f: f * 1e-3,
                    clip_range=lambda f: f * 0.2, seed=0, device="cpu")
    else:  # rl-baselines3-zoo hyperparams/a2c.yml CartPole-v1
        model = A2C("MlpPolicy", env, ent_coef=0.0, seed=0, device="cpu")
    stop = StopTrainingOnRewardThreshold(reward_threshold=TARGET_RETURN, verbose=0)
    callback = EvalCallback(eval_env, callback_on_new_best=stop, n_eval_episodes=10,
                            eval_freq=EVAL_INTERVAL // 8, deterministic=True, verbose=0)
    model.learn(total_timesteps=p["steps"], callback=callback)
    wall = time.perf_counter() - start
    solved = callback.best_mean_reward >= TARGET_RETURN
    return {"solve_s": wall if solved else math.inf,
            "solve_steps": model.num_timesteps if solved else math.inf,
            "steps_per_s": model.num_timesteps / wall, "return": float(callback.last_mean_reward)}


def work_sb3_sac(p: dict) -> dict:
    """Stable-Baselines3 SAC on Pendulum-v1: its defaults (256x256, batch 256, one gradient step
    per env step) with the RL Zoo's learning rate; wall = construction + learn (the final
    evaluation is not timed)."""
    import gymnasium
    import torch
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(p["torch_threads"])
    env = gymnasium.make("Pendulum-v1")
    start = time.perf_counter()
    model = SB3SAC("MlpPolicy", env, learning_rate=SAC["learning_rate"], buffer_size=SAC["buffer_size"],
                   batch_size=SAC["batch_size"], learning_starts=SAC["learning_starts"],
                   train_freq=1, gradient_steps=1, seed=0, device="cpu")
    model.learn(total_timesteps=p["steps"])
    wall = time.perf_counter() - start
    mean, _ = evaluate_policy(model, gymnasium.make("Pendulum-v1"), n_eval_episodes=10, deterministic=True)
    return {"wall_s": wall, "steps_per_s": p["steps"] / wall, "return": float(mean)}


WORKERS = {"rlcli": work_rlcli, "ceiling": work_ceiling, "rss": work_rss, "matmul": work_matmul,
           "rejax_ppo": work_rejax_ppo, "rejax_sac": work_rejax_sac, "sb3_solve": work_sb3_solve,
           "sb3_sac": work_sb3_sac}


def worker_main(spec: str) -> None:
    p = json.loads(spec)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    result = WORKERS[p["kind"]](p)
    print("RESULT " + json.dumps(result), flush=True)


# ==== the driver ================================================================================


class Skip(Exception):
    """A measurement that could not be taken; the message says why."""


def run_worker(python: str, params: dict, env: dict | None = None) -> dict:
    """Run one worker in a fresh subprocess; its result dict, or Skip with the error's tail."""
    full_env = dict(os.environ, **(env or {}))
    out = subprocess.run([python, str(Path(__file__).resolve()), "--worker", json.dumps(params)],
                         capture_output=True, text=True, env=full_env)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise Skip(f"{params['kind']} worker failed (exit {out.returncode}): {tail}")


def probe(python: str, module: str, dist: str) -> tuple[str | None, str | None]:
    """(version, None) when `module` imports in `python`, else (None, why)."""
    code = (f"import {module}, importlib.metadata as m; print(m.version({dist!r}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{python}: {exc}"
    if out.returncode == 0:
        return out.stdout.strip().splitlines()[-1], None
    tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    return None, f"not importable in {python} ({tail})"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median(values: list[float]) -> float:
    """Median over the repetitions (a run that never reached the target counts as infinite)."""
    return statistics.median(values) if values else math.nan


def fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(ours: float, peer: float) -> str:
    if any(v is None or math.isnan(v) for v in (ours, peer)):
        return "n/a"
    if math.isinf(ours) or math.isinf(peer) or peer == 0:
        return "-"
    return f"{ours / peer:.2f}"


class Bench:
    """Collects the repetitions of every measurement under a name."""

    def __init__(self, mode: str, peers_python: str, peers: dict[str, str | None],
                 rows: set[int] = frozenset(ROWS), scale: float = 1.0, torch_threads: int = 1,
                 seeds: int = SEEDS, seed_counts: tuple[int, ...] = SEED_COUNTS):
        self.mode, self.peers_python, self.peers, self.selected = mode, peers_python, peers, rows
        self.seeds, self.seed_counts = seeds, seed_counts
        self.runs: dict[str, list[dict]] = {}
        self.errors: dict[str, str] = {}
        self.budget = budget(mode, scale)
        self.torch_threads = torch_threads
        self.cache_key = "compile_cache" in _compose([])

    def measure(self, name: str, params: dict, python: str | None = None, env: dict | None = None) -> None:
        if name in self.errors:
            return
        start = time.perf_counter()
        try:
            result = run_worker(python or sys.executable, params, env)
        except Skip as exc:
            self.errors[name] = str(exc)
            print(f"  {name}: FAILED: {exc}", file=sys.stderr, flush=True)
            return
        self.runs.setdefault(name, []).append(result)
        shown = ", ".join(f"{k} {fmt(v)}" for k, v in result.items())
        print(f"  {name} ({time.perf_counter() - start:.0f} s): {shown}", file=sys.stderr, flush=True)

    def get(self, name: str, key: str) -> float:
        runs = self.runs.get(name)
        return median([r[key] for r in runs]) if runs else math.nan

    def rlcli(self, name: str, overrides: list[str], cache: str | None = None) -> None:
        """An rlcli run with its persistent compilation cache in `cache` (default: a fresh
        directory, so that the run compiles cold whatever earlier runs left in the default one)."""
        with tempfile.TemporaryDirectory(prefix="rlcli-peers-cache-") as fresh:
            cache = cache or fresh
            # rlcli's compile_cache key (the worker sets it) or, without it, JAX's own variable
            # (which would win over the key, and cache only programs compiling for over 1 s)
            env = None if self.cache_key else {"JAX_COMPILATION_CACHE_DIR": cache}
            self.measure(name, {"kind": "rlcli", "overrides": overrides, "cache": cache}, env=env)

    def peer(self, name: str, package: str, params: dict, env: dict | None = None) -> None:
        if self.peers.get(package):
            self.measure(name, params, python=self.peers_python, env=env)

    def repetition(self) -> None:
        b, rows = self.budget, self.selected
        # 1. PPO CartPole-v1, rejax's configuration: one seed (cold, warm cache), 8 seeds
        if 1 in rows:
            self.row1(b)
        # 2. time to a mean evaluation return of 475, shipped tuned configs vs the RL Zoo's
        if 2 in rows:
            self.row2(b)
        # 3. SAC Pendulum-v1 with Stable-Baselines3's settings
        if 3 in rows:
            self.row3(b)
        # 4. gymnasium backend against the host-loop ceiling
        if 4 in rows:
            self.rlcli("gym64", ["algo=a2c", "env=CartPole-v1", "env.backend=gymnasium", "num_envs=64",
                                 f"total_steps={b['gym']}"])
            self.measure("ceiling64", {"kind": "ceiling", "num_envs": 64, "iters": b["ceiling"]})
        # 5. num_seeds=K in one process
        if 5 in rows:
            for k in self.seed_counts:
                self.rlcli(f"seeds{k}", RLCLI_PPO + [f"total_steps={b['seeds']}", f"num_seeds={k}"])
        # 6. peak RSS of a default run
        if 6 in rows:
            rss = ["algo=ppo", "env=CartPole-v1"] + ([f"total_steps={b['rss']}"] if b["rss"] else [])
            rss += ["compile_cache=null"] if self.cache_key else []  # compiles: the peak
            self.measure("rss", {"kind": "rss", "overrides": rss})

    def row1(self, b: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="rlcli-peers-cache-") as cache:
            self.rlcli("ppo1", RLCLI_PPO + [f"total_steps={b['ppo']}"], cache)
            self.rlcli("ppo1_warm", RLCLI_PPO + [f"total_steps={b['ppo']}"], cache)
        self.peer("rejax_ppo1", "rejax", {"kind": "rejax_ppo", "steps": b["ppo"], "num_seeds": 1})
        self.rlcli("ppo8", RLCLI_PPO + [f"total_steps={b['ppo8']}", f"num_seeds={self.seeds}"])
        self.peer("rejax_ppo8", "rejax", {"kind": "rejax_ppo", "steps": b["ppo8"], "num_seeds": self.seeds})
        if self.pmap_reason() is None:
            self.peer("rejax_ppo8_pmap", "rejax", {"kind": "rejax_ppo", "steps": b["ppo8"],
                                                   "num_seeds": self.seeds, "devices": 2},
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})

    def pmap_reason(self) -> str | None:
        """Why rejax's pmap over 2 host devices is not measured (None: it is)."""
        import jax

        if jax.default_backend() != "cpu":
            return f"host devices stand in for cores on a CPU only (JAX runs on {jax.default_backend()})"
        if self.seeds % 2:
            return f"--seeds {self.seeds} does not split over 2 devices"
        return None

    def row2(self, b: dict) -> None:
        for algo in ("ppo", "a2c"):
            overrides = [f"algo={algo}", "env=CartPole-v1", f"eval_interval={EVAL_INTERVAL}",
                         f"total_steps={b['solve_' + algo]}"]
            with tempfile.TemporaryDirectory(prefix="rlcli-peers-cache-") as cache:
                self.rlcli(f"solve_{algo}", overrides, cache)
                self.rlcli(f"solve_{algo}_warm", overrides, cache)
            self.peer(f"sb3_solve_{algo}", "stable-baselines3",
                      {"kind": "sb3_solve", "algo": algo, "steps": b["solve_" + algo],
                       "torch_threads": self.torch_threads})

    def row3(self, b: dict) -> None:
        self.rlcli("sac", RLCLI_SAC + [f"total_steps={b['sac']}", f"algo.buffer_size={SAC['buffer_size']}"])
        self.rlcli("sac_1m", RLCLI_SAC + [f"total_steps={b['sac']}", "algo.buffer_size=1000000"])
        self.peer("sb3_sac", "stable-baselines3", {"kind": "sb3_sac", "steps": b["sac"],
                                                         "torch_threads": self.torch_threads})
        self.peer("rejax_sac", "rejax", {"kind": "rejax_sac", "steps": b["sac"]})

    # ---- the table -----------------------------------------------------------------------------

    def skip_reason(self, name: str, package: str | None) -> str | None:
        if package is not None and not self.peers.get(package):
            return self.peers.get(f"why:{package}") or f"{package} not importable"
        if name == "rejax_ppo8_pmap":
            return self.errors.get(name) or self.pmap_reason()
        return self.errors.get(name)

    def rows(self) -> tuple[list[list[str]], list[str]]:
        rows, notes = [], []

        def add(row, what, ours, ours_key, peer_label, peer, peer_key, package, goal, unit=""):
            if int(row) not in self.selected:
                rows.append(None)  # keeps rows[-1] fix-ups below harmless; dropped at the end
                return
            o = self.get(ours, ours_key) if ours else math.nan
            why = self.skip_reason(peer, package) if peer else None
            if peer and why:
                note = f"skipped: {peer_label} ({package}): {why}" if package else f"failed: {peer_label}: {why}"
                if note not in notes:
                    notes.append(note)
                p = math.nan
            else:
                p = self.get(peer, peer_key) if peer else math.nan
            if ours and ours in self.errors and f"failed: rlcli: {self.errors[ours]}" not in notes:
                notes.append(f"failed: rlcli: {self.errors[ours]}")
            rows.append([row, what, unit, fmt(o), peer_label if not why else f"{peer_label} (skipped)",
                         fmt(p), ratio(o, p), goal])

        b = self.budget
        ppo = f"PPO CartPole rejax cfg, {b['ppo']:,} steps"
        add("1", f"{ppo}: wall incl. compile", "ppo1", "wall_s", "rejax", "rejax_ppo1", "wall_s", "rejax", "<= 0.7", "s")
        add("1", f"{ppo}: compile", "ppo1", "compile_s", "rejax", "rejax_ppo1", "compile_s", "rejax", "", "s")
        add("1", f"{ppo}: run-phase steps/s", "ppo1", "steps_per_s", "rejax", "rejax_ppo1", "steps_per_s", "rejax", ">= 1.5", "steps/s")
        add("1", f"{ppo}: wall, warm cache", "ppo1_warm", "wall_s", "rejax", "rejax_ppo1", "wall_s", "rejax", "<= 0.4", "s")
        add("1", f"{ppo}: compile, warm cache", "ppo1_warm", "compile_s", "rejax", "rejax_ppo1", "compile_s", "rejax", "", "s")
        add("1", f"{ppo}: final return", "ppo1", "return", "rejax", "rejax_ppo1", "return", "rejax", "", "return")
        ppo8 = f"PPO CartPole rejax cfg, {self.seeds} seeds x {b['ppo8']:,}"
        add("1", f"{ppo8}: wall incl. compile", "ppo8", "wall_s", "rejax vmap", "rejax_ppo8", "wall_s", "rejax", "", "s")
        add("1", f"{ppo8}: run-phase steps/s", "ppo8", "steps_per_s", "rejax vmap", "rejax_ppo8", "steps_per_s", "rejax",
            "", "steps/s")
        add("1", f"{ppo8}: wall incl. compile", "ppo8", "wall_s", "rejax pmap 2 dev", "rejax_ppo8_pmap", "wall_s",
            "rejax", "", "s")
        add("1", f"{ppo8}: run-phase steps/s", "ppo8", "steps_per_s", "rejax pmap 2 dev", "rejax_ppo8_pmap",
            "steps_per_s", "rejax", ">= 1.0 (288k/s)", "steps/s")
        add("1", f"{ppo8}: final return (mean)", "ppo8", "return", "rejax vmap", "rejax_ppo8", "return", "rejax", "", "return")
        for algo in ("ppo", "a2c"):
            what = f"{algo.upper()} CartPole: wall to eval return 475"
            add("2", what, f"solve_{algo}", "solve_s", f"SB3 {algo.upper()}", f"sb3_solve_{algo}", "solve_s",
                "stable-baselines3", "<= 0.1", "s")
            add("2", f"{what}, warm cache", f"solve_{algo}_warm", "solve_s", f"SB3 {algo.upper()}",
                f"sb3_solve_{algo}", "solve_s", "stable-baselines3", "<= 0.05", "s")
            add("2", f"{algo.upper()} CartPole: env steps at 475", f"solve_{algo}", "solve_steps", f"SB3 {algo.upper()}",
                f"sb3_solve_{algo}", "solve_steps", "stable-baselines3", "", "steps")
            add("2", f"{algo.upper()} CartPole: last eval return of that run", f"solve_{algo}", "return",
                f"SB3 {algo.upper()}", f"sb3_solve_{algo}", "return", "stable-baselines3", "", "return")
        sac = f"SAC Pendulum SB3 settings, {b['sac']:,} steps"
        add("3", f"{sac}: wall", "sac", "wall_s", "SB3 SAC", "sb3_sac", "wall_s", "stable-baselines3", "", "s")
        add("3", f"{sac}: wall", "sac", "wall_s", "rejax SAC", "rejax_sac", "wall_s", "rejax", "<= 1.0", "s")
        add("3", f"{sac}: wall, 1M-row buffer", "sac_1m", "wall_s", "rlcli 20k rows", "sac", "wall_s", None, "<= 1.0", "s")
        add("3", f"{sac}: final return", "sac", "return", "SB3 SAC", "sb3_sac", "return", "stable-baselines3",
            "<= 1.0 (returns < 0)", "return")
        add("3", f"{sac}: final return", "sac", "return", "rejax SAC", "rejax_sac", "return", "rejax", "", "return")
        add("4", "gymnasium A2C CartPole 64 envs: steps/s", "gym64", "steps_per_s", "host-loop ceiling", "ceiling64",
            "steps_per_s", None, ">= 0.6", "steps/s")
        for k in self.seed_counts:
            add("5", f"PPO rejax cfg num_seeds={k}, {b['seeds']:,} steps/seed: wall per seed", f"seeds{k}", "wall_s",
                "rlcli num_seeds=1", "seeds1", "wall_s", None, "<= 1.0" if k > 1 else "", "s")
            if rows[-1]:
                rows[-1][3] = fmt(self.get(f"seeds{k}", "wall_s") / k)
                rows[-1][6] = ratio(self.get(f"seeds{k}", "wall_s") / k, self.get("seeds1", "wall_s"))
        for k in self.seed_counts:
            add("5", f"PPO rejax cfg num_seeds={k}: compile", f"seeds{k}", "compile_s", "-", None, "", None, "", "s")
        for k in self.seed_counts:
            add("5", f"PPO rejax cfg num_seeds={k}: run-phase steps/s, all seeds", f"seeds{k}", "steps_per_s", "-",
                None, "", None, "", "steps/s")
        rss = "default" if not b["rss"] else f"total_steps={b['rss']:,}"
        add("6", f"peak RSS, rlcli train algo=ppo env=CartPole-v1 ({rss})", "rss", "rss_gib", "limit", None, "",
            None, "<= 1.0", "GiB")
        if rows[-1]:
            rows[-1][5] = fmt(RSS_LIMIT_GIB)
            rows[-1][6] = ratio(self.get("rss", "rss_gib"), RSS_LIMIT_GIB)
        if "sac" in self.runs:
            # per gradient step: ~18 forward-pass equivalents of a 256x256 MLP on the batch (target:
            # actor + 2 target critics; critic loss: 2 critics forward+backward; actor loss: actor +
            # 2 critics forward+backward); a forward pass costs 2 x batch x (sum of weight sizes)
            h, batch = SAC["hidden"], SAC["batch_size"]
            fwd = 2 * batch * (4 * h + h * h + h)
            flops = 18 * fwd * (b["sac"] - SAC["learning_starts"])
            achieved = flops / self.get("sac", "run_s") / 1e9
            notes.append(f"row 3: rlcli SAC update ~{18 * fwd / 1e6:.0f} MFLOP per gradient step (analytic), "
                         f"achieved {achieved:.2f} GFLOP/s over the run phase; machine f32 matmul "
                         f"{fmt(self.get('matmul', 'gflops'))} GFLOP/s (1024x1024, XLA, all cores)")
        return [r for r in rows if r], notes


def header(mode: str, reps: int, peers_python: str, peers: dict, rows: set[int], scale: float,
           torch_threads: int) -> str:
    import jax

    peer_versions = ", ".join(f"{d} {peers.get(d) or 'absent'}" for d in ("rejax", "stable-baselines3", "torch"))
    return "\n".join([
        f"date:     {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine:  {cpu_model()}, {os.cpu_count()} CPU cores, {platform.platform()}, "
        f"jax devices: {', '.join(f'{d} ({d.device_kind})' for d in jax.devices())}",
        f"versions: python {platform.python_version()}, rlcli {version('rlcli')}, jax {version('jax')}, "
        f"flax {version('flax')}, gymnasium {version('gymnasium')}",
        f"peers:    {peers_python}: {peer_versions}; torch threads for SB3: {torch_threads}",
        f"run:      {mode} mode, rows {','.join(map(str, sorted(rows)))}, throughput budgets x{scale:g}, "
        f"medians over {reps} interleaved repetition(s), each measurement in a fresh subprocess",
        "ratio:    ours/peer (times: < 1 means rlcli is faster; steps/s: > 1 means rlcli is faster); "
        "'-': target not reached",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3, help="repetitions per row (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budgets")
    parser.add_argument("--peers-python", default=sys.executable,
                        help="Python interpreter with rejax / stable-baselines3 (default: this one)")
    parser.add_argument("--only", choices=["all", "rlcli"], default="all",
                        help="rlcli: skip the peers' measurements (default: all)")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)),
                        help="comma-separated rows to run (default: all, 1-6)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the throughput budgets (rows 1, 3, 4, 5) by this (default 1)")
    parser.add_argument("--seeds", type=int, default=SEEDS,
                        help=f"row 1's many-seed runs: num_seeds (default {SEEDS})")
    parser.add_argument("--seed-counts", default=",".join(map(str, SEED_COUNTS)),
                        help="row 5's num_seeds values, comma-separated (default: "
                             f"{','.join(map(str, SEED_COUNTS))}; 1, the reference, is always run)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads for Stable-Baselines3 (default 1: its small MLPs run "
                             "fastest on one thread, and torch's thread pool stalls badly on a busy machine)")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    mode = "quick" if args.quick else "full"
    rows = {int(r) for r in args.rows.split(",") if r.strip()}
    if not rows <= set(ROWS):
        parser.error(f"--rows={args.rows}: rows are {', '.join(map(str, ROWS))}")
    counts = [k.strip() for k in args.seed_counts.split(",") if k.strip()]
    if args.seeds < 1 or not all(k.isdigit() and int(k) > 0 for k in counts):
        parser.error(f"--seeds={args.seeds} --seed-counts={args.seed_counts}: seed counts are positive integers")
    counts = sorted({1, *map(int, counts)})
    start = time.perf_counter()

    peers: dict[str, str | None] = {}
    for module, dist in (("rejax", "rejax"), ("stable_baselines3", "stable-baselines3"), ("torch", "torch")):
        if args.only == "rlcli" or not rows & {1, 2, 3}:
            peers[dist], why = None, "--only rlcli"
        else:
            peers[dist], why = probe(args.peers_python, module, dist)
        if why:
            peers[f"why:{dist}"] = why
            if dist != "torch":
                print(f"skipping the {dist} rows: {why}", flush=True)

    print(header(mode, args.reps, args.peers_python, peers, rows, args.scale, args.torch_threads), flush=True)
    bench = Bench(mode, args.peers_python, peers, rows, args.scale, args.torch_threads, args.seeds,
                  tuple(counts))
    if 3 in rows:
        bench.measure("matmul", {"kind": "matmul", "n": 1024})
    from rlcli.commands.common import aligned

    for rep in range(args.reps):
        print(f"repetition {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
        bench.repetition()
        # the table after every repetition, so that a long run stopped early still has one
        rows, notes = bench.rows()
        print(f"\nmedians after {rep + 1} of {args.reps} repetition(s), "
              f"{time.perf_counter() - start:.0f} s since the start:")
        print(aligned(["row", "measure", "unit", "rlcli", "peer", "peer value", "ours/peer", "goal"], rows))
        for note in notes:
            print(f"- {note}")
        sys.stdout.flush()
    print(f"\ntotal benchmark time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
