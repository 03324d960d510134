"""Diff2Lip conditioning of 128x128 face crops and the jitted frame sampler.

Upstream `tfg_data_util.tfg_process_batch` + `generate.py` sampling (spec §1.2, §2, §5):
the lower `face_hide_percentage` of each crop is masked; `cond_img` is the crop with the masked
rows filled by the initial noise; that same noise x_T, one draw shared by every frame of a
video (upstream's temporal-consistency trick, author in diff2lip #11), starts DDIM; the result
is composited as `sample * mask + (1 - mask) * face`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diff2lip_jax.diffusion import Diffusion, sample_loop
from diff2lip_jax.models.unet import TFGModel


def lower_face_mask(image_size: int, face_hide_percentage: float = 0.5) -> jax.Array:
  """[1, H, W, 1] float32: 1 on rows `int(H * (1 - p))`.. (the regenerated part), else 0."""
  first_row = int(image_size * (1.0 - face_hide_percentage))
  rows = (jnp.arange(image_size) >= first_row).astype(jnp.float32)
  return jnp.broadcast_to(rows[None, :, None, None], (1, image_size, image_size, 1))


def make_cond_img(face: jax.Array, mask: jax.Array, noise: jax.Array) -> jax.Array:
  """`face * (1 - mask) + mask * noise`: the masked region filled with noise (Palette-style)."""
  return face * (1.0 - mask) + mask * noise


def make_sampler(model: TFGModel, diffusion: Diffusion, *, use_ddim: bool = True,
                 eta: float = 0.0, clip_denoised: bool = True,
                 face_hide_percentage: float = 0.5) -> Callable[..., jax.Array]:
  """Returns a jitted `sample(params, faces, refs, mels, noise, rng=None) -> frames`.

  Args of the returned function:
    params: the model's params tree.
    faces: [N, S, S, 3] float32 in [-1, 1]: the crops to re-synthesise (upstream `gt`).
    refs: [N, S, S, 3 * nrefer] float32 in [-1, 1]: reference crops (upstream: the face itself).
    mels: [N, 80, 16] per-frame mel windows.
    noise: [1 or N, S, S, 3] initial noise x_T, broadcast over frames.
    rng: PRNG key for stochastic samplers (DDPM, DDIM η > 0); None for DDIM η = 0.

  Returns:
    [N, S, S, 3] float32 in [-1, 1]: the sample in the masked rows, `faces` elsewhere.
  """

  @jax.jit
  def sample(params: Any, faces: jax.Array, refs: jax.Array, mels: jax.Array,
             noise: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    variables = {"params": params}
    mask = lower_face_mask(faces.shape[1], face_hide_percentage)
    x_T = jnp.broadcast_to(noise, faces.shape).astype(jnp.float32)
    cond_img = make_cond_img(faces, mask, x_T)
    style = model.apply(variables, mels, method=TFGModel.audio_style)
    model_fn = lambda x, t: model.apply(variables, x, t, cond_img, mask, refs,
                                        audio_style=style).astype(jnp.float32)
    x0 = sample_loop(diffusion, model_fn, x_T, use_ddim=use_ddim, eta=eta,
                     clip_denoised=clip_denoised, rng=rng)
    return x0 * mask + (1.0 - mask) * faces

  return sample
