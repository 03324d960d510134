"""Orbax checkpointing of the train state with the grain data iterator saved beside it, and
preemption.

`W/checkpoints/<step>/{state,data}` (the names are `inference.checkpoints`' workdir layout,
which `load_model(W)` reads): `state` is the sharded `TrainState` (StandardSave, async), `data`
the grain iterator state of each host (`process_<i>-of-<n>.json`). Preservation: the latest
`keep` checkpoints plus the `keep_best` with the lowest validation loss. Saves are atomic (Orbax
writes to a temporary directory and renames). Paths go through epath (local or `gs://`).

Preemption (`Preemption`): a SIGTERM (TPU maintenance, spot reclaim) makes every host save the
same step and stop. One process: a Python SIGTERM handler. Several processes: the handler that
`jax.distributed.initialize` installs, and `multihost_utils.reached_preemption_sync_point(step)`
once per step on every host: hosts signalled at different moments agree on one step.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from diff2lip_jax.data import pipeline
from diff2lip_jax.inference.checkpoints import BEST_METRIC, STATE_ITEM, WORKDIR_CHECKPOINTS
from diff2lip_jax.training import paths

DATA_ITEM = "data"
__all__ = ["BEST_METRIC", "DATA_ITEM", "make_manager", "save", "restore", "Preemption"]


def make_manager(workdir: str | os.PathLike, save_every: int, keep: int = 3,
                 keep_best: int = 1, async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager under `workdir/checkpoints` saving every `save_every` steps."""
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(n=keep),
      pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=keep_best,
               keep_checkpoints_without_metrics=False),
  ])
  # `best_fn` makes Orbax write the metrics passed to `save` (without it they are dropped and
  # BestN has nothing to rank) and gives `best_step()`.
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, preservation_policy=policy,
      best_fn=lambda m: m[BEST_METRIC], best_mode="min",
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(paths.absolute(workdir) / WORKDIR_CHECKPOINTS, options=options,
                               item_names=(STATE_ITEM, DATA_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         metrics: Optional[dict] = None, force: bool = False) -> bool:
  """Saves `state` and the iterator (if it is due, or `force`); returns whether it saved.
  Every process must call it with the same step (Orbax's save is collective)."""
  items = {STATE_ITEM: ocp.args.StandardSave(state)}
  if data_iter is not None:
    items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def _iterator_file(manager: ocp.CheckpointManager, step: int):
  return (manager.directory / str(step) / DATA_ITEM /
          f"process_{jax.process_index()}-of-{jax.process_count()}.json")


def restore(manager: ocp.CheckpointManager, abstract_state: Any, shardings: Any, data_iter: Any,
            step: Optional[int] = None, per_host_batch: Optional[int] = None,
            ) -> tuple[Any, Optional[int]]:
  """Restores the latest (or `step`) checkpoint: `abstract_state`'s shapes and dtypes (e.g. from
  `jax.eval_shape`), placed with `shardings` (a matching tree of `jax.sharding.Sharding`).

  The iterator is restored in place. A checkpoint written by another host count has no
  iterator file for this host: the iterator is then moved to the checkpoint's step
  (`pipeline.restart_at_batch`, needs `per_host_batch`) with a warning. The state itself
  restores onto any mesh (Orbax reshards).

  Returns:
    (state, step), or (None, None) with no checkpoint.

  Raises:
    ValueError: another host count and an iterator that cannot be moved (grain workers).
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None, None
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)
  items = {STATE_ITEM: ocp.args.StandardRestore(target)}
  moved = data_iter is not None and not _iterator_file(manager, step).exists()
  if data_iter is not None and not moved:
    items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if moved:
    if per_host_batch is None:
      raise ValueError(f"checkpoint {step} has no data iterator for process "
                       f"{jax.process_index()} of {jax.process_count()}")
    pipeline.restart_at_batch(data_iter, step, per_host_batch)
    logging.warning("checkpoint %d was written by another host count: the data iterator "
                    "restarts at global batch %d (exact unless clips were dropped)", step, step)
  return restored[STATE_ITEM], step


def restore_or_init(manager: ocp.CheckpointManager, abstract_state: Any, shardings: Any,
                    data_iter: Any, init: Any, per_host_batch: Optional[int] = None
                    ) -> tuple[Any, int]:
  """`restore` the latest checkpoint, or start from `init()` (a fresh state placed with
  `shardings`) at step 0: what every training loop does on start. Returns (state, step)."""
  state, step = restore(manager, abstract_state, shardings, data_iter,
                        per_host_batch=per_host_batch)
  if state is None:
    return init(), 0
  logging.info("resumed from %s at step %d", manager.directory, step)
  return state, step


class Preemption:
  """Whether to save and stop at a step: `reached(step)`, called exactly once per step on every
  process (see the module docstring). True at most once per run."""

  def __init__(self):
    self.multihost = jax.process_count() > 1
    self._event = threading.Event()
    if not self.multihost and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: self._event.set())

  def reached(self, step: int) -> bool:
    if self.multihost:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._event.is_set()
