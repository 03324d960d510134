"""Training: sharded == unsharded step, exact resume after SIGKILL, the loss falls on the debug
config, configs and launch scripts parse. Subprocesses: the CPU device count is fixed at JAX
start-up, and a killed run must be a real process. A persistent compilation cache shared by the
subprocesses keeps the recompiles cheap."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ)
  e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
  e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return e


def _train_check(mesh: str, env: dict, devices: int) -> dict:
  e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run([sys.executable, str(REPO / "tests" / "train_check.py"), mesh, "1"],
                     capture_output=True, text=True, env=e, cwd=REPO, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


# Slow on a 2-core CPU (two subprocess compiles of the step, >15 min under load here); run it
# with `python -m pytest -m slow tests/test_train.py` (issue 3 stays open on its CI cost).
@pytest.mark.slow
def test_sharded_step_equals_unsharded(env):
  one = _train_check("1x1", env, 1)
  mesh = _train_check("2x4", env, 8)
  for k, v in one["metrics"].items():
    assert mesh["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
  np.testing.assert_allclose(mesh["kernel"], one["kernel"], rtol=1e-4, atol=1e-6)
  assert mesh["param_sum"] == pytest.approx(one["param_sum"], rel=1e-5)
  assert mesh["disc_sum"] == pytest.approx(one["disc_sum"], rel=1e-5)
  # The 3x3 conv kernel [3, 3, 32, 32] is split over fsdp=4 on its output channels.
  assert "fsdp" in mesh["kernel_spec"] and mesh["kernel_shards"] == 4
  assert one["kernel_shards"] == 1


def _launch(workdir, data_dir, env, steps, *extra):
  return [sys.executable, "-m", "launch.train", "--config", str(REPO / "configs" / "debug.py"),
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
          f"--config.num_train_steps={steps}", *extra]


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, env):
  """The debug config for 200 steps, uninterrupted (also builds the synthetic dataset)."""
  work = tmp_path_factory.mktemp("run_a")
  data_dir = tmp_path_factory.mktemp("data")
  r = subprocess.run(_launch(work, data_dir, env, 200, "--config.log_every=1"),
                     capture_output=True, text=True, env=env, cwd=REPO, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  return work, data_dir


# The two tests below run the debug config for 200 + ~60 steps in subprocesses; on this 2-core
# CPU a debug step measured ~6 s under load (issue 3 stays open on it), so they are kept out of
# the default run: `python -m pytest -m slow tests/test_train.py`.
@pytest.mark.slow
def test_loss_falls_and_samples_are_written(long_run):
  work, _ = long_run
  losses = _losses(work)
  first = np.mean([losses[s] for s in range(1, 21)])
  last = np.mean([losses[s] for s in range(181, 201)])
  assert last < 0.6 * first, (first, last)
  assert sorted(p.name for p in (work / "samples").glob("*.png")) == [
      "samples_0000100.png", "samples_0000200.png"]
  steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == 200 and len(steps) <= 4  # keep 3 latest + the best


@pytest.mark.slow
def test_killed_run_resumes_bit_for_bit(long_run, tmp_path, env):
  work_a, data_dir = long_run
  work = tmp_path / "run_b"
  proc = subprocess.Popen(_launch(work, data_dir, env, 200, "--config.log_every=1"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
  ckpt = work / "checkpoints" / "50"
  deadline = time.time() + 900
  while not (ckpt / "_CHECKPOINT_METADATA").exists() and proc.poll() is None:
    assert time.time() < deadline, "no checkpoint at step 50"
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_losses(work))
  assert killed_at < 200
  lines_before = len((work / "metrics.jsonl").read_text().splitlines())
  r = subprocess.run(_launch(work, data_dir, env, 60, "--config.log_every=1"),
                     capture_output=True, text=True, env=env, cwd=REPO, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed" in r.stderr
  resumed = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  after = {row["step"]: row["loss"] for row in resumed[lines_before:] if "loss" in row}
  reference = _losses(work_a)
  assert sorted(after) == list(range(51, 61))
  for s in range(51, 61):
    assert after[s] == reference[s], (s, after[s], reference[s])  # bit for bit


def test_configs_and_scripts_parse():
  from configs import debug, diff2lip_voxceleb2, lrw
  paper = diff2lip_voxceleb2.get_config()
  assert (paper.loss.simple, paper.loss.sync, paper.loss.lpips, paper.loss.gan) == (1, 0.1, 0.25, 0.5)
  assert paper.model.num_channels == 128 and paper.optim.ema_decay == 0.9999
  assert lrw.get_config().data.dataset_name == "diff2lip_lrw"
  assert debug.get_config().data.synthetic
  for script in ("tpu_pod.sh", "multi_gpu.sh"):
    r = subprocess.run(["bash", str(REPO / "launch" / script)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 2 and "launch" in r.stdout  # usage text
