"""000 Alg. 19 (`algo=naive_offpolicy_ac`) beside Alg. 20 (`algo=offpolicy_ac`): the same envs,
budgets, seeds and shared replay settings; one table of final deterministic evaluation returns.

    python benchmarks/alg19_vs_alg20.py                  # Pendulum-v1 20k and CartPole-v1 12k, 3 seeds
    python benchmarks/alg19_vs_alg20.py --seeds 5 --scale 2
    python benchmarks/alg19_vs_alg20.py --quick          # smoke test: tiny budgets, 2 seeds

Each case is one `python -m rlcli train ... num_seeds=N` process of this checkout (its seeds
vmapped together), with logger=quiet and compile_cache=null, into a temporary directory. Both
algorithms get the settings that offpolicy_ac is tuned with (conf/tuned/offpolicy_ac_Pendulum-v1.yaml
on Pendulum, the discrete test's on CartPole), so they differ only in what Alg. 20 fixes, plus
Alg. 20's variance reduction (num_action_samples=4 with the leave-one-out baseline) and entropy
bonus. Two more rows per env: Alg. 19 with tau=1 (no target network: Alg. 19 to the letter) and
Alg. 20 without its entropy bonus (ent_coef=0), which Alg. 19 does not have.
Besides the returns the table shows the last logged policy/entropy and, for Alg. 19, the mean
log pi(a_i|s_i) of the replayed actions under the current policy (policy/replayed_log_prob).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from common import train_process

# shared settings per env: offpolicy_ac's tuned Pendulum file and the discrete CartPole test
ENVS = {
    "Pendulum-v1": (20_000, ["num_envs=1", "algo.learning_rate=1e-3", "algo.buffer_size=20000",
                             "algo.batch_size=128", "network.hidden_sizes=[64,64]", "network.activation=relu",
                             "eval_episodes=10"]),
    "CartPole-v1": (12_000, ["num_envs=4", "algo.learning_rate=1e-3", "algo.batch_size=128",
                             "algo.learning_starts=1000", "network.hidden_sizes=[64,64]",
                             "network.activation=relu", "eval_episodes=10"]),
}
ROWS = [  # (label, overrides)
    ("Alg. 19 naive_offpolicy_ac", ["algo=naive_offpolicy_ac"]),
    ("Alg. 19 naive_offpolicy_ac, tau=1", ["algo=naive_offpolicy_ac", "algo.tau=1"]),
    ("Alg. 20 offpolicy_ac", ["algo=offpolicy_ac"]),
    ("Alg. 20 offpolicy_ac, ent_coef=0", ["algo=offpolicy_ac", "algo.ent_coef=0"]),
]


def run(args: list[str], out: Path) -> tuple[dict, dict, float]:
    """(summary.json, the last metrics record of each seed averaged, wall s) of one rlcli train."""
    wall = train_process([*args, "compile_cache=null"], out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    last_update = max(r["update"] for r in records)
    last = [r for r in records if r["update"] == last_update]
    means = {k: sum(r[k] for r in last) / len(last) for k in ("policy/entropy", "policy/replayed_log_prob")
             if all(k in r for r in last)}
    return json.loads((out / "summary.json").read_text()), means, wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every env's step budget")
    parser.add_argument("--envs", default=",".join(ENVS), help="comma-separated: " + ", ".join(ENVS))
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, 1500 steps")
    opts = parser.parse_args(argv)
    seeds = 2 if opts.quick else opts.seeds
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; {seeds} seeds "
          f"(seeds 0..{seeds - 1}), final deterministic evaluation return per seed", flush=True)
    header = ("env", "algorithm", "steps", "return mean", "per seed", "entropy", "log π(a_i\\|s_i)", "wall s")
    lines = []
    with tempfile.TemporaryDirectory(prefix="alg19-") as tmp:
        for env_id in opts.envs.split(","):
            steps, shared = ENVS[env_id]
            steps = 1500 if opts.quick else int(steps * opts.scale)
            if opts.quick:  # later values of a key replace earlier ones
                shared = [*shared, "algo.learning_starts=500", "eval_episodes=2"]
            shared = list({a.split("=")[0]: a for a in shared}.values())
            for i, (label, overrides) in enumerate(ROWS):
                out = Path(tmp) / f"{env_id}-{i}"
                args = [*overrides, f"env={env_id}", *shared, f"num_seeds={seeds}", f"total_steps={steps}",
                        f"log_interval={steps}"]
                summary, last, wall = run(args, out)
                returns = summary["final_eval"]["return_mean"]
                lines.append((env_id, label, f"{summary['total_steps']:,}", f"{sum(returns) / len(returns):.1f}",
                              ", ".join(f"{r:.0f}" for r in returns), f"{last.get('policy/entropy', float('nan')):.3g}",
                              f"{last['policy/replayed_log_prob']:.3g}" if "policy/replayed_log_prob" in last else "-",
                              f"{wall:.0f}"))
                print("  ".join(lines[-1]), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in lines:
        print("| " + " | ".join(line) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
