"""The training loop: `train_and_evaluate(config, workdir)` (flax-examples style).

A workdir is stable: rerunning with the same workdir resumes from its latest checkpoint (state,
RNG, optimizer, EMA, discriminator and the data iterator), so a killed or preempted run goes on
exactly where it stopped.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from diff2lip_jax.inference import checkpoints
from diff2lip_jax import sharding
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax.models import model_from_flags
from diff2lip_jax.models.discriminator import PatchDiscriminator
from diff2lip_jax.inference.sampler import make_sampler
from diff2lip_jax.training import checkpointing, metrics as metrics_lib
from diff2lip_jax.training.state import make_optimizer
from diff2lip_jax.training.step import (
    LossWeights, init_train_state, jit_train_step, make_train_step, make_val_loss)


def _loss_networks(config: ml_collections.ConfigDict) -> tuple[LossWeights, Any, Any]:
  """Loss weights and the frozen LPIPS / SyncNet functions; a term whose weights file is not
  configured is switched off with a warning (a config without them still trains).

  `loss.syncnet_weights`: a directory is a Wav2Lip expert trained here (a `launch.train_syncnet`
  workdir: its checkpoint with the lowest val loss; or one `checkpoints/<step>` folder), a file
  is Wav2Lip's `lipsync_expert.pth` / `.npz`, converted (`syncnet_train.load_expert`).
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
    from diff2lip_jax.training import syncnet_train  # pylint: disable=import-outside-toplevel
    sync_model, sync_vars = syncnet_train.load_expert(lc.syncnet_weights)
    sync_embed = lambda faces, mel: sync_model.apply(sync_vars, mel, faces, train=False)
  elif sync_w:
    logging.warning("loss.sync=%g but no loss.syncnet_weights: sync loss off", sync_w)
    sync_w = 0.0
  return LossWeights(simple=lc.simple, sync=sync_w, lpips=lpips_w, gan=lc.gan), lpips_fn, sync_embed


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """The tfds data_dir; with `data.synthetic` builds a small synthetic dataset there first."""
  if not config.data.synthetic:
    return pathlib.Path(config.data.data_dir)
  from diff2lip_jax import data  # pylint: disable=import-outside-toplevel
  data_dir = pathlib.Path(config.data.data_dir or workdir / "data")
  if not (data_dir / config.data.dataset_name).exists():
    if jax.process_index() == 0:
      videos = data_dir / "videos"
      data.make_synthetic_dataset(videos, num_ids=config.data.synthetic_ids,
                                  clips_per_id=config.data.synthetic_clips_per_id,
                                  seconds=config.data.synthetic_seconds, seed=config.seed)
      data.prepare_dataset(videos, data_dir, dataset_name=config.data.dataset_name,
                           val_fraction=0.0, num_workers=1, progress=False)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("synthetic data ready")
  return data_dir


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains for `config.num_train_steps` steps, resuming from `workdir` if it has checkpoints.

  Returns:
    The metrics of the last logged step (for tests and scripts).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
               jax.process_count())
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
  data_dir = prepare_data(config, workdir)
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} not divisible by {jax.process_count()} hosts")
  per_host = config.batch_size // jax.process_count()
  make_iter = functools.partial(make_train_iterator, data_dir, config.data.dataset_name,
                                per_host_batch=per_host, worker_count=config.data.worker_count)
  train_iter = make_iter(split="train", seed=config.seed)
  # A fixed batch for the validation loss and the sample grids (the train split: the synthetic
  # and small datasets may have no val split).
  fixed = next(make_iter(split=config.data.eval_split, seed=config.seed + 1))
  fixed_batch = sharding.global_batch({k: fixed[k] for k in ("image", "ref_img", "indiv_mels", "mel")}, mesh)

  manager = checkpointing.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints,
                                       config.keep_best, config.async_checkpointing)
  state, start = checkpointing.restore(manager, abstract, shardings, train_iter)
  if state is None:
    state, start = jax.jit(init_fn, out_shardings=shardings)(), 0
  else:
    logging.info("resumed from %s at step %d", manager.directory, start)

  val_loss = make_val_loss(model, diffusion, config.face_hide_percentage)
  sampler = make_sampler(model, make_diffusion(config.diffusion.steps, config.diffusion.noise_schedule,
                                               config.sample_respacing),
                         face_hide_percentage=config.face_hide_percentage)
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(config.batch_size * config.data.nframes)
  stop = checkpointing.StopSignal()
  last = {}
  step = start
  for step in range(start + 1, config.num_train_steps + 1):
    batch = sharding.global_batch(
        {k: v for k, v in next(train_iter).items() if k in ("image", "ref_img", "indiv_mels", "mel")},
        mesh)
    state, metrics = train_step(state, batch)
    final = step == config.num_train_steps or bool(stop)
    if step % config.log_every == 0 or final:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(last["loss"]):
        raise FloatingPointError(f"non-finite loss at step {step}: {last}")
      writer.scalars(step, {**last, **throughput.rates(step)})
    if config.sample_every and (step % config.sample_every == 0 or final):
      _write_samples(writer, step, sampler, model, state.ema_params, fixed, config)
    if step % config.checkpoint_every == 0 or final:
      vl = float(val_loss(state.ema_params, fixed_batch))
      writer.scalars(step, {checkpointing.BEST_METRIC: vl})
      checkpointing.save(manager, step, state, train_iter, {checkpointing.BEST_METRIC: vl},
                         force=final)
    if stop:
      logging.warning("SIGTERM: saved step %d, stopping", step)
      break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return last


def _write_samples(writer, step, sampler, model, params, fixed, config) -> Optional[pathlib.Path]:
  """A grid of one clip: ground truth, references, samples (EMA params, `sample_respacing`)."""
  size = model.image_size
  unit = lambda x: jax.image.resize(jnp.asarray(x[0], jnp.float32) / 127.5 - 1.0,
                                    (x.shape[1], size, size, 3), "bilinear")
  faces, refs = unit(fixed["image"]), unit(fixed["ref_img"])
  noise = jax.random.normal(jax.random.PRNGKey(config.seed), (1, size, size, 3))
  samples = sampler(params, faces, refs, jnp.asarray(fixed["indiv_mels"][0]), noise)
  return writer.image(step, "samples", metrics_lib.image_grid([faces, refs, samples]))
