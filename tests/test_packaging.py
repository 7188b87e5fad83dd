"""conf/ ships inside the wheel: a wheel installed on its own finds its configs and trains."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.extended
def test_wheel_carries_conf_and_trains(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("rlcli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    shipped = sorted(f"rlcli/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml"))
    assert "rlcli/conf/tuned/a2c_CartPole-v1.yaml" in shipped and "rlcli/conf/sweep/ppo_CartPole-v1.yaml" in shipped
    for conf in shipped:  # every config file of the repo is in the wheel
        assert conf in names, conf
    assert "rlcli = rlcli.cli:main" in entry_points

    # install the wheel alone into a target directory that shadows the source checkout
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import rlcli.cli as c; print(c.__file__); print(c.config_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    module_file, conf_dir = where.stdout.split()
    assert module_file.startswith(str(site)) and conf_dir == str(site / "rlcli" / "conf")

    run = subprocess.run([sys.executable, "-m", "rlcli.cli", "train", "total_steps=400", "log_interval=200",
                          "eval_episodes=1", "logger=quiet"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    (run_dir,) = (work / "outputs").glob("*/*")
    assert json.loads((run_dir / "summary.json").read_text())["total_steps"] == 400
