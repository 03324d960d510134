"""The pure train and eval steps of the Wav2Lip lip-sync expert (`models.syncnet.Wav2LipSyncNet`).

Objective (Wav2Lip `color_syncnet_train.py`): the cosine similarity p of the audio and face
embeddings (non-negative, unit-norm, so p in [0, 1]) is the sync probability, trained with
binary cross-entropy against the label (1 in sync, 0 off sync; `syncnet.sync_bce`). A pair
counts as correct when (p > 0.5) == label.

BatchNorm is trained as in Wav2Lip (PyTorch `train()` mode): the train step normalises with
the statistics of the batch and updates the running statistics (`batch_stats`, Flax momentum
0.9 == PyTorch 0.1); the eval step (and the generator's sync loss later) uses the running
statistics. Under `jax.jit` with the batch sharded over data x fsdp, the batch statistics are
those of the whole global batch (PyTorch `DataParallel` normalises per device).

Batch (global arrays, leading axis sharded over data x fsdp), as `data.sync_pairs`:
  faces  [B, 5, S, S, 3] uint8  face crops; the lower halves are taken at 48x96 in BGR
                                 (`losses.sync_face_input`, exactly what the generator's sync
                                 loss feeds the expert)
  mel    [B, 80, 16] float32    audio windows
  label  [B] float32            1 in sync, 0 off sync
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diff2lip_jax.media import pixels
from diff2lip_jax import sharding
from diff2lip_jax.models import syncnet
from diff2lip_jax.training import losses

Batch = dict[str, jax.Array]
BATCH_KEYS = ("faces", "mel", "label")
_BATCH_NDIM = {"faces": 5, "mel": 3, "label": 1}


@flax.struct.dataclass
class SyncNetState:
  """Everything a resumed expert run needs besides the data iterator (saved beside it)."""
  step: jax.Array       # [] int32, optimizer steps taken
  params: Any           # Wav2LipSyncNet params, float32
  batch_stats: Any      # BatchNorm running mean / var
  opt_state: Any


def face_input(faces: jax.Array) -> jax.Array:
  """uint8 [B, 5, S, S, 3] RGB crops -> [B, 48, 96, 15] float32 in [0, 1], the expert's input
  (`losses.sync_face_input` of the crops in [-1, 1])."""
  return losses.sync_face_input(pixels.to_unit(faces))


def _forward(model: syncnet.Wav2LipSyncNet, variables: dict, batch: Batch, train: bool):
  """(sync probabilities [B], per-pair BCE [B], updated batch_stats or None)."""
  args = (batch["mel"], face_input(batch["faces"]))
  if train:
    (a, v), updates = model.apply(variables, *args, train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]
  else:
    (a, v), stats = model.apply(variables, *args, train=False), None
  p = syncnet.sync_probability(a, v)
  return p, syncnet.sync_bce(p, batch["label"]), stats


def pair_sums(p: jax.Array, bce: jax.Array, label: jax.Array) -> dict[str, jax.Array]:
  """Sums over a batch, to be added up over batches and turned into means by `summarize`:
  loss (BCE), correct pairs, pairs, in-sync pairs and their p, off-sync pairs and their p."""
  y = label.astype(jnp.float32)
  return {"loss": jnp.sum(bce), "correct": jnp.sum(((p > 0.5) == (y > 0.5)).astype(jnp.float32)),
          "count": jnp.asarray(p.shape[0], jnp.float32),
          "in_sync": jnp.sum(y), "p_in_sync": jnp.sum(p * y),
          "off_sync": jnp.sum(1.0 - y), "p_off_sync": jnp.sum(p * (1.0 - y))}


def summarize(sums: dict[str, Any], prefix: str = "") -> dict[str, float]:
  """`pair_sums` totals -> {prefix+loss, prefix+accuracy, prefix+p_in_sync, prefix+p_off_sync}
  (means; p_* are the mean sync probabilities of the in-sync / off-sync pairs, NaN if none)."""
  s = {k: float(v) for k, v in jax.device_get(sums).items()}
  mean = lambda num, den: s[num] / s[den] if s[den] else float("nan")
  return {f"{prefix}loss": mean("loss", "count"), f"{prefix}accuracy": mean("correct", "count"),
          f"{prefix}p_in_sync": mean("p_in_sync", "in_sync"),
          f"{prefix}p_off_sync": mean("p_off_sync", "off_sync")}


def make_train_step(model: syncnet.Wav2LipSyncNet, tx: optax.GradientTransformation
                    ) -> Callable[[SyncNetState, Batch], tuple[SyncNetState, dict]]:
  """`train_step(state, batch) -> (state, metrics)`: one optimizer step on the batch's mean
  BCE, BatchNorm in train mode. metrics: [] float32 `loss`, `grad_norm` and the `pair_sums`
  of the batch (`summarize` them, alone or accumulated over steps)."""

  def train_step(state: SyncNetState, batch: Batch) -> tuple[SyncNetState, dict]:
    def loss_fn(params):
      p, bce, stats = _forward(model, {"params": params, "batch_stats": state.batch_stats},
                               batch, train=True)
      return jnp.mean(bce), (p, bce, stats)

    (loss, (p, bce, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=stats, opt_state=opt_state)
    metrics = {**pair_sums(p, bce, batch["label"]), "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics

  return train_step


def make_eval_step(model: syncnet.Wav2LipSyncNet) -> Callable[[SyncNetState, Batch], dict]:
  """`eval_step(state, batch) -> pair_sums` with BatchNorm in eval mode (running statistics)."""

  def eval_step(state: SyncNetState, batch: Batch) -> dict[str, jax.Array]:
    p, bce, _ = _forward(model, {"params": state.params, "batch_stats": state.batch_stats},
                         batch, train=False)
    return pair_sums(p, bce, batch["label"])

  return eval_step


def abstract_state(model: syncnet.Wav2LipSyncNet, tx: optax.GradientTransformation
                   ) -> SyncNetState:
  """The state's shapes and dtypes (jax.ShapeDtypeStruct leaves), without computing anything."""
  def build():
    v = syncnet.init_wav2lip_syncnet(model, jax.random.key(0))
    return SyncNetState(step=jnp.zeros((), jnp.int32), params=v["params"],
                        batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]))
  return jax.eval_shape(build)


def init_state(model: syncnet.Wav2LipSyncNet, tx: optax.GradientTransformation, seed: int,
               shardings: SyncNetState) -> SyncNetState:
  """A fresh state placed on `shardings`: He-normal kernels, zero biases, BatchNorm scale 1 /
  mean 0 / var 1 (`syncnet.random_variables`, NumPy seeded by `seed`, so every host builds the
  same values without compiling the network's init), Adam state from `tx.init`."""
  host = syncnet.random_variables(
      jax.eval_shape(lambda: syncnet.init_wav2lip_syncnet(model, jax.random.key(0))), seed)
  place = lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx])
  params = jax.tree.map(place, host["params"], shardings.params)
  return SyncNetState(
      step=place(np.zeros((), np.int32), shardings.step), params=params,
      batch_stats=jax.tree.map(place, host["batch_stats"], shardings.batch_stats),
      opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params))


def jit_steps(train_step: Callable, eval_step: Callable, abstract: SyncNetState, mesh: Mesh):
  """`jax.jit` of both steps with NamedShardings (`sharding.tree_shardings` for the state, the
  batch over data x fsdp, metrics replicated); the train step donates the input state.

  Returns:
    (jitted train step, jitted eval step, state shardings).
  """
  state_sh = sharding.tree_shardings(abstract, mesh)
  batch_sh = {k: sharding.batch_sharding(mesh, n) for k, n in _BATCH_NDIM.items()}
  rep = sharding.replicated(mesh)
  train = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep),
                  donate_argnames=("state",))
  evaluate = jax.jit(eval_step, in_shardings=(state_sh, batch_sh), out_shardings=rep)
  return train, evaluate, state_sh
