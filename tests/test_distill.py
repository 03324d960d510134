"""Progressive distillation: the rounds, the nested grids and the target of one student step;
the job (`launch.distill`) on the debug setup: the 2-step student beats the teacher's own DDIM-2,
and a run killed with SIGKILL resumes with the same losses. The jobs run as subprocesses (a
killed run must be a real process; full XLA optimisation)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax.diffusion import solvers
from diff2lip_jax.training import distill
from diff2lip_jax.training.metrics import read_metrics


def test_rounds_and_student_steps():
  assert distill.num_rounds(32, 4) == 3 and distill.num_rounds(8, 2) == 2
  for bad in ((8, 3), (4, 4), (4, 8), (8, 0)):
    with pytest.raises(ValueError, match="power of two"):
      distill.num_rounds(*bad)
  steps = [distill.student_steps_at(s, 32, 10, 3) for s in (0, 9, 10, 29, 30, 99)]
  assert steps == [16, 16, 8, 4, 4, 4]
  assert int(distill.student_steps_at(jnp.int32(15), 32, 10, 3)) == 8


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_trailing_grids_nest(n):
  t = solvers.trailing_timestep(np.arange(1, n + 1), n)
  np.testing.assert_array_equal(t, solvers.trailing_timestep(2 * np.arange(1, n + 1), 2 * n))
  assert t[-1] == 999 and np.all(np.diff(t) > 0)
  traced = jax.jit(lambda k: solvers.trailing_timestep(k, n))(jnp.arange(1, n + 1))
  np.testing.assert_array_equal(traced, t)


def test_one_student_step_with_the_target_lands_on_two_teacher_steps():
  ac = solvers.discrete_alphas_cumprod()
  coef = lambda t: (1.0, 0.0) if t < 0 else (np.sqrt(ac[t]), np.sqrt(1 - ac[t]))
  rng = np.random.default_rng(0)
  for t, t_next in ((999, 499), (499, -1), (249, 124)):
    (a, s), (a2, s2) = coef(t), coef(t_next)
    z_t, z_next = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
    x_hat = np.asarray(distill.target_xstart(z_t, z_next, a, s, a2, s2))
    eps = (z_t - a * x_hat) / s                       # the student's DDIM step with x̃
    np.testing.assert_allclose(a2 * x_hat + s2 * eps, z_next, atol=1e-9)


REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _distill_args(data, teacher, workdir, *extra):
  return [sys.executable, "-m", "launch.distill", "--config", "configs/distill.py:debug",
          f"--workdir={workdir}", f"--config.teacher={teacher}", "--config.sample_every=0",
          f"--config.data.data_dir={data}", *extra]


def _losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
  """(data, teacher, student): a 300-step `configs/debug.py` teacher and its
  `configs/distill.py:debug` student (8 -> 4 -> 2 steps, two rounds of 100 steps)."""
  root = tmp_path_factory.mktemp("distill")
  data, teacher, student = root / "data", root / "teacher", root / "student"
  for args in ([sys.executable, "-m", "launch.train", "--config", "configs/debug.py",
                f"--workdir={teacher}", "--config.num_train_steps=300",
                "--config.checkpoint_every=300", "--config.sample_every=0",
                "--config.eval_every=0", "--config.log_every=50", f"--config.data.data_dir={data}"],
               _distill_args(data, teacher, student)):
    r = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=1200,
                       check=False)
    assert r.returncode == 0, (args[2], r.stderr[-3000:])
  return data, teacher, student


def test_two_step_student_beats_the_teachers_own_ddim2(distilled):
  """Issue 13 on the debug setup: the 2-step student's samples are closer to the teacher's
  DDIM-32 (same noise, 4 clips, lower half) than the teacher's own DDIM-2 on the same trailing
  grid. Measured: 0.309 vs 0.468 RMS (0.480 in an earlier run)."""
  from configs import debug
  from diff2lip_jax.data import make_train_iterator
  from diff2lip_jax.inference import checkpoints
  from diff2lip_jax.inference.sampler import build_sampler
  from diff2lip_jax.training.step import _to_unit  # pylint: disable=protected-access
  data, teacher, student = distilled
  t_model = checkpoints.load_model(teacher)
  model, size = t_model.model, t_model.model.image_size
  batch = next(make_train_iterator(data, debug.get_config().data.dataset_name, per_host_batch=4,
                                   worker_count=0, split="train", seed=123))
  flat = lambda x: _to_unit(jnp.asarray(x), size).reshape(-1, size, size, 3)
  faces, refs = flat(batch["image"]), flat(batch["ref_img"])
  mels = jnp.asarray(batch["indiv_mels"]).reshape(-1, *batch["indiv_mels"].shape[2:])
  noise = jnp.repeat(jax.random.normal(jax.random.PRNGKey(7), (4, size, size, 3)),
                     faces.shape[0] // 4, axis=0)
  run = lambda params, n: np.asarray(build_sampler(model, sampler="ddim", steps=n)(
      params, faces, refs, mels, noise))[:, size // 2:]
  ref = run(t_model.params, 32)
  rms = lambda a: float(np.sqrt(np.mean((a - ref) ** 2)))
  student_2 = rms(run(checkpoints.load_model(student).params, 2))
  teacher_2 = rms(run(t_model.params, 2))
  print(f"RMS to teacher DDIM-32: student DDIM-2 {student_2:.3f}, teacher DDIM-2 {teacher_2:.3f}")
  assert student_2 < 0.85 * teacher_2, (student_2, teacher_2)


def _run_until(args, done, timeout=600) -> None:
  """Starts `args`, waits until `done()` is true, then SIGKILLs it."""
  proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                          env=ENV)
  deadline = time.time() + timeout
  while not done():
    assert proc.poll() is None, f"the run ended before it was killed: {args}"
    assert time.time() < deadline, f"timed out: {args}"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_killed_distillation_resumes_with_the_same_losses(distilled, tmp_path):
  """SIGKILL right after the step-5 checkpoint, rerun in the same workdir until step 20, killed
  again: every loss logged before and after equals the uninterrupted student run's bit for bit
  (student, optimizer, EMA, RNG and data order restored)."""
  data, teacher, student = distilled
  work = tmp_path / "killed"
  args = _distill_args(data, teacher, work, "--config.checkpoint_every=5", "--config.log_every=1")
  _run_until(args, lambda: (work / "checkpoints" / "5" / "_CHECKPOINT_METADATA").exists())
  lines_before = len(read_metrics(work))
  def logged():  # read while the run appends: a line may be half written
    try:
      return 20 in _losses(work)
    except json.JSONDecodeError:
      return False
  _run_until(args, logged)
  rows = read_metrics(work)
  pre = {r["step"]: r["loss"] for r in rows[:lines_before] if "loss" in r}
  post = {r["step"]: r["loss"] for r in rows[lines_before:] if "loss" in r}
  assert max(pre) < 20 and min(post) == 6, (sorted(pre), sorted(post))  # from the checkpoint
  for s in set(pre) & set(post):                 # steps run both before the kill and after
    assert post[s] == pre[s], (s, pre[s], post[s])
  reference = _losses(student)                   # the uninterrupted run, logged every 10 steps
  assert post[10] == reference[10] and post[20] == reference[20], (post, reference)
