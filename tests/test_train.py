"""Training: sharded == unsharded step, exact resume after SIGKILL, the loss falls on the debug
config (per-t-quartile losses and the periodic evaluation logged), the workdir loads as a model,
configs and launch scripts parse. Subprocesses: the CPU device count is fixed at JAX
start-up, and a killed run must be a real process. A persistent compilation cache shared by the
subprocesses keeps the recompiles cheap."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from diff2lip_jax.training.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(trainer_env):
  return trainer_env


def _train_check(mesh: str, env: dict, devices: int) -> subprocess.Popen:
  e = dict(env, XLA_FLAGS=f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, str(REPO / "tests" / "train_check.py"), mesh, "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                          cwd=REPO)


def _result(proc: subprocess.Popen) -> dict:
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def test_sharded_step_equals_unsharded(env):
  runs = [_train_check("1x1", env, 1), _train_check("2x4", env, 8)]  # concurrently: compile-bound
  one, mesh = [_result(p) for p in runs]
  for k, v in one["metrics"].items():
    assert mesh["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
  np.testing.assert_allclose(mesh["kernel"], one["kernel"], rtol=1e-4, atol=1e-6)
  assert mesh["param_sum"] == pytest.approx(one["param_sum"], rel=1e-5)
  assert mesh["disc_sum"] == pytest.approx(one["disc_sum"], rel=1e-5)
  # The 3x3 conv kernel [3, 3, 32, 32] is split over fsdp=4 on its output channels.
  assert "fsdp" in mesh["kernel_spec"] and mesh["kernel_shards"] == 4
  assert one["kernel_shards"] == 1


STEPS, CKPT = 40, 10


def _launch(workdir, data_dir, steps):
  return [sys.executable, "-m", "launch.train", "--config", str(REPO / "configs" / "debug.py"),
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
          f"--config.num_train_steps={steps}", "--config.log_every=1",
          f"--config.checkpoint_every={CKPT}", f"--config.sample_every={STEPS}",
          f"--config.eval_every={STEPS}"]


def _losses(workdir, key="loss") -> dict[int, float]:
  return {r["step"]: r[key] for r in read_metrics(workdir) if key in r}


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, env):
  """The debug config for STEPS steps, uninterrupted (also builds the synthetic dataset)."""
  work = tmp_path_factory.mktemp("run_a")
  data_dir = tmp_path_factory.mktemp("data")
  r = subprocess.run(_launch(work, data_dir, STEPS), capture_output=True, text=True, env=env,
                     cwd=REPO, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  return work, data_dir


def test_loss_falls_and_samples_are_written(long_run):
  work, _ = long_run
  losses = _losses(work, "loss_simple")  # the total also holds the adversarial terms
  first = np.mean([losses[s] for s in range(1, 11)])
  last = np.mean([losses[s] for s in range(STEPS - 9, STEPS + 1)])
  assert last < 0.8 * first, (first, last)
  assert [p.name for p in (work / "samples").glob("*.png")] == [f"samples_{STEPS:07d}.png"]
  # The periodic evaluation (evaluation.during_training, EMA params) reached metrics.jsonl.
  assert sorted(_losses(work, "eval/ssim")) == sorted(_losses(work, "eval/psnr")) == [STEPS]
  assert -1 <= _losses(work, "eval/ssim")[STEPS] <= 1 and _losses(work, "eval/psnr")[STEPS] > 0
  steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == STEPS and len(steps) <= 4  # keep 3 latest + the best


def test_loss_quartiles_are_logged(long_run):
  """Every logged row has per-t-quartile losses for the quartiles its 2 clips fell in (no fake
  zeros); over the run every quartile appears."""
  work, _ = long_run
  rows = [r for r in read_metrics(work)
          if "loss" in r]
  seen = set()
  for r in rows:
    q = {k for k in r if k.startswith("loss_simple/q")}
    assert 1 <= len(q) <= 2 and {k.replace("simple", "gan") for k in q} <= set(r)
    assert all(np.isfinite(r[k]) and r[k] > 0 for k in q)
    seen |= q
  assert seen == {f"loss_simple/q{i}" for i in range(4)}


def test_workdir_names_a_model(long_run, tmp_path):
  """`load_model(W)`: the EMA params of the best-val_loss checkpoint; `W/checkpoints/<step>`:
  that step's; `export(W, D)` loads back equal."""
  import jax
  import orbax.checkpoint as ocp
  from diff2lip_jax.inference import checkpoints
  work, _ = long_run
  assert json.loads((work / "model_flags.json").read_text())["num_channels"] == 32
  assert json.loads((work / "config.json").read_text())["batch_size"] == 2
  kept = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  val = {s: v for s, v in _losses(work, "val_loss").items() if s in kept}
  best = min(val, key=val.get)

  def ema(step):
    state = ocp.StandardCheckpointer().restore(work / "checkpoints" / str(step) / "state")
    return state["ema_params"]

  def assert_equal(a, b):
    np.testing.assert_equal(jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))

  loaded = checkpoints.load_model(work)
  assert f"step {best}" in loaded.source
  assert_equal(loaded.params, ema(best))
  other = max(s for s in kept if s != best)
  assert_equal(checkpoints.load_model(work / "checkpoints" / str(other)).params, ema(other))
  out = checkpoints.export(work, tmp_path / "export")
  assert_equal(checkpoints.load_model(out).params, ema(best))


def test_killed_run_resumes_bit_for_bit(long_run, tmp_path, env):
  """SIGKILL right after the first checkpoint, rerun with the same workdir: the resumed steps'
  losses equal the uninterrupted run's exactly (params, optimizer, EMA, RNG, data order)."""
  work_a, data_dir = long_run
  work = tmp_path / "run_b"
  proc = subprocess.Popen(_launch(work, data_dir, STEPS), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env, cwd=REPO)
  ckpt = work / "checkpoints" / str(CKPT)
  deadline = time.time() + 600
  while not (ckpt / "_CHECKPOINT_METADATA").exists() and proc.poll() is None:
    assert time.time() < deadline, f"no checkpoint at step {CKPT}"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_losses(work))
  assert killed_at < STEPS
  lines_before = len(read_metrics(work))
  resume_to = 2 * CKPT
  r = subprocess.run(_launch(work, data_dir, resume_to), capture_output=True, text=True, env=env,
                     cwd=REPO, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed" in r.stderr
  resumed = read_metrics(work)
  after = {row["step"]: row["loss"] for row in resumed[lines_before:] if "loss" in row}
  reference = _losses(work_a)
  assert sorted(after) == list(range(CKPT + 1, resume_to + 1))
  for s in after:
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
