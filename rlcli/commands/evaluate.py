"""`rlcli eval run=<run dir> [key=value ...]`: evaluate a checkpoint of a run written by
`rlcli train`, and optionally record videos of its episodes.

The run's loop is rebuilt from its saved config (`train.setup`, `train.make_loop`), the
checkpoint is restored into it (`train.restore_checkpoint`) and `Loop.evaluate` runs,
so the episodes are those of training's evaluation: the same act function, the checkpoint's
observation-normalisation statistics frozen, raw returns. `eval_seed=K` picks the episodes of
training's evaluation number K (0 = the first; a run without `eval_interval` has only the
final one), so with the defaults the final checkpoint repeats the run's final evaluation.

Video episode k of a seed starts where evaluation episode k starts; it is played by a host
loop (one env, one jitted `act` per step) because the batched, compiled evaluation keeps no
per-step states. With `deterministic=true` it is the same episode as evaluation episode k
(its return and length are checked against it by the tests).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

USAGE = """usage: rlcli eval run=<run dir> [episodes=N] [deterministic=true|false] [checkpoint=<env step>]
                 [seed_index=i] [eval_seed=K] [video=true] [video_format=gif|mp4] [video_episodes=M]

Restores the newest checkpoint of the run that can be read (a damaged newer one is skipped
with a one-line notice), or checkpoint=<env steps>, one of checkpoints/; it then
runs N episodes per seed (default: the run's eval_episodes) with the policy's mode
(deterministic; default: the run's eval_deterministic), prints mean +- std of the return and
length per seed and over all, and writes eval.json into the run directory. seed_index=i
evaluates seed i of a run trained with num_seeds > 1 (default: every seed). eval_seed=K draws
the episodes of training's evaluation number K (default 0, the first evaluation).
video=true also writes video_episodes (default 1) episodes per seed to <run>/videos/ as GIF
(video_format=gif, the default) or MP4 (video_format=mp4); video episode k starts where
evaluation episode k does. Rendering the classic-control tasks needs pygame and MP4 needs
imageio-ffmpeg: pip install 'rlcli[video]'. eval.json and same-named videos are overwritten.
run=<multirun dir> evaluates every job of a sweep in turn."""

KEYS = ("run", "episodes", "deterministic", "checkpoint", "seed_index", "eval_seed", "video",
        "video_format", "video_episodes")


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


class Episode(NamedTuple):
    ret: float
    length: int
    frames: int


def _value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse(args: list[str]) -> Options:
    """Options from the arguments; raises ConfigError (one line) for bad input."""
    from rlcli import checkpoint
    from rlcli.commands.common import load_run
    from rlcli.envs import render
    from rlcli.errors import ConfigError
    from rlcli.rules import boolean, int_at_least, one_of

    given: dict[str, str] = {}
    for arg in args:
        key, eq, text = arg.partition("=")
        if not eq or key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"; did you mean {close[0]}={text}?" if close and eq else ""
            raise ConfigError(f"{arg} is not an argument of rlcli eval (allowed: "
                              f"{', '.join(k + '=' for k in KEYS)}){hint}")
        given[key] = text
    run_dir, cfg = load_run([f"run={given['run']}"] if "run" in given else [])
    available = checkpoint.steps(run_dir / "checkpoints")
    num_seeds = int(cfg.num_seeds)
    in_range = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_seeds  # noqa: E731
    # key -> (default, check, what is allowed, what is wrong with a value that fails the check)
    rules = {
        "episodes": (int(cfg.eval_episodes), *int_at_least(1), "is not allowed"),
        "deterministic": (bool(cfg.eval_deterministic), *boolean(), "is not allowed"),
        "checkpoint": (None, lambda v: v is None or v in available,
                       f"one of {', '.join(map(str, available))}",
                       f"is not a checkpoint of run={run_dir}"),
        "seed_index": (None, lambda v: v is None or in_range(v), f"an integer in [0, {num_seeds - 1}]",
                       f"is out of range: the run has num_seeds={num_seeds}"),
        "eval_seed": (0, *int_at_least(0), "is not allowed"),
        "video": (False, *boolean(), "is not allowed"),
        "video_format": ("gif", *one_of(*render.VIDEO_FORMATS), "is not allowed"),
        "video_episodes": (1, *int_at_least(1), "is not allowed"),
    }
    values = {}
    for key, (default, ok, allowed, problem) in rules.items():
        value = _value(given[key]) if key in given else default
        if not ok(value):  # defaults pass, so this is a given value
            raise ConfigError(f"{key}={given[key]} {problem} (allowed: {allowed})")
        values[key] = int(value) if isinstance(value, float) else value
    for key in ("video_format", "video_episodes"):
        if key in given and not values["video"]:
            raise ConfigError(f"{key}={given[key]} is given without video=true (allowed: add video=true)")
    if values["video"]:
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


def make_act(cfg, algo):
    """act(learner, norm, obs, key) -> action for ONE env of ONE seed: training evaluation's
    `algo.act` on the frozen-normalised observation, jitted."""
    import jax

    from rlcli import normalize

    normalizer = normalize.make(cfg)
    deterministic = bool(cfg.eval_deterministic)

    @jax.jit
    def act(learner, norm, obs, key):
        action, _ = algo.act(learner, normalizer.obs(norm, obs[None]), key, deterministic=deterministic)
        return action[0]

    return act


def _env_action(spec, action):
    """The action as the backends pass it to the env: continuous ones clipped to the bounds."""
    import numpy as np

    action = np.asarray(action)
    return action if spec.discrete else np.clip(action, spec.action_low, spec.action_high).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _no_reset_step(env_id: str):
    """gymnax's step of port `env_id` without its auto-reset, jitted: (key, state, env action)
    -> (obs, state, reward, terminated, truncated)."""
    import jax
    import jax.numpy as jnp

    from rlcli.envs import jax_backend

    env = jax_backend.make(env_id)
    gx, params = env.gymnax_env, env.params

    @jax.jit
    def step(key, state, action):
        obs, state, reward, terminated, _ = gx.step_env(key, state, action, params)
        return obs.astype(jnp.float32), state, jnp.float32(reward), terminated, gx.is_truncated(state, params)

    return step


def jax_episode(env, twin, act, learner, norm, reset_key, key, writer) -> Episode:
    """Play one episode of the JAX port `env` from `reset_key`, drawing the reset state and
    the state after every step (the terminal one included: gymnax's `step_env`, which does not
    auto-reset) with the gymnasium `twin`."""
    import jax
    import numpy as np

    from rlcli.envs import render

    step = _no_reset_step(env.spec.id)
    obs, state = env.reset(reset_key)
    writer.append(render.render_twin(twin, env.spec.id, state))
    ret, length, done = np.float32(0), 0, False
    while not done:
        key, k_act, k_env = jax.random.split(key, 3)
        action = _env_action(env.spec, act(learner, norm, obs, k_act))
        obs, state, reward, terminated, truncated = step(k_env, state, action)
        writer.append(render.render_twin(twin, env.spec.id, state))
        ret, length, done = np.float32(ret + np.float32(reward)), length + 1, bool(terminated | truncated)
    return Episode(float(ret), length, writer.frames)


def gymnasium_episode(env, spec, act, learner, norm, reset_seed: int, key, writer) -> Episode:
    """Play one episode of the gymnasium `env` (render_mode="rgb_array") from `reset_seed`,
    rendering the reset state and every step."""
    import jax
    import numpy as np

    obs, _ = env.reset(seed=reset_seed)
    writer.append(env.render())
    ret, length, done = np.float32(0), 0, False
    while not done and length < (spec.max_episode_steps or 100_000):
        key, k_act = jax.random.split(key)
        action = _env_action(spec, act(learner, norm, np.asarray(obs, np.float32), k_act))
        obs, reward, terminated, truncated, _ = env.step(action.item() if spec.discrete else action)
        writer.append(env.render())
        ret, length, done = np.float32(ret + np.float32(reward)), length + 1, bool(terminated or truncated)
    return Episode(float(ret), length, writer.frames)


def eval_start(cfg, backend_name: str, eval_seed: int, seed_index: int, episode: int):
    """Where evaluation episode `episode` of seed `seed_index` starts, as training's
    evaluation draws it: its reset key (jax backend) or reset seed (gymnasium backend)."""
    from rlcli import rollout

    if backend_name == "jax":
        return rollout.eval_reset_keys(rollout.eval_keys(cfg, eval_seed)[seed_index], int(cfg.eval_episodes))[episode]
    return rollout.eval_env_seed(int(cfg.seed) + seed_index, eval_seed) + episode


def record_videos(opts: Options, parts, state, renderer, staging: Path) -> list[dict]:
    """Video episodes 0..video_episodes-1 of each selected seed into `staging`; returns what
    each holds (its final name under videos/, frames, return, length)."""
    import jax

    from rlcli import rollout
    from rlcli.envs import render

    act = make_act(opts.cfg, parts.algo)
    eval_keys = rollout.eval_keys(opts.cfg, opts.eval_seed)
    videos = []
    for i in opts.seed_indices:
        learner, norm = _seed_slice(state.learner, i), _seed_slice(state.norm, i)
        for k in range(opts.video_episodes):
            name = f"step{opts.checkpoint}-seed{i}-episode{k}.{opts.video_format}"
            writer = render.VideoWriter(staging / name, opts.video_format, render.fps(renderer))
            start = eval_start(opts.cfg, parts.backend_name, opts.eval_seed, i, k)
            # the keys of sampled actions (deterministic=false): from the seed's evaluation key
            key = jax.random.fold_in(eval_keys[i], 2_000_003 + k)
            try:
                if parts.backend_name == "jax":
                    from rlcli.envs import jax_backend

                    episode = jax_episode(jax_backend.make(parts.spec.id), renderer, act, learner, norm,
                                          start, key, writer)
                else:
                    episode = gymnasium_episode(renderer, parts.spec, act, learner, norm, start, key, writer)
            finally:
                writer.close()
            videos.append({"file": f"videos/{name}", "seed_index": i, "episode": k,
                           "return": episode.ret, "length": episode.length, "frames": episode.frames})
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
    from rlcli.logger import write_atomic

    parts = train.setup(opts.cfg)
    renderer = None
    if opts.video:
        try:
            renderer = render.make_env(parts.spec.id)
        except render.RenderError as err:
            raise ConfigError(f"video=true: {err} (allowed: video=false, or pip install 'rlcli[video]')") from None
    backend = train.make_loop(opts.cfg, parts)
    with contextlib.closing(backend), contextlib.ExitStack() as cleanup:
        if renderer is not None:
            cleanup.callback(renderer.close)
        state, meta = train.restore_checkpoint(backend, opts.run_dir / "checkpoints", opts.checkpoint)
        opts = opts._replace(checkpoint=int(meta["env_steps"]))  # the newest readable, by default
        returns, lengths = backend.evaluate(state, opts.eval_seed)
        seeds = [int(opts.cfg.seed) + i for i in range(int(opts.cfg.num_seeds))]
        result = {"algo": opts.cfg.algo.name, "env": parts.spec.id, "backend": parts.backend_name,
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
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    from rlcli.commands.common import quiet_logging
    from rlcli.errors import report

    quiet_logging()
    try:
        opts = parse(args)
        result = run(opts)
    except Exception as err:
        code = report("eval", err)
        if code is None:
            raise
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
