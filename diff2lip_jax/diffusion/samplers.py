"""DDIM and ancestral (DDPM) samplers as one `jax.lax.scan` (guided-diffusion `ddim_sample_loop`,
`p_sample_loop`).

A sampler takes a `model_fn(x_t [N,H,W,C], timesteps [N]) -> [N,H,W,2C]` with the conditioning
closed over (so work that does not depend on t, such as the audio style, is computed once
outside the scan) and returns x_0. Jit the caller; the scan body is traced once.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diff2lip_jax.diffusion import gaussian, solvers
from diff2lip_jax.diffusion.schedule import Diffusion

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def sample_loop(d: Diffusion | solvers.SolverPlan, model_fn: ModelFn, x_T: jax.Array, *,
                use_ddim: bool = True, eta: float = 0.0, clip_denoised: bool = True,
                rng: Optional[jax.Array] = None) -> jax.Array:
  """Runs the reverse process over all steps of `d`, from t = T'-1 down to 0.

  Args:
    d: the (respaced) diffusion, e.g. `make_diffusion(timestep_respacing="ddim25")`; or a
      `solvers.SolverPlan` (DPM-Solver++(2M), UniPC: `solvers.make_plan`), which runs
      `solvers.solve` (deterministic ODE solvers: `use_ddim`, `eta` and `rng` are ignored).
    model_fn: the denoiser, called with original-grid timesteps `d.timestep_map[t]`.
    x_T: [N, H, W, C] initial noise (Diff2Lip shares one draw across all frames of a video).
    use_ddim: DDIM (Song et al. 2021, eq. 12) if True, else ancestral sampling with the learned
      variance.
    eta: DDIM η; 0 is deterministic (upstream's setting).
    clip_denoised: clamp x̂_0 to [-1, 1] at every step (upstream: True).
    rng: PRNG key for the per-step noise; required unless DDIM with η = 0.

  Returns:
    [N, H, W, C] x_0 sample, float32.

  Raises:
    ValueError: `rng` missing where noise is needed.
  """
  if isinstance(d, solvers.SolverPlan):
    return solvers.solve(d, model_fn, x_T, clip_denoised=clip_denoised)
  stochastic = not use_ddim or eta > 0
  if stochastic and rng is None:
    raise ValueError("rng is required for ancestral sampling or DDIM with eta > 0")
  n = x_T.shape[0]

  def step(x, inputs):
    i, key = inputs
    t = jnp.full((n,), i, jnp.int32)
    out = gaussian.p_mean_variance(d, model_fn(x, d.timestep_map[t]), x, t, clip_denoised)
    noise = jax.random.normal(key, x.shape, x.dtype) if stochastic else jnp.zeros_like(x)
    nonzero = (i != 0).astype(x.dtype)
    if use_ddim:
      eps = gaussian.predict_eps_from_xstart(d, x, t, out["pred_xstart"])
      ab, ab_prev = d.alphas_cumprod[i], d.alphas_cumprod_prev[i]
      sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab)) * jnp.sqrt(1 - ab / ab_prev)
      mean = out["pred_xstart"] * jnp.sqrt(ab_prev) + jnp.sqrt(1 - ab_prev - sigma ** 2) * eps
      x = mean + nonzero * sigma * noise
    else:
      x = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise
    return x, None

  steps = jnp.arange(d.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  keys = (jax.random.split(rng, d.num_timesteps) if stochastic
          else jnp.zeros((d.num_timesteps, 2), jnp.uint32))
  x, _ = jax.lax.scan(step, x_T.astype(jnp.float32), (steps, keys))
  return x
