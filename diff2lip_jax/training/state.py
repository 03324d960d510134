"""The train state: generator params + optimizer + EMA, discriminator params + optimizer.

Everything that a resumed run needs besides the data iterator (saved beside it by Orbax) lives
here, including the base PRNG key: step keys are `fold_in(rng, step)`, so a resumed run draws
exactly the noise an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # [] int32, optimizer steps taken
  params: Any                     # generator (TFGModel) params, float32
  opt_state: Any
  ema_params: Any                 # EMA of params (decay config.optim.ema_decay)
  disc_params: Any                # PatchDiscriminator params ({} when the GAN loss is off)
  disc_opt_state: Any
  rng: jax.Array                  # [2] uint32 raw key


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, weight_decay: float,
                   grad_clip: float, b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW with linear warm-up then constant LR, after global-norm clipping.

  guided-diffusion trains with AdamW, lr 1e-4, weight decay 0 and a constant LR (spec §3.2);
  `total_steps` is accepted for schedules that decay but not used by this constant one.
  """
  del total_steps
  schedule = optax.linear_schedule(0.0, lr, max(warmup_steps, 1)) if warmup_steps else lr
  chain = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  return optax.chain(*chain, optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))


def learning_rate(lr: float, warmup_steps: int, step: jax.Array) -> jax.Array:
  """The LR `make_optimizer` applies at `step` (for logging)."""
  if not warmup_steps:
    return jnp.asarray(lr, jnp.float32)
  return lr * jnp.minimum(step.astype(jnp.float32) / warmup_steps, 1.0)
