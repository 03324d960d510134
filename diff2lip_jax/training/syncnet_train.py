"""Training the Wav2Lip lip-sync expert on our tfds data (the generator's sync loss loads it).

`train_and_evaluate(config, workdir)` trains `Wav2LipSyncNet` on `data.sync_pairs` batches
(BCE on in-sync vs off-sync pairs, Adam; `syncnet_step`), sharded like the main trainer (one
mesh from `sharding.make_mesh`, `jax.jit` with NamedShardings). Every `log_every` steps it logs
the train loss / accuracy / mean sync probabilities averaged over those steps, every
`eval_every` steps (and at checkpoints and the end) the same on `eval_batches` fixed batches of
`data.eval_split` with BatchNorm in eval mode (`val_loss`, `val_accuracy`, ...), to
`workdir/metrics.jsonl` and TensorBoard (`metrics.MetricWriter`). Checkpoints
(`checkpointing`: Orbax, the grain iterator beside the state, preemption saves and stops) go to
`workdir/checkpoints/<step>`, keeping the latest `keep_checkpoints` and the `keep_best` with
the lowest `val_loss`. A workdir is stable: rerunning with it resumes from its latest
checkpoint.

The trained expert is loaded for the generator's sync loss by `expert.load_expert(WORKDIR)`
(`config.loss.syncnet_weights`). Paths (workdir, data_dir) may be local or `gs://` (epath).
Multi-host preemption, per-host data and resuming with another host count as in `train`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from diff2lip_jax import sharding
from diff2lip_jax.models import syncnet
from diff2lip_jax.training import checkpointing, data_setup, paths, syncnet_step
from diff2lip_jax.training import metrics as metrics_lib


def make_model(config: ml_collections.ConfigDict) -> syncnet.Wav2LipSyncNet:
  """The expert with the config's compute dtype and matmul/conv precision."""
  return syncnet.Wav2LipSyncNet(dtype=jnp.dtype(config.dtype),
                                precision=jax.lax.Precision(config.precision))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains the expert for `config.num_train_steps` steps, resuming from `workdir`.

  Returns:
    The last logged train metrics and the last validation metrics, in one dict.

  Raises:
    ValueError: a batch size that the hosts / mesh cannot split.
    FloatingPointError: a non-finite training loss.
  """
  workdir = paths.absolute(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
               jax.process_count())
  per_host = data_setup.check_batch_size("batch_size", config.batch_size, mesh)
  eval_per_host = data_setup.check_batch_size("eval_batch_size", config.eval_batch_size, mesh)
  model = make_model(config)
  tx = optax.adam(config.optim.lr, b1=config.optim.b1, b2=config.optim.b2)
  abstract = syncnet_step.abstract_state(model, tx)
  train_step, eval_step, shardings = syncnet_step.jit_steps(
      syncnet_step.make_train_step(model, tx), syncnet_step.make_eval_step(model), abstract, mesh)

  from diff2lip_jax.data import sync_pairs  # pylint: disable=import-outside-toplevel
  data_dir = data_setup.prepare_data(config, workdir, config.data.synthetic_val_ids)
  make_iter = functools.partial(sync_pairs.make_sync_iterator, data_dir,
                                config.data.dataset_name, worker_count=config.data.worker_count,
                                random_flip=config.data.random_flip)
  train_iter = make_iter(split="train", per_host_batch=per_host, seed=config.seed)
  # Fixed validation pairs: the same seed every time, so every evaluation sees the same pairs.
  val_iter = make_iter(split=config.data.eval_split, seed=config.seed + 1,
                       per_host_batch=eval_per_host)
  val_batches = [_device_batch(next(val_iter), mesh) for _ in range(config.eval_batches)]

  def evaluate(state) -> dict[str, float]:
    sums = None
    for batch in val_batches:
      s = eval_step(state, batch)
      sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    return syncnet_step.summarize(sums, "val_")

  manager = checkpointing.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints,
                                       config.keep_best, config.async_checkpointing)
  state, start = checkpointing.restore_or_init(
      manager, abstract, shardings, train_iter,
      lambda: syncnet_step.init_state(model, tx, config.seed, shardings), per_host_batch=per_host)

  train_batch = jax.tree.map(  # the train batch's shapes: the val batch with batch_size rows
      lambda x: jax.ShapeDtypeStruct((config.batch_size, *x.shape[1:]), x.dtype,
                                     sharding=x.sharding), val_batches[0])
  train_step, eval_step = data_setup.compile_in_step(
      "syncnet train step compiled", train_step.lower(state, train_batch),
      eval_step.lower(state, val_batches[0]))
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(config.batch_size)
  preemption = checkpointing.Preemption()
  train_sums, steps_summed, last = None, 0, {}
  for step in range(start + 1, config.num_train_steps + 1):
    state, m = train_step(state, _device_batch(next(train_iter), mesh))
    train_sums = m if train_sums is None else jax.tree.map(jnp.add, train_sums, m)
    steps_summed += 1
    preempted = preemption.reached(step)  # once per step, on every host
    final = step == config.num_train_steps or preempted
    if step % config.log_every == 0 or final:
      grad_norm = float(train_sums.pop("grad_norm")) / steps_summed
      train = {**syncnet_step.summarize(train_sums), "grad_norm": grad_norm}
      if not np.isfinite(train["loss"]):
        raise FloatingPointError(f"non-finite loss at step {step}: {train}")
      rates = {k.replace("frames", "pairs"): v for k, v in throughput.rates(step).items()}
      writer.scalars(step, {**train, **rates})
      last.update(train)
      train_sums, steps_summed = None, 0
    due_ckpt = step % config.checkpoint_every == 0 or final
    if step % config.eval_every == 0 or due_ckpt:
      val = evaluate(state)
      writer.scalars(step, val)
      last.update(val)
      if due_ckpt:
        checkpointing.save(manager, step, state, train_iter,
                           {checkpointing.BEST_METRIC: val["val_loss"]}, force=final)
    if preempted:
      logging.warning("preempted: saved step %d on all %d processes, stopping", step,
                      jax.process_count())
      break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return last


def _device_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """The step's keys of a host batch, as global arrays sharded over data x fsdp."""
  return sharding.global_batch({k: local[k] for k in syncnet_step.BATCH_KEYS}, mesh)
