"""`rlcli export run=<run dir> format=npz|onnx|stablehlo [checkpoint=N] [seed_index=i] [out=<dir>]`:
one seed's trained policy out of its orbax checkpoint, in a format that runs without rlcli
(rlcli.export), checked against rlcli's own act function before anything is written.

The checkpoint is restored as `rlcli eval` restores it (`train.setup`, `train.make_loop`,
`train.restore_checkpoint`); the policy's arrays and rlcli's reference functions are taken
from it, the format is written into a staging directory beside `out`, loaded back with its
own runtime and compared with the reference on 1,000 observations of the run's env
(`parity_observations`), and only then moved into `out`. A check that fails writes nothing
and exits 1.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from rlcli import arguments
from rlcli.arguments import Command, Option, text_of
from rlcli.errors import ConfigError
from rlcli.rules import int_at_least, non_empty_text, one_of

FORMATS = ("npz", "onnx", "stablehlo")

COMMAND = Command(
    "export", "run=<run dir> format=npz|onnx|stablehlo [key=value ...]",
    """Exports one seed's policy from the newest readable checkpoint of the run (or
checkpoint=<env steps>): npz writes policy.npz and policy.py, a NumPy module whose act(obs)
and log_prob(obs, action) need no JAX; onnx writes policy.onnx (obs -> deterministic action,
observation normalisation included; needs pip install 'rlcli[export]'); stablehlo writes
act.stablehlo and log_prob.stablehlo (jax.export, load with jax.export.deserialize) and
act.mlir. Each export is checked against rlcli's act on 1,000 observations of the run's env
(discrete actions equal; continuous actions and log-probs within 1e-5) before it is written,
with export.json beside it. run=<multirun dir> exports every job of a sweep.""",
    (Option("run", None, non_empty_text(), "the run directory written by rlcli train", text_of),
     Option("format", None, one_of(*FORMATS), "the export format"),
     Option("checkpoint", None, int_at_least(0), "env step of the checkpoint (default: the newest readable)"),
     Option("seed_index", 0, int_at_least(0), "which seed of num_seeds > 1"),
     Option("out", None, non_empty_text(), "the directory to write (default: <run>/export/<format>-seed<i>)",
            text_of),
     Option("parity_observations", 1000, int_at_least(1), "observations of the parity check")),
)


class Options(NamedTuple):
    run_dir: Path
    cfg: Any
    fmt: str
    checkpoint: int | None
    seed_index: int
    out: Path
    parity_observations: int


def parse(args: list[str]) -> Options:
    """Options from the arguments; raises ConfigError (one line) for bad input."""
    from rlcli.commands.common import checkpointed_run

    parsed = arguments.parse(COMMAND, args)
    values = parsed.values
    if values["format"] is None:
        raise ConfigError(f"format= is required (allowed: one of {', '.join(FORMATS)})")
    run_dir, cfg = checkpointed_run(parsed)
    if values["format"] == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        raise ConfigError("format=onnx needs onnx and onnxruntime, which are not installed (allowed: "
                          "format=npz or format=stablehlo, or pip install 'rlcli[export]')")
    out = Path(values["out"]) if values["out"] else run_dir / "export" / f"{values['format']}-seed{values['seed_index']}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file (allowed: a directory, new or existing)")
    return Options(run_dir, cfg, values["format"], values["checkpoint"], values["seed_index"], out,
                   values["parity_observations"])


def run(opts: Options) -> dict:
    """Restore, write into a staging directory, check, then move the files into `out`;
    returns export.json's content. Raises RunError when the check fails (nothing written)."""
    import contextlib
    import json
    import shutil
    import tempfile

    import jax
    import numpy as np

    from rlcli import export, normalize, train
    from rlcli.errors import RunError
    from rlcli.paths import write_atomic

    parts = train.setup(opts.cfg)
    loop = train.make_loop(parts)
    with contextlib.closing(loop):
        state, meta = train.restore_checkpoint(loop, opts.run_dir / "checkpoints", opts.checkpoint)
    learner, norm = jax.tree.map(lambda x: x[opts.seed_index], (state.learner, state.norm))
    policy = export.arrays(parts.cfg, parts.spec, learner, norm)
    ref = export.reference(parts, learner, norm)
    seed = parts.cfg.seed + opts.seed_index
    obs = export.observations(parts, opts.parity_observations, seed)
    # actions for the log-probs: the policy's own samples (uniform ones before an off-policy
    # algorithm's learning_starts; a recurrent policy's from an episode's start)
    normalizer = normalize.make(parts.cfg)

    def sample(o, k):
        if parts.algo.initial_state is None:
            return parts.algo.act(learner, normalizer.obs(norm, o), k)[0]
        return parts.algo.act(learner, normalizer.obs(norm, o), k, state=parts.algo.initial_state(o.shape[0]),
                              episode_start=jax.numpy.ones(o.shape[:1], bool))[0]

    actions = np.asarray(jax.jit(sample)(obs, jax.random.PRNGKey(seed)))

    made = next((d for d in reversed(opts.out.absolute().parents) if not d.exists()), None)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}-", dir=opts.out.parent))
    written = False
    try:
        files = export.write(opts.fmt, staging, policy, ref, parts.spec)
        result = export.parity(opts.fmt, staging, ref, parts.spec, obs, actions)
        if not export.passes(result):
            raise RunError(f"the {opts.fmt} export of run={opts.run_dir} does not match rlcli's act function: "
                           f"{json.dumps(result)} (nothing was written)")
        opts.out.mkdir(exist_ok=True)
        for name in files:
            os.replace(staging / name, opts.out / name)
        content = export.manifest(opts.fmt, files, parts, meta, opts.seed_index, result)
        write_atomic(opts.out / "export.json", content)
        written = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not written and made is not None:  # the directories made for out=, left empty
            shutil.rmtree(made, ignore_errors=True)
    return json.loads(content)


def main(args: list[str]) -> int:
    from rlcli.commands.common import parse_and_run

    code, opts, result = parse_and_run(COMMAND, parse, run, args)
    if code is not None:
        return code
    check = result["parity"]
    measured = [f"{check['observations']} observations"
                + (f" ({check['sequences']} sequences of {check['steps']} steps)" if "sequences" in check else "")]
    if "actions_differing" in check:
        measured.append(f"{check['actions_differing']} actions differing")
    if "max_action_error" in check:
        measured.append(f"max action error {check['max_action_error']:.2e}")
    if "max_log_prob_error" in check:
        measured.append(f"max log-prob error {check['max_log_prob_error']:.2e}")
    if "max_state_error" in check:
        measured.append(f"max hidden-state error {check['max_state_error']:.2e}")
    print(f"rlcli export: {result['algo']} on {result['env']}, checkpoint at env step {result['checkpoint']}, "
          f"seed {result['seed']} (seed_index {result['seed_index']}) as {opts.fmt}: "
          + ", ".join(str(opts.out / name) for name in result["files"]))
    print(f"checked against rlcli's act: {', '.join(measured)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
