"""Progressive distillation of a Diff2Lip checkpoint into a few-step DDIM student.

Salimans & Ho 2022 (arXiv 2202.00512), Algorithm 2: the student starts as a copy of the
teacher; one student DDIM step from t to t'' is trained to land where two teacher DDIM steps
t -> t' -> t'' land; after `steps_per_round` optimizer steps the student becomes the teacher and
the step count halves again (teacher_steps -> teacher_steps / 2 -> ... -> student_steps).

Why progressive and not consistency distillation (Song et al. 2023): the student stays an
ε-prediction Diff2Lip UNet sampled by plain deterministic DDIM (`--sampler ddim --steps N`), so
it is a checkpoint like any other for every tool of the project; its target is deterministic
(two teacher DDIM steps), with no target network, no boundary-condition reparameterisation of
the UNet and no perceptual distance (consistency distillation uses LPIPS in pixel space), and
each round has a plain check: the student at N steps against the teacher at 2N.

Grids: the "trailing" grid of N steps, t_k = round(1000 k / N) - 1 for k = N..1 and then clean
data (`diffusion.solvers.trailing_timestep`), which nests (grid N ⊂ grid 2N) as the algorithm
needs, and which `build_sampler(sampler="ddim", steps=N)` samples.

Loss: the target x̃ is the x_0 that makes one DDIM step from z_t reach the teacher's z_{t''}
(Algorithm 2): x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t). The loss is the
squared distance between where the student's sampler step lands and where the teacher's two
steps land, ‖ẑ_{t''} - z_{t''}‖² = (α_{t''} - σ_{t''} α_t / σ_t)² ‖clip(x̂) - x̃‖² on the
regenerated (masked) half, with the student's x̂ clipped as the sampler clips it and a
straight-through gradient through the clip (at t = 999, 99% of an ε-model's x̂ lie outside
[-1, 1]: an unclipped loss spends the student's capacity on errors the sampler never sees).
States: z_t is where the *student's own* N-step sampler is at grid point k, from x_T with the
x_T-filled `cond_img` of inference (Salimans & Ho train on noised data, z_t = α_t x + σ_t ε,
which is the same distribution only for a perfect teacher; on the debug setup those states
made the student worse than the teacher's own DDIM).
Measured (debug setup: a 300-step `configs/debug.py` teacher, `configs/distill.py:debug`,
8 -> 4 -> 2 in two rounds of 100 steps, 4 clips, RMS on the lower half against the teacher's
DDIM-32 from the same noise): the 2-step student 0.309, the teacher's own DDIM-2 0.480 (trailing
grid; upstream's ddim2 grid 0.513); a 1-round 4 -> 2 run of 150 steps: 0.409 (lr 1e-4), 0.440
(lr 3e-5). With a weaker 40-step teacher the student did not beat its DDIM-2 (0.221 vs 0.170).
Teacher x̂ are clipped to [-1, 1] (`clip_denoised`, as the sampler runs). The learned-variance
channels are not trained (DDIM does not use them).

State (`DistillState`): the train state of `training.state` (params = student, EMA, optimizer)
plus the current teacher's params, so a resumed run continues the same round. At a round start
(inside the jitted step) teacher <- student and the EMA restarts from the student.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from diff2lip_jax import sharding
from diff2lip_jax.diffusion.solvers import discrete_alphas_cumprod, make_plan, trailing_timestep
from diff2lip_jax.inference import checkpoints
from diff2lip_jax.inference.sampler import lower_face_mask, make_cond_img, make_sampler
from diff2lip_jax.models.unet import TFGModel
from diff2lip_jax.training import checkpointing, data_setup, paths
from diff2lip_jax.training import metrics as metrics_lib
from diff2lip_jax.training import train as train_lib
from diff2lip_jax.training.state import TrainState, learning_rate, make_optimizer
from diff2lip_jax.training.step import BATCH_KEYS, _to_unit, jit_train_step  # pylint: disable=protected-access


@flax.struct.dataclass
class DistillState(TrainState):
  """`TrainState` (params: the student) + `teacher_params`, the current round's teacher."""
  teacher_params: Any = None


def num_rounds(teacher_steps: int, student_steps: int) -> int:
  """Halvings from teacher_steps to student_steps.

  Raises:
    ValueError: unless teacher_steps = student_steps * 2^k with k >= 1.
  """
  k = int(round(math.log2(teacher_steps / student_steps))) if student_steps > 0 else -1
  if k < 1 or student_steps << k != teacher_steps:
    raise ValueError(f"teacher_steps ({teacher_steps}) must be student_steps ({student_steps}) "
                     "times a power of two >= 2")
  return k


def student_steps_at(step: Any, teacher_steps: int, steps_per_round: int, rounds: int):
  """Student step count while optimizer step `step` (0-based) runs: teacher_steps / 2^(r+1),
  round r = step // steps_per_round (capped at the last round). Python or traced ints."""
  r = jnp.minimum(step // steps_per_round, rounds - 1) if isinstance(step, jax.Array) else \
      min(step // steps_per_round, rounds - 1)
  return teacher_steps // (2 ** (r + 1))


def init_distill_state(rng: jax.Array, teacher_params: Any,
                       tx: optax.GradientTransformation) -> DistillState:
  """The state of step 0: student = EMA = teacher; jit with `out_shardings` to place it."""
  rng = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  copy = lambda: jax.tree.map(jnp.copy, teacher_params)
  return DistillState(step=jnp.zeros((), jnp.int32), params=copy(), opt_state=tx.init(
      teacher_params), ema_params=copy(), disc_params={}, disc_opt_state=optax.identity().init(
          {}), rng=rng, teacher_params=copy())


def _coefs(ac: jax.Array, t: jax.Array):
  """(α, σ) at an integer t (traced scalar); t = -1 is clean data (α 1, σ 0)."""
  a2 = jnp.where(t < 0, 1.0, ac[jnp.maximum(t, 0)])
  return jnp.sqrt(a2), jnp.sqrt(1.0 - a2)


def target_xstart(z_t: jax.Array, z_next: jax.Array, a_t, s_t, a_next, s_next) -> jax.Array:
  """x̃ such that one DDIM step from (z_t, t) with x̂_0 = x̃ reaches z_next at t'' (arrays like
  z_t; coefficients broadcastable; a_next = 1, s_next = 0 for clean data). Salimans & Ho 2022,
  Algorithm 2: x̃ = (z'' - (σ''/σ_t) z_t) / (α'' - (σ''/σ_t) α_t). When z'' comes from two
  clipped DDIM steps, x̃ is a convex combination of their x̂_0, so it lies in [-1, 1] too."""
  ratio = s_next / s_t
  return (z_next - ratio * z_t) / (a_next - ratio * a_t)


def make_distill_loss(model: TFGModel, *, teacher_steps: int, steps_per_round: int,
                      rounds: int, face_hide_percentage: float = 0.5,
                      diffusion_steps: int = 1000, noise_schedule: str = "linear"
                      ) -> Callable[..., tuple[jax.Array, dict]]:
  """`loss(student_params, teacher_params, batch, key, step) -> (loss, metrics)`.

  batch: the train batch of `training.step` (image/ref_img [B, F, S, S, 3] uint8, indiv_mels
  [B, F, 80, 16]). One student grid point k (uniform over 1..N, N from `step`) per batch; the
  state there is where the student's own sampler puts it (module docstring), so the N - k
  steps before it cost N - k forward passes of the student (no gradient), N/2 on average.
  """
  ac = jnp.asarray(discrete_alphas_cumprod(diffusion_steps, noise_schedule), jnp.float32)
  size = model.image_size
  mask = lower_face_mask(size, face_hide_percentage)
  grid = lambda k, n: trailing_timestep(k, n, diffusion_steps)

  def loss_fn(params, teacher, mb, key, step):
    n = student_steps_at(step, teacher_steps, steps_per_round, rounds)
    frames = _to_unit(mb["image"], size)
    b, f = frames.shape[:2]
    x0 = frames.reshape(b * f, size, size, 3)
    ref = _to_unit(mb["ref_img"], size).reshape(b * f, size, size, 3)
    mels = mb["indiv_mels"].reshape(b * f, *mb["indiv_mels"].shape[2:])
    k_i, k_noise = jax.random.split(key)
    k = jax.random.randint(k_i, (), 1, n + 1)
    # x_T shared by the frames of a clip and filling cond_img's masked rows, as sampled.
    x_T = jnp.repeat(jax.random.normal(k_noise, (b, size, size, 3)), f, axis=0)
    cond = make_cond_img(x0, mask, x_T)
    at = lambda u: jnp.full((b * f,), u, jnp.int32)

    def x_hat(p, z, t):
      a, s = _coefs(ac, t)
      eps = model.apply({"params": p}, z, at(t), cond, mask, ref, mels)[..., :3]
      return (z - s * eps.astype(jnp.float32)) / a

    def ddim(p, z, t, t_to):  # the sampler's step: x̂ clipped, ε recomputed from it
      (a, s), (a_to, s_to) = _coefs(ac, t), _coefs(ac, t_to)
      x = jnp.clip(x_hat(p, z, t), -1.0, 1.0)
      return a_to * x + s_to * (z - a * x) / s

    frozen = jax.lax.stop_gradient(params)
    z_t = jax.lax.fori_loop(0, n - k, lambda j, z: ddim(frozen, z, grid(n - j, n),
                                                        grid(n - j - 1, n)), x_T)
    t, t_mid, t_next = grid(k, n), grid(2 * k - 1, 2 * n), grid(k - 1, n)  # k = 1: t_next -1
    z_mid = ddim(teacher, z_t, t, t_mid)
    z_next = jax.lax.stop_gradient(ddim(teacher, z_mid, t_mid, t_next))
    (a_t, s_t), (a_n, s_n) = _coefs(ac, t), _coefs(ac, t_next)
    x_tilde = target_xstart(z_t, z_next, a_t, s_t, a_n, s_n)
    x = x_hat(params, z_t, t)
    x = x + jax.lax.stop_gradient(jnp.clip(x, -1.0, 1.0) - x)   # clipped, straight-through
    x_mse = jnp.sum((x - x_tilde) ** 2 * mask) / (jnp.sum(mask) * b * f * 3)
    loss = (a_n - s_n * a_t / s_t) ** 2 * x_mse    # = mean squared landing distance
    return loss, {"loss": loss, "x_mse": x_mse, "student_steps": n.astype(jnp.float32)}

  return loss_fn


def make_distill_step(loss_fn: Callable, tx: optax.GradientTransformation, *,
                      steps_per_round: int, ema_decay: float, lr: float,
                      warmup_steps: int) -> Callable:
  """`step(state, batch) -> (state, metrics)`: one optimizer step of the student; at the first
  step of a round (step % steps_per_round == 0, step > 0) the teacher becomes the student and
  the EMA and optimizer restart. Jit it like `training.step.jit_train_step` does."""

  def distill_step(state: DistillState, batch: dict) -> tuple[DistillState, dict]:
    new_round = (state.step > 0) & (state.step % steps_per_round == 0)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(new_round, x, y), a, b)
    teacher = pick(state.params, state.teacher_params)
    ema = pick(state.params, state.ema_params)
    opt_state = pick(tx.init(state.params), state.opt_state)
    key = jax.random.fold_in(state.rng, state.step)
    mb = {k: batch[k] for k in BATCH_KEYS}
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, teacher, mb, key, state.step)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads),
               "learning_rate": learning_rate(lr, warmup_steps, state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema, teacher_params=teacher), metrics

  return distill_step


def distill_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Distils `config.teacher` for `rounds x config.steps_per_round` steps into `workdir`.

  The workdir is a training workdir like `launch.train`'s (`model_flags.json` = the teacher's
  architecture, `config.json`, `checkpoints/<step>/{state,data}` with Orbax resume of state,
  RNG and data iterator, `metrics.jsonl` / TensorBoard, sample grids), so `load_model(W)` gives
  the student (EMA params; the best distillation loss of the last round, else the latest step).

  Returns:
    The metrics of the last logged step.

  Raises:
    ValueError: no teacher, or teacher/student steps that are not a power-of-two ratio, or a
      batch size that does not fit the mesh.
  """
  if not config.teacher:
    raise ValueError("config.teacher is empty: pass --config.teacher=CKPT (a converted "
                     "checkpoint, a launch.train workdir or an upstream .pt/.npz)")
  rounds = num_rounds(config.teacher_steps, config.student_steps)
  total = rounds * config.steps_per_round
  workdir = paths.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
  per_host = data_setup.check_batch_size("batch_size", config.batch_size, mesh)
  loaded = checkpoints.load_model(config.teacher, jnp.dtype(config.dtype))
  model = loaded.model
  if jax.process_index() == 0:
    checkpoints.write_workdir_files(workdir, loaded.flags, config.to_dict())
  oc = config.optim
  tx = make_optimizer(oc.lr, oc.warmup_steps, total, oc.weight_decay, oc.grad_clip, oc.b1, oc.b2)
  loss_fn = make_distill_loss(model, teacher_steps=config.teacher_steps,
                              steps_per_round=config.steps_per_round, rounds=rounds,
                              face_hide_percentage=config.face_hide_percentage,
                              diffusion_steps=config.diffusion.steps,
                              noise_schedule=config.diffusion.noise_schedule)
  step_fn = make_distill_step(loss_fn, tx, steps_per_round=config.steps_per_round,
                              ema_decay=oc.ema_decay, lr=oc.lr, warmup_steps=oc.warmup_steps)
  init_fn = functools.partial(init_distill_state, jax.random.PRNGKey(config.seed),
                              jax.tree.map(np.asarray, loaded.params), tx)
  abstract = jax.eval_shape(init_fn)
  distill_step, shardings = jit_train_step(step_fn, abstract, mesh)

  from diff2lip_jax.data import make_train_iterator  # pylint: disable=import-outside-toplevel
  data_dir = data_setup.prepare_data(config, workdir)
  make_iter = functools.partial(make_train_iterator, data_dir, config.data.dataset_name,
                                per_host_batch=per_host, worker_count=config.data.worker_count)
  train_iter = make_iter(split="train", seed=config.seed)
  fixed_batch = train_lib._model_batch(  # pylint: disable=protected-access
      next(make_iter(split=config.data.eval_split, seed=config.seed + 1)), mesh)
  manager = checkpointing.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints,
                                       config.keep_best, config.async_checkpointing)
  state, start = checkpointing.restore_or_init(
      manager, abstract, shardings, train_iter,
      lambda: jax.jit(init_fn, out_shardings=shardings)(), per_host_batch=per_host)
  val_loss = jax.jit(lambda p, t, b, s: loss_fn(p, t, b, jax.random.PRNGKey(config.seed), s)[0])
  samplers: dict[int, Callable] = {}
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(config.batch_size * config.data.nframes)
  preemption = checkpointing.Preemption()
  last = {}
  for step in range(start + 1, total + 1):
    state, metrics = distill_step(state, train_lib._model_batch(next(train_iter), mesh))  # pylint: disable=protected-access
    n = student_steps_at(step - 1, config.teacher_steps, config.steps_per_round, rounds)
    preempted = preemption.reached(step)
    final = step == total or preempted
    if step % config.log_every == 0 or final:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(last["loss"]):
        raise FloatingPointError(f"non-finite distillation loss at step {step}: {last}")
      writer.scalars(step, {**last, **throughput.rates(step)})
    if config.sample_every and (step % config.sample_every == 0 or final):
      if n not in samplers:
        samplers[n] = make_sampler(model, make_plan("ddim", n, schedule="trailing"),  # type: ignore[arg-type]
                                   face_hide_percentage=config.face_hide_percentage)
      train_lib._write_samples(writer, step, samplers[n], model,  # pylint: disable=protected-access
                               train_lib.host_params(state.ema_params), fixed_batch, config)
    if step % config.checkpoint_every == 0 or final:
      vl = float(val_loss(state.ema_params, state.teacher_params, fixed_batch, step - 1))
      writer.scalars(step, {"val_distill_loss": vl})
      # Only the last round's students compete for "best" (earlier ones take more steps).
      best = {checkpointing.BEST_METRIC: vl} if n == config.student_steps else None
      checkpointing.save(manager, step, state, train_iter, best, force=final)
    if preempted:
      logging.warning("preempted: saved step %d, stopping", step)
      break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return last
