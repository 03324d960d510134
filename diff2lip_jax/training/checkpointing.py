"""Orbax checkpointing of the train state with the grain data iterator saved beside it.

`DIR/checkpoints/<step>/{state,data}`: `state` is the sharded `TrainState` (StandardSave, async),
`data` the grain iterator state of this host. Preservation: the latest `keep` checkpoints plus
the `keep_best` with the lowest validation loss. Saves are atomic (Orbax writes to a temporary
directory and renames). A SIGTERM (e.g. a TPU preemption notice) asks the loop to save and stop.
"""

from __future__ import annotations

import pathlib
import signal
import threading
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "val_loss"


def make_manager(workdir: str | pathlib.Path, save_every: int, keep: int = 3,
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
  return ocp.CheckpointManager(pathlib.Path(workdir).resolve() / "checkpoints", options=options,
                               item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any,
         metrics: Optional[dict] = None, force: bool = False) -> bool:
  """Saves `state` and the iterator (if it is due, or `force`); returns whether it saved."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, shardings: Any, data_iter: Any,
            step: Optional[int] = None) -> tuple[Any, Optional[int]]:
  """Restores the latest (or `step`) checkpoint: `abstract_state`'s shapes and dtypes (e.g. from
  `jax.eval_shape`), placed with `shardings` (a matching tree of `jax.sharding.Sharding`).

  The iterator is restored in place. Returns (state, step), or (None, None) with no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None, None
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)
  items = {"state": ocp.args.StandardRestore(target)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], step


class StopSignal:
  """Set by SIGTERM (TPU/spot preemption): the loop saves a final checkpoint and exits."""

  def __init__(self):
    self._event = threading.Event()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: self._event.set())

  def __bool__(self) -> bool:
    return self._event.is_set()
