"""`launch.train` as 2 JAX processes on this machine (gloo on localhost, 2 forced CPU devices
each; issue 15): SIGTERM to one process saves one step on both (exit 0), a rerun resumes there,
and the whole run equals one uninterrupted process with 4 devices fed the same global batch.
Three launches (~2 min each on a loaded 2-core CPU). Resuming with another host count:
tests/test_train_units.py; bit-for-bit resume: tests/test_train.py (one process).

The processes share the persistent compilation cache, but only process 0 reads its entries back
(the cache key holds the process index), so process 1 compiles each time; the trainer compiles
its steps ahead and meets at a barrier (`data_setup.compile_in_step`) because a gloo collective
gives up after 30 s. (`jax_share_binary_between_hosts` would deadlock here for the same reason.)
"""

import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from diff2lip_jax.training.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, CKPT, BATCH = 5, 3, 4


@pytest.fixture(scope="module")
def env(trainer_env):
  return trainer_env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(work, data_dir, steps):
  return ["-m", "launch.train", "--config", str(REPO / "configs" / "debug.py"),
          "--workdir", str(work), f"--config.data.data_dir={data_dir}",
          f"--config.num_train_steps={steps}", "--config.log_every=1",
          f"--config.checkpoint_every={CKPT}", f"--config.sample_every={CKPT}",
          f"--config.batch_size={BATCH}"]


def _start(work, data_dir, steps, env, processes=2):
  """`processes` processes with 4 // processes devices each; returns the Popen objects. With 2
  processes the params are sharded over all 4 devices of both (fsdp=4): the EMA params for
  the sample grid must be gathered across hosts."""
  devices = 4 // processes
  e = dict(env, XLA_FLAGS=f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}")
  multi = []
  port = _free_port()
  procs = []
  for i in range(processes):
    if processes > 1:
      multi = ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes),
               "--process_id", str(i)]
    procs.append(subprocess.Popen([sys.executable, *_args(work, data_dir, steps)[:2], *multi,
                                   *_args(work, data_dir, steps)[2:],
                                   *(["--config.mesh.data=1", "--config.mesh.fsdp=4"] if multi
                                     else [])],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=e, cwd=REPO))
  return procs


def _finish(procs) -> list[str]:
  """Waits for all; asserts exit 0; returns their stderr."""
  outs = [p.communicate(timeout=900) for p in procs]
  for i, (p, (_, err)) in enumerate(zip(procs, outs)):
    if p.returncode != 0:
      pathlib.Path(f"/tmp/multihost_fail_{i}.log").write_text(err)
      lines = [l for l in err.splitlines() if "Error" in l or "error:" in l or "Fatal" in l]
      pytest.fail(f"process {i} exit {p.returncode}: " + "\n".join(lines[-8:]) + err[-1500:])
  return [err for _, err in outs]


def _by_step(work, key="loss") -> dict[int, float]:
  return {r["step"]: r[key] for r in read_metrics(work) if key in r}


def _grid(work, step) -> np.ndarray:
  return np.asarray(Image.open(pathlib.Path(work) / "samples" / f"samples_{step:07d}.png"),
                    np.int16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
  """(preempted 2-process workdir, preempted step, its stderrs, 1-process workdir).

  2 processes (process 0 builds the synthetic data while process 1 waits at the barrier), SIGTERM
  to process 1 only once step 1 is logged; rerun to STEPS; then STEPS uninterrupted steps on one
  process with 4 devices, same global batch."""
  root = tmp_path_factory.mktemp("multihost")
  data_dir, two, one = root / "data", root / "two", root / "one"
  t = time.perf_counter()
  procs = _start(two, data_dir, STEPS, env)
  deadline = time.time() + 900
  while 1 not in _by_step(two) and all(p.poll() is None for p in procs):
    assert time.time() < deadline, "no step logged"
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  errs = _finish(procs)
  stop = max(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())
  rows_before = len(read_metrics(two))
  print(f"2 processes until SIGTERM (step {stop}): {time.perf_counter() - t:.0f} s")
  t = time.perf_counter()
  _finish(_start(two, data_dir, STEPS, env))
  print(f"2 processes, resumed to {STEPS}: {time.perf_counter() - t:.0f} s")
  t = time.perf_counter()
  _finish(_start(one, data_dir, STEPS, env, processes=1))
  print(f"1 process, {STEPS} steps: {time.perf_counter() - t:.0f} s")
  return two, stop, errs, rows_before, one


def test_sigterm_to_one_process_saves_one_step_on_both(runs):
  """Both processes stop at the same step, save it (one iterator file each), exit 0 and say so;
  the rerun resumes there."""
  two, stop, errs, rows_before, _ = runs
  assert stop < STEPS, "the run was not stopped"
  for err in errs:
    assert f"preempted: saved step {stop} on all 2 processes" in err
  assert sorted(p.name for p in (two / "checkpoints" / str(stop) / "data").glob("*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  resumed = [r["step"] for r in read_metrics(two)[rows_before:] if "loss" in r]
  assert resumed == list(range(stop + 1, STEPS + 1))


def test_two_processes_equal_one_process(runs):
  """The preempted-and-resumed 2-process run (params sharded over both hosts) gives, step by
  step, what one uninterrupted process (4 devices, data parallel) with the same global batch
  gives: the same computation (float reduction order aside), the same data on resume, one draw
  per global batch, and the same sample grid (EMA params gathered across hosts)."""
  two, _, _, _, one = runs
  assert sorted(_by_step(two)) == sorted(_by_step(one)) == list(range(1, STEPS + 1))
  for key in ("loss", "loss_simple", "grad_norm", "loss_disc"):
    a, b = _by_step(two, key), _by_step(one, key)
    for s in range(1, STEPS + 1):
      assert a[s] == pytest.approx(b[s], rel=1e-4, abs=1e-6), (key, s)
  assert _by_step(two, "val_loss")[STEPS] == pytest.approx(_by_step(one, "val_loss")[STEPS],
                                                           rel=1e-4)
  # Quartile losses logged: only quartiles that held a clip, finite.
  assert any(k.startswith("loss_simple/q") for r in read_metrics(two) for k in r)
  assert all(np.isfinite(r[k]) for r in read_metrics(two) for k in r if "/q" in k)
  # The sample grid is of the same clip with the same params on 2 processes as on 1.
  a, b = _grid(two, STEPS), _grid(one, STEPS)
  assert a.shape == b.shape and np.mean(a == b) > 0.99 and np.abs(a - b).max() <= 2
  assert (two / "model_flags.json").is_file()
