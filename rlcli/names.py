"""The field's metric names for TensorBoard, W&B and MLflow (`logger.names=rlcli|cleanrl|sb3`), so
that comparison tools line rlcli runs up with CleanRL's or Stable-Baselines3's; metrics.jsonl
keeps rlcli's names.

`renamer(names, algo)` returns `rename(record) -> {key: value}`, the record's plotted scalars
under the chosen names. Where a peer's key means another quantity than rlcli's, the value is
computed to mean what the peer's key means (each is exact, being linear in rlcli's chunk means,
except the two windows named below):

* SB3's `train/value_loss` is the mean squared error (rlcli's `loss/value` is half of it:
  000 eq. 4.1.5), its `train/entropy_loss` is minus the mean entropy;
* SB3's `rollout/ep_rew_mean` and `ep_len_mean` are means over the last 100 episodes: here the
  mean over the episodes of the newest records (per seed) that together hold at least 100
  episodes (rlcli's records keep per-interval totals, not single episodes, so the window ends at
  a record boundary and may hold more than 100);
* CleanRL's `charts/SPS` and SB3's `time/fps` are env steps of one seed per second since the
  start (`env_steps / wall_time`, compilation included), where rlcli's `perf/steps_per_s` is
  the last chunk's rate over all seeds;
* CleanRL's `charts/episodic_return` is one point per finished episode; here it is the mean of
  the episodes that finished since the last record (rlcli's `episode/return`).

Keys a peer does not have keep rlcli's name (`loss/temperature` under sb3: SB3's
`train/ent_coef_loss` is a function of log alpha that the mean over a chunk's updates does not
give). Not written: the learning rate and SB3's `train/n_updates` (not in rlcli's records).
"""

from __future__ import annotations

from typing import Callable

NAMES = ("rlcli", "cleanrl", "sb3")
SB3_WINDOW = 100  # episodes in SB3's ep_info_buffer

# rlcli key -> CleanRL key (ppo.py, ppo_continuous_action.py, sac_continuous_action.py)
CLEANRL = {
    "episode/return": "charts/episodic_return",
    "episode/length": "charts/episodic_length",
    "loss/value": "losses/value_loss",  # 1/2 mean squared error in both
    "loss/policy": "losses/policy_loss",
    "policy/entropy": "losses/entropy",
    "policy/approx_kl": "losses/approx_kl",  # both mean((r - 1) - log r)
    "policy/clip_fraction": "losses/clipfrac",
    "train/explained_variance": "losses/explained_variance",
    "loss/actor": "losses/actor_loss",
    "loss/critic": "losses/qf_loss",  # CleanRL logs (qf1_loss + qf2_loss) / 2 = 1/2 sum of the MSEs
    "train/alpha": "losses/alpha",
    "loss/temperature": "losses/alpha_loss",  # both -alpha (log pi + target entropy)
    "eval/return_mean": "eval/episodic_return",
}

# rlcli key -> SB3 key, where the value means the same
SB3 = {
    "wall_time": "time/time_elapsed",
    "loss/total": "train/loss",
    "policy/approx_kl": "train/approx_kl",
    "policy/clip_fraction": "train/clip_fraction",
    "train/explained_variance": "train/explained_variance",
    "loss/actor": "train/actor_loss",
    "loss/critic": "train/critic_loss",  # 1/2 sum over the critics of the MSE in both
    "train/alpha": "train/ent_coef",
    "eval/return_mean": "eval/mean_reward",
    "eval/length_mean": "eval/mean_ep_length",
}
# ... and the keys whose value is computed to mean the SB3 quantity
SB3_COMPUTED = ("rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps", "time/total_timesteps",
                "time/iterations", "train/value_loss", "train/entropy_loss", "train/policy_gradient_loss",
                "train/policy_loss")
SB3_REPLACED = ("episode/return", "episode/length", "episode/count", "perf/steps_per_s", "loss/value",
                "policy/entropy", "loss/policy")
IDS = ("seed_index", "seed", "env_steps", "update")


def plotted(record: dict) -> dict:
    """The scalars TensorBoard, W&B and MLflow get under rlcli's names: every numeric value but
    the identifiers."""
    return {k: v for k, v in record.items() if k not in IDS and isinstance(v, (int, float))}


def renamer(names: str, algo: str) -> Callable[[dict], dict]:
    """`rename(record)` for `logger.names=names`; stateful for sb3 (the episode window per seed),
    so call it once per record, in order."""
    if names == "rlcli":
        return plotted
    if names == "cleanrl":
        def cleanrl(record: dict) -> dict:
            out = {CLEANRL.get(k, k): v for k, v in plotted(record).items() if k != "perf/steps_per_s"}
            if record.get("wall_time"):
                out["charts/SPS"] = record["env_steps"] / record["wall_time"]
            return out
        return cleanrl
    windows: dict[int, list[tuple[float, float, float]]] = {}  # seed index -> [(count, return sum, length sum)]

    def sb3(record: dict) -> dict:
        scalars = plotted(record)
        out = {SB3.get(k, k): v for k, v in scalars.items() if k not in SB3_REPLACED}
        out["time/total_timesteps"], out["time/iterations"] = record["env_steps"], record["update"]
        if record.get("wall_time"):
            out["time/fps"] = record["env_steps"] / record["wall_time"]
        if "loss/value" in scalars:
            out["train/value_loss"] = 2.0 * scalars["loss/value"]
        if "policy/entropy" in scalars:
            out["train/entropy_loss"] = -scalars["policy/entropy"]
        if "loss/policy" in scalars:
            out["train/policy_gradient_loss" if algo == "ppo" else "train/policy_loss"] = scalars["loss/policy"]
        count = scalars.get("episode/count") or 0
        window = windows.setdefault(record["seed_index"], [])
        if count and "episode/return" in scalars:
            window.append((count, count * scalars["episode/return"], count * scalars.get("episode/length", 0.0)))
            while len(window) > 1 and sum(c for c, _, _ in window[1:]) >= SB3_WINDOW:
                window.pop(0)
        if window:
            episodes = sum(c for c, _, _ in window)
            out["rollout/ep_rew_mean"] = sum(r for _, r, _ in window) / episodes
            out["rollout/ep_len_mean"] = sum(n for _, _, n in window) / episodes
        return out
    return sb3
