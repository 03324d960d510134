"""Training the Wav2Lip lip-sync expert on our tfds data, and loading the expert for the sync loss.

`train_and_evaluate(config, workdir)` trains `Wav2LipSyncNet` on `data.sync_pairs` batches
(BCE on in-sync vs off-sync pairs, Adam; `syncnet_step`), sharded like the main trainer (one
mesh from `sharding.make_mesh`, `jax.jit` with NamedShardings). Every `log_every` steps it logs
the train loss / accuracy / mean sync probabilities averaged over those steps, every
`eval_every` steps (and at checkpoints and the end) the same on `eval_batches` fixed batches of
`data.eval_split` with BatchNorm in eval mode (`val_loss`, `val_accuracy`, ...), to
`workdir/metrics.jsonl` and TensorBoard (`metrics.MetricWriter`). Checkpoints
(`checkpointing`: Orbax, the grain iterator beside the state, SIGTERM saves and stops) go to
`workdir/checkpoints/<step>`, keeping the latest `keep_checkpoints` and the `keep_best` with
the lowest `val_loss`. A workdir is stable: rerunning with it resumes from its latest
checkpoint.

`load_expert(path)` is what the main training's sync loss uses (`config.loss.syncnet_weights`).
One rule: **a directory is an expert trained here, a file is Wav2Lip's released weights**:

* a directory: a `launch.train_syncnet` workdir or its `checkpoints` folder (the kept
  checkpoint with the lowest `val_loss`, as Wav2Lip picks its expert; the latest one if none
  recorded a val loss), or one step folder `WORKDIR/checkpoints/<step>` (that checkpoint);
* a file: `lipsync_expert.pth` (needs torch) or an `.npz` of its state_dict, converted by
  `syncnet.load_wav2lip_syncnet`.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from diff2lip_jax import sharding
from diff2lip_jax.models import syncnet
from diff2lip_jax.training import checkpointing, metrics as metrics_lib
from diff2lip_jax.training import syncnet_step
from diff2lip_jax.training import train as train_lib


def make_model(config: ml_collections.ConfigDict) -> syncnet.Wav2LipSyncNet:
  """The expert with the config's compute dtype and matmul/conv precision."""
  return syncnet.Wav2LipSyncNet(dtype=jnp.dtype(config.dtype),
                                precision=jax.lax.Precision(config.precision))


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """The tfds data_dir. With `data.synthetic`, builds the synthetic dataset there first like
  `train.prepare_data`, except that with `data.synthetic_val_ids` > 0 the last that many
  speakers form the `val` split (held-out speakers, so val accuracy measures generalisation)."""
  dc = config.data
  if not dc.synthetic or not dc.synthetic_val_ids:
    return train_lib.prepare_data(config, workdir)
  data_dir = pathlib.Path(dc.data_dir or workdir / "data")
  if not (data_dir / dc.dataset_name).exists():
    if jax.process_index() == 0:
      from diff2lip_jax import data  # pylint: disable=import-outside-toplevel
      videos = data_dir / "videos"
      data.make_synthetic_dataset(videos, num_ids=dc.synthetic_ids,
                                  clips_per_id=dc.synthetic_clips_per_id,
                                  seconds=dc.synthetic_seconds, seed=config.seed)
      val = [f"id{i:05d}" for i in range(dc.synthetic_ids - dc.synthetic_val_ids + 1,
                                         dc.synthetic_ids + 1)]
      data.prepare_dataset(videos, data_dir, dataset_name=dc.dataset_name, val_fraction=0.0,
                           val_speakers=val, num_workers=1, progress=False)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("synthetic data ready")
  return data_dir


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains the expert for `config.num_train_steps` steps, resuming from `workdir`.

  Returns:
    The last logged train metrics and the last validation metrics, in one dict.

  Raises:
    ValueError: a batch size that the hosts / mesh cannot split.
    FloatingPointError: a non-finite training loss.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
               jax.process_count())
  for name, b in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if b % jax.process_count() or b % shards:
      raise ValueError(f"{name} {b} must divide by the {jax.process_count()} hosts and the "
                       f"{shards} batch shards of the mesh")
  model = make_model(config)
  tx = optax.adam(config.optim.lr, b1=config.optim.b1, b2=config.optim.b2)
  abstract = syncnet_step.abstract_state(model, tx)
  train_step, eval_step, shardings = syncnet_step.jit_steps(
      syncnet_step.make_train_step(model, tx), syncnet_step.make_eval_step(model), abstract, mesh)

  from diff2lip_jax.data import sync_pairs  # pylint: disable=import-outside-toplevel
  data_dir = prepare_data(config, workdir)
  make_iter = functools.partial(sync_pairs.make_sync_iterator, data_dir,
                                config.data.dataset_name, worker_count=config.data.worker_count,
                                random_flip=config.data.random_flip)
  train_iter = make_iter(split="train", per_host_batch=config.batch_size // jax.process_count(),
                         seed=config.seed)
  # Fixed validation pairs: the same seed every time, so every evaluation sees the same pairs.
  val_iter = make_iter(split=config.data.eval_split, seed=config.seed + 1,
                       per_host_batch=config.eval_batch_size // jax.process_count())
  val_batches = [_device_batch(next(val_iter), mesh) for _ in range(config.eval_batches)]

  def evaluate(state) -> dict[str, float]:
    sums = None
    for batch in val_batches:
      s = eval_step(state, batch)
      sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    return syncnet_step.summarize(sums, "val_")

  manager = checkpointing.make_manager(workdir, config.checkpoint_every, config.keep_checkpoints,
                                       config.keep_best, config.async_checkpointing)
  state, start = checkpointing.restore(manager, abstract, shardings, train_iter)
  if state is None:
    state, start = syncnet_step.init_state(model, tx, config.seed, shardings), 0
  else:
    logging.info("resumed from %s at step %d", manager.directory, start)

  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(config.batch_size)
  stop = checkpointing.StopSignal()
  train_sums, steps_summed, last = None, 0, {}
  for step in range(start + 1, config.num_train_steps + 1):
    state, m = train_step(state, _device_batch(next(train_iter), mesh))
    train_sums = m if train_sums is None else jax.tree.map(jnp.add, train_sums, m)
    steps_summed += 1
    final = step == config.num_train_steps or bool(stop)
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
    if stop:
      logging.warning("SIGTERM: saved step %d, stopping", step)
      break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return last


def _device_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """The step's keys of a host batch, as global arrays sharded over data x fsdp."""
  return sharding.global_batch({k: local[k] for k in syncnet_step.BATCH_KEYS}, mesh)


# ---------------------------------------------------------------------------------------------
# Loading an expert for the generator's sync loss.


def _checkpoint_step_dir(path: pathlib.Path) -> pathlib.Path:
  """`path` (a workdir, its `checkpoints` folder, or a step folder) -> the step folder (the
  lowest `val_loss` among the kept checkpoints, else the latest)."""
  if (path / "state").is_dir():
    return path
  ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  options = ocp.CheckpointManagerOptions(
      read_only=True, best_fn=lambda m: m[checkpointing.BEST_METRIC], best_mode="min")
  with ocp.CheckpointManager(ckpt.resolve(), options=options) as mngr:
    step = mngr.best_step()
    step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{path} is a directory but holds no SyncNet checkpoint: expected a "
                            "launch.train_syncnet workdir, its checkpoints/ folder or a "
                            "checkpoints/<step> folder (a file would be read as Wav2Lip weights)")
  return ckpt / str(step)


def load_trained_expert(path: str | os.PathLike, dtype: Any = jnp.float32,
                        ) -> tuple[syncnet.Wav2LipSyncNet, dict]:
  """(model, {"params", "batch_stats"}) of an expert trained by `train_and_evaluate`.

  Args:
    path: a `launch.train_syncnet` workdir or its `checkpoints` folder (the checkpoint with
      the lowest val loss, else the latest), or a step folder `checkpoints/<step>`.
    dtype: compute dtype of the returned model.

  Returns:
    The model (eval-mode use: `apply(variables, mel, faces, train=False)`) and its variables
    as float32 numpy, restored without the optimizer's configuration (the checkpoint's own
    tree metadata gives the shapes).

  Raises:
    FileNotFoundError: no checkpoint there.
  """
  step_dir = _checkpoint_step_dir(pathlib.Path(path))
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(step_dir / "state")
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
    restored = ckptr.restore(step_dir / "state", target)
  logging.info("SyncNet expert from %s", step_dir)
  return (syncnet.Wav2LipSyncNet(dtype=dtype),
          {"params": restored["params"], "batch_stats": restored["batch_stats"]})


def load_expert(path: str | os.PathLike, dtype: Any = jnp.float32,
                ) -> tuple[syncnet.Wav2LipSyncNet, dict]:
  """(model, variables) of a Wav2Lip lip-sync expert: a directory is one trained here
  (`load_trained_expert`), a file is Wav2Lip's `lipsync_expert.pth` / `.npz`
  (`syncnet.load_wav2lip_syncnet`). See the module docstring.

  Raises:
    FileNotFoundError: a directory without checkpoints.
    convert.ConversionError: a missing or mismatched weights file.
  """
  if pathlib.Path(path).is_dir():
    return load_trained_expert(path, dtype)
  return syncnet.load_wav2lip_syncnet(path, dtype)
