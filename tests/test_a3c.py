"""A3C: bad input, stale gradients counted exactly under forced interleavings of the workers
(none with W = 1), W = 1 against the synchronous a2c run of the same config, checkpoint/resume
and `rlcli eval`, CartPole learning."""

from __future__ import annotations

import json
import threading

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import compose
from rlcli import config, train as training

SMALL = ["logger=quiet", "algo=a3c", "num_envs=4", "algo.num_steps=8", "eval_episodes=2"]


def backend_of(overrides):
    cfg = compose(overrides)
    parts = training.setup(cfg)
    return training.make_loop(parts)


@pytest.mark.parametrize("overrides, message", [
    (["env.backend=gymnasium"],
     "env.backend='gymnasium' is not allowed with algo=a3c (env.id='CartPole-v1' would run on the gymnasium "
     "backend; allowed: env.backend=jax or auto with an env that has a JAX port: CartPole-v1, Acrobot-v1"),
    (["env=HalfCheetah-v5", "env.backend=auto"],
     "env.backend='auto' is not allowed with algo=a3c (env.id='HalfCheetah-v5' would run"),
    (["num_envs=6", "algo.num_workers=4"],
     "num_envs=6 is not allowed with algo.num_workers=4 (allowed with algo=a3c: a multiple of algo.num_workers"),
    (["algo.num_workers=0"], "algo.num_workers=0 is not allowed (allowed: an integer >= 1)"),
    (["algo.num_workers=1.5"], "algo.num_workers=1.5 is not allowed (allowed: an integer >= 1)"),
    (["normalize.obs=true"], "normalize.obs=true is not allowed with algo=a3c (allowed: false;"),
    (["estimator=reward_to_go"], "estimator=reward_to_go does not fit algo=a3c (allowed with algo=a3c: "
                                 "estimator=td, nstep, gae)"),
])
def test_bad_input_is_one_line(overrides, message):
    with pytest.raises(config.ConfigError) as err:
        config.validate(compose(["algo=a3c", *overrides]))
    text = str(err.value)
    assert "\n" not in text and message in text, text


def test_bad_input_on_the_command_line(cli, tmp_path):
    result = cli(["train", "algo=a3c", "env.backend=gymnasium"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "env.backend='gymnasium' is not allowed with algo=a3c" in result.stderr
    assert not (tmp_path / "outputs").exists()


class ScheduledLock:
    """Stands in for the lock of a3c's chunk (rlcli/loops/asynchronous.py), which a worker takes
    twice per gradient application: to take a ticket and read the global parameters and their
    version, then to apply its gradient. The worker threads (named a3c-worker-<w>) get it in
    the order `turns` (worker ids), so the interleaving of their reads and applications is
    fixed whatever the OS scheduler does; once the turns are used up (the workers' last
    look at the tickets) and for any other thread it is a plain lock. `granted` lists the
    worker of every acquisition."""

    def __init__(self, turns):
        self.turns, self.next, self.granted = list(turns), 0, []
        self.lock, self.changed = threading.Lock(), threading.Condition()
        self.holder_had_turn = False
        self.stuck = False  # a turn not taken in time: plain lock from then on, and the test fails

    def __enter__(self):
        name = threading.current_thread().name
        worker = int(name.rsplit("-", 1)[1]) if name.startswith("a3c-worker-") else None
        with self.changed:
            if worker is not None and not self.changed.wait_for(
                    lambda: self.stuck or self.next >= len(self.turns) or self.turns[self.next] == worker,
                    timeout=60):
                self.stuck = True
                self.changed.notify_all()
        self.lock.acquire()
        with self.changed:
            self.holder_had_turn = worker is not None and not self.stuck and self.next < len(self.turns)
            if worker is not None:
                self.granted.append(worker)
        return self

    def __exit__(self, *exc):
        with self.changed:
            if self.holder_had_turn:
                self.next += 1
                self.changed.notify_all()
        self.lock.release()


@pytest.mark.slow
def test_stale_applications_are_counted_exactly(monkeypatch):
    """W = 2 workers, 2 seeds (num_envs = 4: 2 envs per worker, 8 steps per rollout), two
    chunks of 3 updates = 6 gradient applications each, under two fixed interleavings (R: take
    a ticket and read the parameters, A: apply the gradient computed at them; a staleness is
    the number of applications between a worker's read and its application):

    * chunk 1, per round R0 R1 A1 R1 A1 A0 (twice): worker 1 applies twice at the parameters it
      read (staleness 0, 0) while worker 0 still computes at its snapshot, which is then 2
      versions old: staleness 0, 0, 2, 0, 0, 2 -> mean 2/3, max 2; worker 1 collects 4
      rollouts, worker 0 2;
    * chunk 2, per round R0 R1 A0 A1 (three times): both read the same version, the second to
      apply is 1 behind: staleness 0, 1, 0, 1, 0, 1 -> mean 1/2, max 1; 3 rollouts each.

    Every application counts (the version is 6, then 12, for both seeds), and each worker's
    envs took 2 envs x 8 steps per rollout of it. W = 1 is never stale: see the resume test."""
    from types import SimpleNamespace

    from rlcli.loops import asynchronous

    backend = backend_of([*SMALL, "algo.num_workers=2", "num_seeds=2"])
    state = backend.init()
    schedules = [([0, 1, 1, 1, 1, 0] * 2, [0, 0, 2, 0, 0, 2], [2, 4]), ([0, 1, 0, 1] * 3, [0, 1] * 3, [3, 3])]
    for chunk, (turns, staleness, rollouts) in enumerate(schedules):
        lock = ScheduledLock(turns)
        monkeypatch.setattr(asynchronous, "threading", SimpleNamespace(Lock=lambda: lock, Thread=threading.Thread))
        state, out = backend.chunk(state, 3)
        # the turns in order, then each worker's last look at the tickets (none left)
        assert not lock.stuck and lock.granted[:len(turns)] == turns, lock.granted
        assert sorted(lock.granted[len(turns):]) == [0, 1], lock.granted
        np.testing.assert_array_equal(state.learner.update_step, [(chunk + 1) * 6] * 2)
        np.testing.assert_allclose(out.metrics["train/staleness_mean"], [np.mean(staleness)] * 2, rtol=1e-6)
        np.testing.assert_array_equal(out.metrics["train/staleness_max"], [max(staleness)] * 2)
        # env steps each worker's envs took in this chunk: finished episodes' lengths + the running ones'
        # (those running at the chunk's start had taken steps before it)
        if chunk == 0:
            episodes = state.workers.episodes  # [seeds, workers, ...]
            steps = np.asarray(episodes.length_sum) + np.asarray(episodes.running_length).sum(axis=-1)
            np.testing.assert_array_equal(steps, [[2 * 8 * n for n in rollouts]] * 2)
        # every key a2c logs, plus the staleness; all finite
        assert {"loss/total", "loss/policy", "loss/value", "policy/entropy", "train/grad_norm"} <= out.metrics.keys()
        assert all(np.isfinite(v).all() for v in out.metrics.values())
        assert all((np.asarray(i) == -1).all() for i in out.first_nonfinite.values())


@pytest.mark.extended
def test_one_worker_is_the_a2c_run_of_the_same_config():
    """With W = 1 there is nothing to be stale against: each application is the gradient at the
    current parameters of a rollout of all envs, i.e. a2c's update on the jax backend. Same
    config (shared torso, entropy bonus, n-step to the end of the segment), same seed: the same
    parameters after 30 updates (measured: bit-identical; allowed: float32 rounding), the same
    episodes and losses, the same evaluation; and two W = 1 runs are identical."""
    common = ["logger=quiet", "num_envs=4", "algo.num_steps=8", "network.shared=true", "algo.ent_coef=0.01",
              "num_seeds=2", "eval_episodes=2"]
    results = {}
    for name, extra in (("a2c", ["algo=a2c"]), ("a3c", ["algo=a3c", "algo.num_workers=1"])):
        backend = backend_of([*extra, *common])
        state, out = backend.chunk(backend.init(), 30)
        results[name] = (state, out, backend.evaluate(state, 0))
        if name == "a3c":
            again, _ = backend.chunk(backend.init(), 30)
            for a, b in zip(jax.tree.leaves(again.learner.params), jax.tree.leaves(state.learner.params)):
                np.testing.assert_array_equal(a, b)
    (s2, o2, e2), (s3, o3, e3) = results["a2c"], results["a3c"]
    for a, b in zip(jax.tree.leaves(s2.learner.params), jax.tree.leaves(s3.learner.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(o2.episodes.count, o3.episodes.count)
    np.testing.assert_allclose(o2.episodes.return_sum, o3.episodes.return_sum, rtol=1e-6)
    for key in o2.metrics:
        np.testing.assert_allclose(o2.metrics[key], o3.metrics[key], rtol=1e-4, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(e2[0], e3[0])
    # ... and a2c itself moved: the comparison is not between two untrained networks
    assert o2.metrics["loss/total"][0] != o2.metrics["loss/total"][1]


@pytest.mark.extended
def test_resume_is_exact_and_rlcli_eval_reads_the_checkpoint(tmp_path):
    """W = 1 (reproducible): a run resumed from its checkpoint gives the training metrics of an
    uninterrupted one (worker env states, keys, optimizer state come back); `rlcli eval`
    restores the final checkpoint and reproduces the run's final evaluation. W = 2 resumes too."""
    from rlcli.commands import evaluate

    common = [*SMALL, "algo.num_workers=1", "log_interval=320", "checkpoint_interval=640"]
    for run in ("whole", "part"):
        (tmp_path / run / ".hydra").mkdir(parents=True)
    training.train(compose([*common, "total_steps=1280"]), tmp_path / "whole")
    training.train(compose([*common, "total_steps=640"]), tmp_path / "part")
    summary = training.train(compose([*common, "total_steps=1280"]), tmp_path / "part", resume=True)
    assert summary["resumed_from_update"] == 20

    def numbers(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("wall_time", "perf/steps_per_s") and not k.startswith("eval/")}
                for r in rows]

    assert numbers("whole") == numbers("part") and len(numbers("whole")) == 4
    assert all(r["train/staleness_max"] == 0.0 for r in numbers("whole"))

    whole = tmp_path / "whole"
    OmegaConf.save(compose([*common, "total_steps=1280"]), whole / ".hydra" / "config.yaml")
    report = evaluate.run(evaluate.parse([f"run={whole}"]))
    saved = json.loads((whole / "summary.json").read_text())
    assert report["algo"] == "a3c" and report["update"] == 40
    assert report["seeds"][0]["return_mean"] == pytest.approx(saved["final_eval"]["return_mean"][0])

    (tmp_path / "two" / ".hydra").mkdir(parents=True)
    two = [*SMALL, "algo.num_workers=2", "num_seeds=2", "log_interval=320", "checkpoint_interval=640"]
    training.train(compose([*two, "total_steps=640"]), tmp_path / "two")
    resumed = training.train(compose([*two, "total_steps=1280"]), tmp_path / "two", resume=True)
    assert resumed["resumed_from_update"] == 20 and resumed["num_updates"] == 40
