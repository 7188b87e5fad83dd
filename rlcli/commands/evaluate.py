"""`rlcli eval run=<run dir> [key=value ...]`: evaluate a checkpoint of a run written by
`rlcli train`, and optionally record videos of its episodes.

The run's loop is rebuilt from its saved config (`train.setup`, `train.make_loop`), the
checkpoint is restored into it (`train.restore_checkpoint`) and `Loop.evaluate` runs,
so the episodes are those of training's evaluation: the same act function, the checkpoint's
observation-normalisation statistics frozen, raw returns. `eval_seed=K` picks the episodes of
training's evaluation number K (0 = the first; a run without `eval_interval` has only the
final one), so with the defaults the final checkpoint repeats the run's final evaluation.

Video episode k of a seed is evaluation episode k: the run's one evaluation (rlcli.rollout) is
played again with a per-step observer that keeps the env states (jax backend; the gymnasium
twin draws them) or draws the rendering envs (gymnasium backend), the terminal state
included.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from rlcli import arguments
from rlcli.arguments import Command, Option, text_of
from rlcli.envs import render
from rlcli.errors import ConfigError
from rlcli.rules import boolean, int_at_least, non_empty_text, one_of

COMMAND = Command(
    "eval", "run=<run dir> [key=value ...]",
    """Restores the newest checkpoint of the run that can be read (a damaged newer one is skipped
with a one-line notice), or checkpoint=<env steps>, one of checkpoints/; it then runs the
episodes per seed with the run's evaluation, prints mean +- std of the return and length per
seed and over all, and writes eval.json into the run directory. video=true also writes
video_episodes episodes per seed to <run>/videos/ as GIF or MP4; video episode k starts where
evaluation episode k does. Rendering the classic-control tasks needs pygame and MP4 needs
imageio-ffmpeg: pip install 'rlcli[video]'. eval.json and same-named videos are overwritten.
run=<multirun dir> evaluates every job of a sweep in turn.""",
    (Option("run", None, non_empty_text(), "the run directory written by rlcli train", text_of),
     Option("episodes", None, int_at_least(1), "episodes per seed (default: the run's eval_episodes)"),
     Option("deterministic", None, boolean(),
            "act with the policy's mode (default: the run's eval_deterministic)"),
     Option("checkpoint", None, int_at_least(0), "env step of the checkpoint (default: the newest readable)"),
     Option("seed_index", None, int_at_least(0), "evaluate seed i of num_seeds > 1 only (default: every seed)"),
     Option("eval_seed", 0, int_at_least(0), "draw the episodes of training's evaluation number K"),
     Option("video", False, boolean(), "also record videos"),
     Option("video_format", "gif", one_of(*render.VIDEO_FORMATS), "the videos' file format"),
     Option("video_episodes", 1, int_at_least(1), "episodes recorded per seed")),
)


class Options(NamedTuple):
    run_dir: Path
    cfg: Any  # the run's saved config, eval_episodes and eval_deterministic set to these options
    checkpoint: int | None  # env steps; None: the newest that can be read
    seed_indices: tuple[int, ...]
    episodes: int
    deterministic: bool
    eval_seed: int
    video: bool
    video_format: str
    video_episodes: int


def parse(args: list[str]) -> Options:
    """Options from the arguments; raises ConfigError (one line) for bad input."""
    from rlcli.commands.common import checkpointed_run

    parsed = arguments.parse(COMMAND, args)
    values, given = parsed.values, parsed.given
    run_dir, cfg = checkpointed_run(parsed)
    num_seeds = cfg.num_seeds
    if values["episodes"] is None:
        values["episodes"] = cfg.eval_episodes
    if values["deterministic"] is None:
        values["deterministic"] = cfg.eval_deterministic
    for key in ("video_format", "video_episodes"):
        if key in given and not values["video"]:
            raise ConfigError(f"{key}={given[key]} is given without video=true (allowed: add video=true)")
    if values["video"]:
        from rlcli.envs.jax_backend import GYMNAX

        if cfg.env.id in GYMNAX:
            raise ConfigError(f"video=true: env.id={cfg.env.id} has no gymnasium twin to draw its states (allowed: "
                              "video=false; videos are drawn for the classic-control tasks and gymnasium ids)")
        if values["video_episodes"] > values["episodes"]:
            raise ConfigError(f"video_episodes={values['video_episodes']} is more than episodes="
                              f"{values['episodes']} (allowed: an integer in [1, {values['episodes']}])")
        if values["video_format"] == "mp4" and not render.mp4_available():
            raise ConfigError("video_format=mp4 needs imageio and imageio-ffmpeg, which are not installed "
                              "(allowed: video_format=gif, or pip install 'rlcli[video]')")
    cfg.eval_episodes, cfg.eval_deterministic = values["episodes"], values["deterministic"]
    seeds = tuple(range(num_seeds)) if values["seed_index"] is None else (values["seed_index"],)
    return Options(run_dir, cfg, values["checkpoint"], seeds, values["episodes"], values["deterministic"],
                   values["eval_seed"], values["video"], values["video_format"], values["video_episodes"])


# ---- videos -----------------------------------------------------------------------------------


def _seed_slice(tree, i: int):
    import jax

    return jax.tree.map(lambda x: x[i], tree)


def jax_frames(opts: Options, parts, learner, norm, key, renderer) -> tuple[list, list]:
    """Training's evaluation of one seed (`rollout.jax_evaluate` with this key), observing the
    env states of every step: the frames of episodes 0..video_episodes-1 (the reset state,
    then the state after each step, the terminal one included) and every episode's (return,
    length)."""
    import jax
    import numpy as np

    from rlcli import normalize, rollout
    from rlcli.envs import jax_backend

    env = jax_backend.make(parts.spec.id, parts.spec.observed)
    evaluate_one = rollout.jax_evaluate(parts.cfg, parts.spec, parts.algo, env, normalize.make(parts.cfg),
                                        observe=lambda final_state, step: final_state)
    ret, length, (reset_state, finals) = jax.device_get(jax.jit(evaluate_one)(learner, norm, key))
    frames = []
    for k in range(opts.video_episodes):
        states = [_seed_slice(reset_state, k)] + [jax.tree.map(lambda x, t=t, k=k: x[t, k], finals)
                                                  for t in range(int(length[k]))]
        frames.append([render.render_twin(renderer, parts.spec.id, state) for state in states])
    return frames, list(zip(np.asarray(ret).tolist(), np.asarray(length).tolist()))


def gymnasium_frames(opts: Options, parts, learner, norm, seed_index: int, renderer) -> tuple[list, list]:
    """Training's evaluation of one seed (`rollout.host_evaluate`, the same reset seeds and act
    keys) on rendering envs: the frames of episodes 0..video_episodes-1 and every episode's
    (return, length)."""
    import jax

    from rlcli import normalize, rollout
    from rlcli.envs import gymnasium_backend

    seed = parts.cfg.seed + seed_index
    eval_one = rollout.host_eval_act(parts.algo, normalize.make(parts.cfg), parts.cfg.eval_deterministic)
    # the host loop's evaluation policy for this one seed: obs [1, E, ...], key [1, 2]
    act = jax.jit(lambda obs, key: jax.vmap(eval_one, in_axes=(None, None, 0, 0))(learner, norm, obs, key))

    envs = gymnasium_backend.make(parts.spec.id, opts.episodes, rollout.eval_env_seed(seed, 0), "sync",
                                  render_mode="rgb_array")
    frames: list[list] = [[] for _ in range(opts.video_episodes)]

    def observe(alive):
        for k in range(opts.video_episodes):
            if alive[0, k]:
                frames[k].append(envs.render(k))

    try:
        key = rollout.eval_keys(parts.cfg, opts.eval_seed)[seed_index][None]
        ret, length = rollout.host_evaluate(act, key, [envs], [seed], opts.eval_seed,
                                            parts.spec.max_episode_steps or 100_000, observe)
    finally:
        envs.close()
    return frames, list(zip(ret[0].tolist(), length[0].tolist()))


def record_videos(opts: Options, parts, state, renderer, staging: Path) -> list[dict]:
    """Video episodes 0..video_episodes-1 of each selected seed into `staging`: the episodes of
    the run's evaluation (`eval_seed`), played again by the one evaluation of the run's loop
    kind with a per-step observer. Returns what each video holds (its final name under
    videos/, frames, return, length)."""
    from rlcli import rollout

    videos = []
    for i in opts.seed_indices:
        learner, norm = _seed_slice(state.learner, i), _seed_slice(state.norm, i)
        if parts.backend_name == "jax":
            key = rollout.eval_keys(parts.cfg, opts.eval_seed)[i]
            frames, episodes = jax_frames(opts, parts, learner, norm, key, renderer)
        else:
            frames, episodes = gymnasium_frames(opts, parts, learner, norm, i, renderer)
        for k, episode_frames in enumerate(frames):
            name = f"step{opts.checkpoint}-seed{i}-episode{k}.{opts.video_format}"
            writer = render.VideoWriter(staging / name, opts.video_format, render.fps(renderer))
            try:
                for frame in episode_frames:
                    writer.append(frame)
            finally:
                writer.close()
            ret, length = episodes[k]
            videos.append({"file": f"videos/{name}", "seed_index": i, "episode": k, "return": float(ret),
                           "length": int(length), "frames": writer.frames})
    return videos


# ---- the command ------------------------------------------------------------------------------


def summarize(opts: Options, seeds: list[int], returns, lengths) -> dict:
    """eval.json: per selected seed its returns, lengths and their means and stds (over
    episodes, ddof 0 as summary.json), and the same over all their episodes."""
    import numpy as np

    def stats(ret, length) -> dict:
        return {"return_mean": float(ret.mean()), "return_std": float(ret.std()),
                "length_mean": float(length.mean()), "length_std": float(length.std())}

    chosen = list(opts.seed_indices)
    per_seed = [{"seed_index": i, "seed": seeds[i], "returns": [float(x) for x in returns[i]],
                 "lengths": [int(x) for x in lengths[i]], **stats(returns[i], lengths[i])} for i in chosen]
    return {"run": str(opts.run_dir), "checkpoint": opts.checkpoint, "episodes": opts.episodes,
            "deterministic": opts.deterministic, "eval_seed": opts.eval_seed,
            "seeds": per_seed, **stats(np.asarray(returns)[chosen].ravel(), np.asarray(lengths)[chosen].ravel())}


def _line(label: str, stats: dict) -> str:
    return (f"{label}: return {stats['return_mean']:.2f} ± {stats['return_std']:.2f}, "
            f"length {stats['length_mean']:.2f} ± {stats['length_std']:.2f}")


def run(opts: Options) -> dict:
    """Evaluate (and record), then write eval.json and the videos; returns eval.json's content.
    Nothing is written before everything has been computed; videos are staged in a temporary
    directory beside videos/ and moved in at the end."""
    import shutil
    import tempfile

    from rlcli import train
    from rlcli.envs import render
    from rlcli.errors import ConfigError, RunError
    from rlcli.paths import write_atomic

    parts = train.setup(opts.cfg)
    renderer = None
    if opts.video:
        try:
            renderer = render.make_env(parts.spec.id)
        except render.RenderError as err:
            raise ConfigError(f"video=true: {err} (allowed: video=false, or pip install 'rlcli[video]')") from None
    loop = train.make_loop(parts)
    with contextlib.closing(loop), contextlib.ExitStack() as cleanup:
        if renderer is not None:
            cleanup.callback(renderer.close)
        state, meta = train.restore_checkpoint(loop, opts.run_dir / "checkpoints", opts.checkpoint)
        opts = opts._replace(checkpoint=int(meta["env_steps"]))  # the newest readable, by default
        returns, lengths = loop.evaluate(state, opts.eval_seed)
        seeds = [parts.cfg.seed + i for i in range(parts.cfg.num_seeds)]
        result = {"algo": parts.cfg.algo.name, "env": parts.spec.id, "backend": parts.backend_name,
                  "update": int(meta["update"]), **summarize(opts, seeds, returns, lengths)}
        if opts.video:
            staging = Path(tempfile.mkdtemp(prefix=".videos-", dir=opts.run_dir))
            cleanup.callback(shutil.rmtree, staging, ignore_errors=True)
            try:
                result["videos"] = record_videos(opts, parts, state, renderer, staging)
            except (render.RenderError, OSError) as err:
                raise RunError(f"cannot record the videos of run={opts.run_dir}: {err}") from None
            videos = opts.run_dir / "videos"
            videos.mkdir(exist_ok=True)
            for video in result["videos"]:
                os.replace(staging / Path(video["file"]).name, opts.run_dir / video["file"])
        write_atomic(opts.run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def main(args: list[str]) -> int:
    from rlcli.commands.common import parse_and_run

    code, opts, result = parse_and_run(COMMAND, parse, run, args)
    if code is not None:
        return code
    kind = "deterministic" if opts.deterministic else "stochastic"
    print(f"rlcli eval: {result['algo']} on {result['env']} ({result['backend']} backend), checkpoint at "
          f"env step {result['checkpoint']} of {opts.run_dir}; {opts.episodes} {kind} episode{'s' * (opts.episodes != 1)} per seed, "
          f"eval_seed={opts.eval_seed}")
    for seed in result["seeds"]:
        print(_line(f"seed {seed['seed']} (seed_index {seed['seed_index']})", seed))
    if len(result["seeds"]) > 1:
        print(_line(f"all ({len(result['seeds'])} seeds, {len(result['seeds']) * opts.episodes} episodes)", result))
    for video in result.get("videos", []):
        print(f"video: {opts.run_dir / video['file']} ({video['frames']} frames, return {video['return']:.2f}, "
              f"length {video['length']})")
    print(f"wrote {opts.run_dir / 'eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
