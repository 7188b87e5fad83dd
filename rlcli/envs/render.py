"""Frames and video files of episodes.

* A gymnasium env renders itself: ``gymnasium.make(id, render_mode="rgb_array")``.
* A JAX port is drawn by its gymnasium twin (the same classic-control id): the twin's
  ``unwrapped.state`` is set from the gymnax state, then the twin renders. `TWIN_STATE` maps
  each port's gymnax `EnvState` fields onto gymnasium's state vector, in gymnasium's order
  (gymnasium/envs/classic_control/*.py); Pendulum-v1 also carries `last_u`, the torque arrow.

Classic-control rendering needs pygame (``gymnasium[classic-control]``). Videos are GIF
(Pillow) or MP4 (imageio + imageio-ffmpeg).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# gymnax EnvState field names, in the order of gymnasium's `env.unwrapped.state`
TWIN_STATE: dict[str, tuple[str, ...]] = {
    "CartPole-v1": ("x", "x_dot", "theta", "theta_dot"),
    "Acrobot-v1": ("joint_angle1", "joint_angle2", "velocity_1", "velocity_2"),
    "MountainCar-v0": ("position", "velocity"),
    "MountainCarContinuous-v0": ("position", "velocity"),
    "Pendulum-v1": ("theta", "theta_dot"),
}

VIDEO_FORMATS = ("gif", "mp4")


class RenderError(Exception):
    """One line: why frames cannot be rendered or written (e.g. a missing package)."""


def make_env(env_id: str):
    """A gymnasium env that renders RGB frames, reset once (so that it may render). Raises
    RenderError when its rendering dependency is missing."""
    import gymnasium

    # pygame draws offscreen; without these SDL probes for a display and a sound card. MuJoCo
    # renders headless through EGL (its default, GLFW, needs a display).
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = gymnasium.make(env_id, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
    except gymnasium.error.DependencyNotInstalled as err:
        raise RenderError(f"rendering {env_id} needs a package that is not installed: {_first_line(err)}") from None
    except Exception as err:  # e.g. MuJoCo without an OpenGL platform
        raise RenderError(f"rendering {env_id} failed: {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        env.close()
        raise RenderError(f"{env_id} renders no RGB frames with render_mode='rgb_array'")
    return env


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def fps(env) -> float:
    return float(env.metadata.get("render_fps") or 30)


def set_twin_state(twin, env_id: str, state: Any) -> None:
    """Put the gymnax `state` of port `env_id` into its gymnasium twin."""
    inner = twin.unwrapped
    inner.state = np.array([float(getattr(state, name)) for name in TWIN_STATE[env_id]], np.float64)
    if env_id == "Pendulum-v1":
        # gymnasium has no torque arrow right after a reset (last_u None); gymnax keeps 0 there
        inner.last_u = None if int(state.time) == 0 else float(state.last_u)


def render_twin(twin, env_id: str, state: Any) -> np.ndarray:
    """The [H, W, 3] uint8 frame of the gymnax `state`, drawn by the gymnasium twin."""
    set_twin_state(twin, env_id, state)
    return twin.render()


def mp4_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))


class VideoWriter:
    """Frames appended one at a time to a GIF (Pillow; written on close) or an MP4 (imageio's
    ffmpeg, streamed). A GIF stores identical consecutive frames once with their durations
    added, so it plays for frames / fps seconds but may hold fewer images."""

    def __init__(self, path: str | Path, fmt: str, frames_per_second: float):
        if fmt not in VIDEO_FORMATS:
            raise ValueError(f"video format {fmt!r} (allowed: {', '.join(VIDEO_FORMATS)})")
        self.path, self.fmt, self.fps, self.frames = Path(path), fmt, frames_per_second, 0
        self._images: list = []
        self._writer = None
        if fmt == "mp4":
            if not mp4_available():
                raise RenderError("mp4 video needs imageio and imageio-ffmpeg (pip install 'rlcli[video]')")
            import imageio.v2 as imageio

            # libx264's yuv420p needs even sizes; 2 (not ffmpeg's default 16) keeps the env's size
            self._writer = imageio.get_writer(self.path, format="FFMPEG", mode="I", fps=frames_per_second,
                                              codec="libx264", macro_block_size=2)

    def append(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame, np.uint8)
        if self._writer is not None:
            with warnings.catch_warnings():
                # the first frame starts ffmpeg (fork + exec at once: not the deadlock JAX warns of)
                warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
                self._writer.append_data(frame)
        else:
            from PIL import Image

            self._images.append(Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif self._images:
            first, *rest = self._images
            first.save(self.path, format="GIF", save_all=True, append_images=rest,
                       duration=round(1000 / self.fps), loop=0)
            self._images = []
