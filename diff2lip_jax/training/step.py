"""The pure train step and the sharded state initialisation.

`make_train_step(...)` returns `train_step(state, batch) -> (state, metrics)`, to be jitted with
`jit_train_step` (NamedSharding in/out shardings, the state donated). One call is one optimizer
step: with `accum_steps > 1` the batch is split into micro-batches whose gradients are summed in
a `lax.scan`, so EMA and LR schedules count real updates.

Metrics: the scalar loss terms of the step (`loss`, `loss_simple`, `mse`, `vb`, `loss_lpips`,
`loss_sync`, `loss_gan`, `loss_disc`, `grad_norm`, `learning_rate`), and per quartile of the
clip's timestep t (q0: t in [0, 250), q1 [250, 500), q2 [500, 750), q3 [750, 1000) for 1000
steps) the sums `<term>/q_sum` [4] of each generator term over the clips (a clip's per-frame
values averaged first) and their clip counts `t_quartile_count` [4]; `quartile_means` turns
sums accumulated over any number of steps into `<term>/q0..q3` means, leaving out quartiles
that no clip fell in (no fake zeros).

Batch (global arrays, leading axis sharded over data x fsdp), as `diff2lip_jax.data.pipeline`:
  image      [B, F, S, S, 3] uint8   F = 5 consecutive frames
  ref_img    [B, F, S, S, 3] uint8   one reference frame per frame, same clip, outside the window
  indiv_mels [B, F, 80, 16] float32  per-frame mel windows
  mel        [B, 80, 16] float32     the clip's window for the sync expert
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diff2lip_jax.media import pixels
from diff2lip_jax import sharding
from diff2lip_jax.diffusion import Diffusion, training_losses
from diff2lip_jax.models.discriminator import PatchDiscriminator
from diff2lip_jax.models.unet import TFGModel
from diff2lip_jax.inference.sampler import lower_face_mask, make_cond_img
from diff2lip_jax.training import losses
from diff2lip_jax.training.state import TrainState, learning_rate

Batch = dict[str, jax.Array]
BATCH_KEYS = ("image", "ref_img", "indiv_mels", "mel")
NUM_QUARTILES = 4
QUARTILE_SUM = "/q_sum"
QUARTILE_COUNT = "t_quartile_count"


def quartile_sums(per_clip: dict[str, jax.Array], t: jax.Array,
                  num_timesteps: int) -> dict[str, jax.Array]:
  """Sums of per-clip loss terms by quartile of t, and the clip count of each quartile.

  The simple (ε-MSE + VLB) term is scaled by the noise level itself; the sync, LPIPS and GAN
  terms act on x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t, whose error is the ε error times
  √(1/ᾱ_t - 1) (linear schedule, 1000 steps: ~157x at t = 999, ~0.7x at t = 200), so their
  high-t quartiles dominate their means.

  Args:
    per_clip: term name -> [B] values, one per clip.
    t: [B] int timesteps in [0, num_timesteps).
    num_timesteps: T (quartile q holds t in [q T / 4, (q + 1) T / 4)).

  Returns:
    {`<name>/q_sum`: [4] float32 sums, `t_quartile_count`: [4] float32 counts}.
  """
  q = jnp.clip(t * NUM_QUARTILES // num_timesteps, 0, NUM_QUARTILES - 1)
  onehot = jax.nn.one_hot(q, NUM_QUARTILES, dtype=jnp.float32)  # [B, 4]
  out = {name + QUARTILE_SUM: v.astype(jnp.float32) @ onehot for name, v in per_clip.items()}
  out[QUARTILE_COUNT] = jnp.sum(onehot, axis=0)
  return out


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(scalar metrics, quartile sums and counts) of a train step's metrics."""
  is_q = lambda k: k.endswith(QUARTILE_SUM) or k == QUARTILE_COUNT
  return ({k: v for k, v in metrics.items() if not is_q(k)},
          {k: v for k, v in metrics.items() if is_q(k)})


def quartile_means(sums: dict[str, Any]) -> dict[str, float]:
  """`<term>/q0..q3` means from (possibly accumulated) `quartile_sums`; a quartile without
  clips is left out."""
  if not sums:
    return {}
  counts = np.asarray(sums[QUARTILE_COUNT], np.float64)
  out = {}
  for k, v in sums.items():
    if k.endswith(QUARTILE_SUM):
      v = np.asarray(v, np.float64)
      out.update({f"{k[:-len(QUARTILE_SUM)]}/q{q}": float(v[q] / counts[q])
                  for q in range(NUM_QUARTILES) if counts[q] > 0})
  return out


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """λ of each term (author, diff2lip #41); 0 switches a term off."""
  simple: float = 1.0
  sync: float = 0.1
  lpips: float = 0.25
  gan: float = 0.5


def _to_unit(x: jax.Array, size: int) -> jax.Array:
  """uint8 [..., S, S, 3] -> float32 in [-1, 1], resized to `size` if needed."""
  x = pixels.to_unit(x)
  if x.shape[-2] != size:
    x = jax.image.resize(x, (*x.shape[:-3], size, size, 3), "bilinear")
  return x


def denoising_terms(model: TFGModel, diffusion: Diffusion, params: Any, mb: Batch,
                    key: jax.Array, mask: jax.Array, train: bool):
  """Diffusion loss terms of one (micro-)batch of clips.

  One timestep per clip (its 5 frames share t, so x̂_0 of a clip is consistent for the sync
  and GAN losses); `cond_img` holds fresh noise in the masked rows (Diff2Lip training).

  Returns:
    (terms from `diffusion.training_losses` over the B*F frames, x0 [B*F, S, S, 3],
     x̂_0 clipped and composited with the unmasked x0 [B*F, S, S, 3], frames [B, F, S, S, 3],
     t [B] int32 of each clip).
  """
  size = model.image_size
  frames = _to_unit(mb["image"], size)
  b, f = frames.shape[:2]
  x0 = frames.reshape(b * f, size, size, 3)
  ref = _to_unit(mb["ref_img"], size).reshape(b * f, size, size, 3)
  mels = mb["indiv_mels"].reshape(b * f, *mb["indiv_mels"].shape[2:])
  k_t, k_noise, k_cond, k_drop = jax.random.split(key, 4)
  t_clip = jax.random.randint(k_t, (b,), 0, diffusion.num_timesteps)
  t = jnp.repeat(t_clip, f)
  noise = jax.random.normal(k_noise, x0.shape)
  cond = make_cond_img(x0, mask, jax.random.normal(k_cond, x0.shape))
  model_fn = lambda x_t, ts: model.apply(
      {"params": params}, x_t, ts, cond, mask, ref, mels, deterministic=not train,
      rngs={"dropout": k_drop}).astype(jnp.float32)
  terms = training_losses(diffusion, model_fn, x0, t, noise, mask)
  x0_hat = jnp.clip(terms["pred_xstart"], -1.0, 1.0) * mask + (1.0 - mask) * x0
  return terms, x0, x0_hat, frames, t_clip


def make_val_loss(model: TFGModel, diffusion: Diffusion, face_hide_percentage: float = 0.5,
                  seed: int = 0) -> Callable[[Any, Batch], jax.Array]:
  """Jitted `val_loss(params, batch) -> []`: the mean denoising loss with fixed noise and t."""
  mask = lower_face_mask(model.image_size, face_hide_percentage)

  @jax.jit
  def val_loss(params, batch):
    terms = denoising_terms(model, diffusion, params, batch, jax.random.PRNGKey(seed), mask,
                            train=False)[0]
    return jnp.mean(terms["loss"])

  return val_loss


def make_train_step(*, model: TFGModel, diffusion: Diffusion, tx: optax.GradientTransformation,
                    weights: LossWeights, face_hide_percentage: float = 0.5,
                    ema_decay: float = 0.9999, accum_steps: int = 1,
                    lr: float = 1e-4, warmup_steps: int = 0,
                    disc: Optional[PatchDiscriminator] = None,
                    disc_tx: Optional[optax.GradientTransformation] = None,
                    lpips_fn: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
                    sync_embed: Optional[Callable] = None) -> Callable:
  """Builds the train step.

  Args:
    model: the denoiser (dtype bfloat16 for speed; params float32).
    diffusion: the training diffusion (unrespaced, 1000 steps).
    tx: generator optimizer; disc_tx: discriminator optimizer (with `disc`, when weights.gan > 0).
    weights: loss weights; a term whose network is not given must have weight 0.
    face_hide_percentage: masked lower fraction of each crop (0.5).
    ema_decay: EMA decay of the generator params (0.9999).
    accum_steps: micro-batches per step; the per-step batch must divide by it.
    lr, warmup_steps: for logging the LR the optimizer applies.
    lpips_fn: (x, y) [N, S, S, 3] in [-1, 1] -> [N] LPIPS distances (frozen weights closed over).
    sync_embed: (faces [B, 48, 96, 15], mel [B, 80, 16]) -> (audio_emb, face_emb) (frozen).

  Returns:
    `train_step(state, batch) -> (new_state, metrics)`, metrics a dict of [] float32 arrays.

  Raises:
    ValueError: a weighted loss term without its network.
  """
  if weights.lpips and lpips_fn is None:
    raise ValueError("weights.lpips > 0 needs LPIPS weights (config.loss.lpips_weights)")
  if weights.sync and sync_embed is None:
    raise ValueError("weights.sync > 0 needs a SyncNet expert (config.loss.syncnet_weights)")
  if weights.gan and (disc is None or disc_tx is None):
    raise ValueError("weights.gan > 0 needs a discriminator and its optimizer")
  size = model.image_size
  mask = lower_face_mask(size, face_hide_percentage)

  def generator_loss(params, disc_params, mb, key):
    terms, x0, x0_hat, frames, t = denoising_terms(model, diffusion, params, mb, key, mask,
                                                   train=True)
    b, f = frames.shape[:2]
    clip_mean = lambda v: jnp.mean(v.reshape(b, f), axis=1)
    clips_hat = x0_hat.reshape(b, f, size, size, 3)
    metrics = {"loss_simple": jnp.mean(terms["loss"]), "mse": jnp.mean(terms["mse"]),
               "vb": jnp.mean(terms["vb"])}
    per_clip = {"loss_simple": clip_mean(terms["loss"])}
    total = weights.simple * metrics["loss_simple"]
    if weights.lpips:
      lp = lpips_fn(x0_hat, x0)
      metrics["loss_lpips"], per_clip["loss_lpips"] = jnp.mean(lp), clip_mean(lp)
      total += weights.lpips * metrics["loss_lpips"]
    if weights.sync:
      per_clip["loss_sync"] = losses.sync_loss_per_clip(sync_embed, clips_hat, mb["mel"])
      metrics["loss_sync"] = jnp.mean(per_clip["loss_sync"])
      total += weights.sync * metrics["loss_sync"]
    if weights.gan:
      logits = disc.apply({"params": disc_params}, clips_hat)
      metrics["loss_gan"] = losses.gan_generator_loss(logits)
      per_clip["loss_gan"] = losses.gan_generator_loss_per_clip(logits)
      total += weights.gan * metrics["loss_gan"]
    metrics["loss"] = total
    metrics.update(quartile_sums(per_clip, t, diffusion.num_timesteps))
    return total, (metrics, frames, clips_hat)

  def discriminator_loss(disc_params, real, fake):
    apply = lambda x: disc.apply({"params": disc_params}, x)
    return losses.gan_discriminator_loss(apply(real), apply(fake))

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    step_key = jax.random.fold_in(state.rng, state.step)
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1),
        {k: batch[k] for k in BATCH_KEYS})

    def accumulate(carry, inputs):
      g_acc, d_acc, m_acc = carry
      mb, i = inputs
      grad_fn = jax.value_and_grad(generator_loss, has_aux=True)
      (_, (metrics, real, fake)), grads = grad_fn(state.params, state.disc_params, mb,
                                                  jax.random.fold_in(step_key, i))
      if weights.gan:
        d_loss, d_grads = jax.value_and_grad(discriminator_loss)(
            state.disc_params, real, jax.lax.stop_gradient(fake))
        metrics = {**metrics, "loss_disc": d_loss}
        d_acc = jax.tree.map(jnp.add, d_acc, d_grads)
      g_acc = jax.tree.map(jnp.add, g_acc, grads)
      m_acc = jax.tree.map(jnp.add, m_acc, metrics)
      return (g_acc, d_acc, m_acc), None

    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    init = (zeros(state.params), zeros(state.disc_params),
            _zero_metrics(generator_loss, state, jax.tree.map(lambda x: x[0], micro), step_key,
                          weights))
    # XLA:CPU runs the UNet backward inside a loop body (even a one-trip or fully unrolled
    # `lax.scan`) 6-20x slower than as straight-line code (debug step: 10 s vs 1 s), so there,
    # and for a single micro-batch, the micro-batches are a Python loop; accelerators keep the
    # rolled scan (compile time independent of accum_steps).
    carry, steps = init, (micro, jnp.arange(accum_steps))
    if accum_steps == 1 or jax.default_backend() == "cpu":
      for i in range(accum_steps):
        carry, _ = accumulate(carry, jax.tree.map(lambda x, i=i: x[i], steps))
    else:
      carry, _ = jax.lax.scan(accumulate, carry, steps)
    g, d, m = carry
    scale = 1.0 / accum_steps
    grads = jax.tree.map(lambda x: x * scale, g)
    metrics = jax.tree.map(lambda x: x * scale, m)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if weights.gan:
      d_updates, disc_opt_state = disc_tx.update(jax.tree.map(lambda x: x * scale, d),
                                                 state.disc_opt_state, state.disc_params)
      disc_params = optax.apply_updates(state.disc_params, d_updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = learning_rate(lr, warmup_steps, state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema, disc_params=disc_params,
                              disc_opt_state=disc_opt_state)
    return new_state, metrics

  return train_step


def _zero_metrics(generator_loss, state, mb, key, weights):
  """Zeros shaped like one micro-batch's metrics (the accumulator's initial value)."""
  out = jax.eval_shape(generator_loss, state.params, state.disc_params, mb, key)[1][0]
  zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in out.items()}
  if weights.gan:
    zeros["loss_disc"] = jnp.zeros((), jnp.float32)
  return zeros


def init_train_state(rng: jax.Array, model: TFGModel, tx: optax.GradientTransformation,
                     disc: Optional[PatchDiscriminator] = None,
                     disc_tx: Optional[optax.GradientTransformation] = None,
                     params: Any = None, frames: int = 5) -> TrainState:
  """A fresh TrainState (jit it with `out_shardings` to create it sharded).

  Args:
    rng: PRNG key (raw uint32 [2] or typed).
    params: initial generator params (e.g. a converted upstream checkpoint); default random.
    frames: frames per clip, for the discriminator's input width.
  """
  from diff2lip_jax.inference import checkpoints  # pylint: disable=import-outside-toplevel
  rng = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  k_model, k_disc, k_train = jax.random.split(rng, 3)
  if params is None:
    params = checkpoints.init_params(model, k_model)
  disc_params = {}
  if disc is not None:
    clip = jnp.zeros((1, frames, model.image_size, model.image_size, 3), jnp.float32)
    disc_params = disc.init(k_disc, clip)["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params), disc_params=disc_params,
      disc_opt_state=(disc_tx or optax.identity()).init(disc_params), rng=k_train)


def jit_train_step(train_step: Callable, abstract_state: TrainState, mesh: Mesh):
  """`jax.jit` of the step with explicit shardings; the input state is donated.

  Returns:
    (jitted step, state shardings).
  """
  state_shardings = sharding.tree_shardings(abstract_state, mesh)
  batch_shardings = {k: sharding.batch_sharding(mesh, 5 if k in ("image", "ref_img") else
                                                4 if k == "indiv_mels" else 3)
                     for k in BATCH_KEYS}
  step = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnames=("state",))
  return step, state_shardings
