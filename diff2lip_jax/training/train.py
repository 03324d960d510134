"""The training loop: `train_and_evaluate(config, workdir)` (flax-examples style).

A workdir is stable: rerunning with the same workdir resumes from its latest checkpoint (state,
RNG, optimizer, EMA, discriminator and the data iterator), so a killed or preempted run goes on
exactly where it stopped (with another host count too: the iterator restarts at the step). The
workdir names a model: the loop writes `model_flags.json` and `config.json` at start, and
`inference.checkpoints.load_model(W)` loads the EMA params of its best-validation checkpoint.

`workdir` and `data.data_dir` may be local or `gs://` (epath; `training.paths`). Multi-host:
every process runs this with the same config; preemption (SIGTERM on any host) saves the same
step everywhere and returns (`checkpointing.Preemption`).

Logged (TensorBoard, `metrics.jsonl`): every `log_every` steps the step's losses and rates and
the losses per timestep quartile averaged since the last log (`step.quartile_means`); at
checkpoints `val_loss`; every `eval_every` steps (0: never) the scalars of
`evaluation.during_training.evaluate` on `config.eval`'s validation clips with the EMA params.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from diff2lip_jax.media import pixels
from diff2lip_jax.inference import checkpoints
from diff2lip_jax import sharding
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax.models import model_from_flags
from diff2lip_jax.models.discriminator import PatchDiscriminator
from diff2lip_jax.inference.sampler import make_sampler
from diff2lip_jax.training import checkpointing, data_setup, expert, paths
from diff2lip_jax.training import metrics as metrics_lib
from diff2lip_jax.training.state import make_optimizer
from diff2lip_jax.training.step import (
    LossWeights, init_train_state, jit_train_step, make_train_step, make_val_loss,
    quartile_means, split_metrics)


def _loss_networks(config: ml_collections.ConfigDict) -> tuple[LossWeights, Any, Any]:
  """Loss weights and the frozen LPIPS / SyncNet functions; a term whose weights file is not
  configured is switched off with a warning (a config without them still trains).

  `loss.syncnet_weights`: a directory is a Wav2Lip expert trained here (a `launch.train_syncnet`
  workdir: its checkpoint with the lowest val loss; or one `checkpoints/<step>` folder), a file
  is Wav2Lip's `lipsync_expert.pth` / `.npz`, converted (`expert.load_expert`).
  """
  lc = config.loss
  lpips_fn = sync_embed = None
  lpips_w, sync_w = lc.lpips, lc.sync
  if lpips_w and lc.lpips_weights:
    from diff2lip_jax.models.lpips import LPIPS, load_lpips_params  # pylint: disable=import-outside-toplevel
    lpips_params = load_lpips_params(lc.lpips_weights)
    lpips_fn = lambda x, y: LPIPS().apply({"params": lpips_params}, x, y)
  elif lpips_w:
    logging.warning("loss.lpips=%g but no loss.lpips_weights: LPIPS loss off", lpips_w)
    lpips_w = 0.0
  if sync_w and lc.syncnet_weights:
    sync_model, sync_vars = expert.load_expert(lc.syncnet_weights)
    sync_embed = lambda faces, mel: sync_model.apply(sync_vars, mel, faces, train=False)
  elif sync_w:
    logging.warning("loss.sync=%g but no loss.syncnet_weights: sync loss off", sync_w)
    sync_w = 0.0
  return LossWeights(simple=lc.simple, sync=sync_w, lpips=lpips_w, gan=lc.gan), lpips_fn, sync_embed


def host_params(tree: Any) -> Any:
  """`tree` (global, possibly sharded over hosts) as host-local float32 numpy on every process;
  a collective: every process must call it."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda x: np.asarray(x, np.float32),
                      multihost_utils.process_allgather(tree, tiled=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains for `config.num_train_steps` steps, resuming from `workdir` if it has checkpoints.

  Returns:
    The metrics of the last logged step (for tests and scripts).

  Raises:
    ValueError: a config that does not fit (batch size vs hosts/devices, data_dir, ...).
    FloatingPointError: a non-finite training loss.
  """
  workdir = paths.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
               jax.process_count())
  per_host = data_setup.check_batch_size("batch_size", config.batch_size, mesh,
                                         config.accum_steps)
  if jax.process_index() == 0:
    checkpoints.write_workdir_files(workdir, config.model.to_dict(), config.to_dict())
  dtype = jnp.dtype(config.dtype)
  model = model_from_flags(config.model.to_dict(), dtype=dtype)
  diffusion = make_diffusion(config.diffusion.steps, config.diffusion.noise_schedule)
  weights, lpips_fn, sync_embed = _loss_networks(config)
  oc = config.optim
  tx = make_optimizer(oc.lr, oc.warmup_steps, config.num_train_steps, oc.weight_decay,
                      oc.grad_clip, oc.b1, oc.b2)
  disc = disc_tx = None
  if weights.gan:
    disc = PatchDiscriminator(ndf=config.disc.ndf, n_layers=config.disc.n_layers, dtype=dtype)
    disc_tx = optax.adam(config.disc.lr, b1=config.disc.b1, b2=config.disc.b2)

  init_params = None
  if config.init_checkpoint:
    init = checkpoints.load_model(config.init_checkpoint)
    init_model, init_params = init.model, init.params
    if init_model.replace(dtype=dtype) != model:
      raise ValueError(f"init_checkpoint {config.init_checkpoint} has another architecture "
                       "than config.model")
  init_fn = functools.partial(init_train_state, jax.random.PRNGKey(config.seed), model, tx,
                              disc, disc_tx, init_params, config.data.nframes)
  step_fn = make_train_step(
      model=model, diffusion=diffusion, tx=tx, weights=weights,
      face_hide_percentage=config.face_hide_percentage, ema_decay=oc.ema_decay,
      accum_steps=config.accum_steps, lr=oc.lr, warmup_steps=oc.warmup_steps, disc=disc,
      disc_tx=disc_tx, lpips_fn=lpips_fn, sync_embed=sync_embed)
  abstract = jax.eval_shape(init_fn)
  train_step, shardings = jit_train_step(step_fn, abstract, mesh)

  from diff2lip_jax.data import make_train_iterator  # pylint: disable=import-outside-toplevel
  data_dir = data_setup.prepare_data(config, workdir)
  eval_config = config.copy_and_resolve_references()  # the evaluator finds the synthetic videos
  eval_config.data.data_dir = os.fspath(data_dir)
  make_iter = functools.partial(make_train_iterator, data_dir, config.data.dataset_name,
                                per_host_batch=per_host, worker_count=config.data.worker_count)
  train_iter = make_iter(split="train", seed=config.seed)
  # A fixed batch for the validation loss and the sample grids (the train split: the synthetic
  # and small datasets may have no val split).
  fixed_batch = _model_batch(next(make_iter(split=config.data.eval_split, seed=config.seed + 1)),
                             mesh)

  manager = checkpointing.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints,
                                       config.keep_best, config.async_checkpointing)
  state, start = checkpointing.restore_or_init(
      manager, abstract, shardings, train_iter,
      lambda: jax.jit(init_fn, out_shardings=shardings)(), per_host_batch=per_host)

  val_loss = make_val_loss(model, diffusion, config.face_hide_percentage)
  sampler = make_sampler(model, make_diffusion(config.diffusion.steps, config.diffusion.noise_schedule,
                                               config.sample_respacing),
                         face_hide_percentage=config.face_hide_percentage)
  train_step, val_loss = data_setup.compile_in_step(
      "diff2lip train step compiled", train_step.lower(state, fixed_batch),
      val_loss.lower(state.ema_params, fixed_batch))
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(config.batch_size * config.data.nframes)
  preemption = checkpointing.Preemption()
  last, q_sums = {}, None
  for step in range(start + 1, config.num_train_steps + 1):
    state, metrics = train_step(state, _model_batch(next(train_iter), mesh))
    metrics, q = split_metrics(metrics)
    q_sums = q if q_sums is None else jax.tree.map(jnp.add, q_sums, q)
    preempted = preemption.reached(step)  # once per step, on every host
    final = step == config.num_train_steps or preempted
    if step % config.log_every == 0 or final:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(last["loss"]):
        raise FloatingPointError(f"non-finite loss at step {step}: {last}")
      writer.scalars(step, {**last, **quartile_means(jax.device_get(q_sums)),
                            **throughput.rates(step)})
      q_sums = None
    due_eval = bool(config.eval_every) and step % config.eval_every == 0
    due_samples = bool(config.sample_every) and (step % config.sample_every == 0 or final)
    if due_eval or due_samples:
      ema = host_params(state.ema_params)  # a collective: every process
      if due_samples:
        _write_samples(writer, step, sampler, model, ema, fixed_batch, config)
      if due_eval and jax.process_index() == 0:  # host-local: one process evaluates
        from diff2lip_jax.evaluation import during_training  # pylint: disable=import-outside-toplevel
        writer.scalars(step, during_training.evaluate(eval_config, model, ema, step))
      data_setup.barrier(f"samples and evaluation of step {step}")  # the others wait here
    if step % config.checkpoint_every == 0 or final:
      vl = float(val_loss(state.ema_params, fixed_batch))
      writer.scalars(step, {checkpointing.BEST_METRIC: vl})
      checkpointing.save(manager, step, state, train_iter, {checkpointing.BEST_METRIC: vl},
                         force=final)
    if preempted:
      logging.warning("preempted: saved step %d on all %d processes, stopping", step,
                      jax.process_count())
      break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return last


def _model_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """The model's keys of a host batch, as global arrays sharded over data x fsdp."""
  return sharding.global_batch(
      {k: local[k] for k in ("image", "ref_img", "indiv_mels", "mel")}, mesh)


def _write_samples(writer, step, sampler, model, params, fixed_batch, config) -> None:
  """A grid of the global fixed batch's first clip: ground truth, references, samples (the
  host-local EMA `params`, `sample_respacing`). Gathers on every process; process 0 samples."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  clip = {k: multihost_utils.process_allgather(fixed_batch[k], tiled=True)[0]
          for k in ("image", "ref_img", "indiv_mels")}
  if not writer.enabled:
    return
  size = model.image_size
  unit = lambda x: jax.image.resize(pixels.to_unit(x),
                                    (x.shape[0], size, size, 3), "bilinear")
  faces, refs = unit(clip["image"]), unit(clip["ref_img"])
  noise = jax.random.normal(jax.random.PRNGKey(config.seed), (1, size, size, 3))
  samples = sampler(params, faces, refs, jnp.asarray(clip["indiv_mels"]), noise)
  writer.image(step, "samples", metrics_lib.image_grid([faces, refs, samples]))
