"""Gaussian diffusion maths (guided-diffusion `gaussian_diffusion.py`, as Diff2Lip uses it).

Pure functions over a `Diffusion` (see `schedule.py`); images are NHWC, `t` is the respaced step
index [N] int. Diff2Lip's model predicts ε and a learned-range variance (`learn_sigma`):
`log σ² = frac · log β_t + (1 - frac) · log β̃_t`, `frac = (v + 1) / 2`.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diff2lip_jax.diffusion.schedule import Diffusion


def _at(coef: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """coef[t] shaped [N, 1, ..., 1] to broadcast against an [N, ...] array of rank `ndim`."""
  return coef[t].reshape((-1,) + (1,) * (ndim - 1))


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over all but the first axis: [N, ...] -> [N]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def q_sample(d: Diffusion, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Samples q(x_t | x_0): `sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`; all arrays [N, H, W, C]."""
  return (_at(d.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
          + _at(d.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)


def q_posterior_mean_variance(d: Diffusion, x_start, x_t, t):
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each like `x_t`."""
  mean = (_at(d.posterior_mean_coef1, t, x_t.ndim) * x_start
          + _at(d.posterior_mean_coef2, t, x_t.ndim) * x_t)
  var = jnp.broadcast_to(_at(d.posterior_variance, t, x_t.ndim), x_t.shape)
  log_var = jnp.broadcast_to(_at(d.posterior_log_variance_clipped, t, x_t.ndim), x_t.shape)
  return mean, var, log_var


def predict_xstart_from_eps(d: Diffusion, x_t, t, eps):
  """x̂_0 = x_t / sqrt(ᾱ_t) - sqrt(1/ᾱ_t - 1) ε."""
  return (_at(d.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
          - _at(d.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)


def predict_eps_from_xstart(d: Diffusion, x_t, t, pred_xstart):
  """ε recovered from x̂_0 (inverse of `predict_xstart_from_eps`)."""
  return ((_at(d.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - pred_xstart)
          / _at(d.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))


def p_mean_variance(d: Diffusion, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
                    clip_denoised: bool = True) -> dict[str, jax.Array]:
  """p(x_{t-1} | x_t) from the model output (upstream `p_mean_variance`, ε + learned range).

  Args:
    model_output: [N, H, W, 2C] (ε, then v in [-1, 1]) or [N, H, W, C] (ε only: fixed-small
      variance).
    x_t: [N, H, W, C].
    t: [N] respaced step indices.
    clip_denoised: clamp x̂_0 to [-1, 1].

  Returns:
    dict with "mean", "variance", "log_variance", "pred_xstart", "eps" (the raw ε), each like x_t.
  """
  c = x_t.shape[-1]
  eps = model_output[..., :c]
  if model_output.shape[-1] == 2 * c:
    frac = (model_output[..., c:] + 1.0) / 2.0
    min_log = _at(d.posterior_log_variance_clipped, t, x_t.ndim)
    max_log = _at(d.log_betas, t, x_t.ndim)
    log_var = frac * max_log + (1.0 - frac) * min_log
  else:
    log_var = jnp.broadcast_to(_at(d.posterior_log_variance_clipped, t, x_t.ndim), x_t.shape)
  pred_xstart = predict_xstart_from_eps(d, x_t, t, eps)
  if clip_denoised:
    pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
  mean, _, _ = q_posterior_mean_variance(d, pred_xstart, x_t, t)
  return {"mean": mean, "variance": jnp.exp(log_var), "log_variance": log_var,
          "pred_xstart": pred_xstart, "eps": eps}


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-likelihood of images in [-1, 1] quantised to 256 bins under a Gaussian (nats)."""
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  cdf_delta = cdf_plus - cdf_min
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min,
                             jnp.log(jnp.maximum(cdf_delta, 1e-12))))


def vb_terms_bpd(d: Diffusion, model_output, x_start, x_t, t, mask: Optional[jax.Array] = None):
  """One VLB term in bits per dim, [N] (upstream `_vb_terms_bpd` with Diff2Lip's mask).

  KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the decoder NLL at t = 0, each
  multiplied by `mask` [N, H, W, 1] before the mean over all pixels (so the upper half counts
  as zero), as Diff2Lip's `_vb_terms_bpd` ("added by soumik").
  """
  true_mean, _, true_log_var = q_posterior_mean_variance(d, x_start, x_t, t)
  out = p_mean_variance(d, model_output, x_t, t, clip_denoised=False)
  kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])
  nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
  if mask is not None:
    kl, nll = kl * mask, nll * mask
  return jnp.where(t == 0, mean_flat(nll), mean_flat(kl)) / np.log(2.0)


def training_losses(d: Diffusion, model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                    x_start: jax.Array, t: jax.Array, noise: jax.Array,
                    mask: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  """guided-diffusion's hybrid loss for ε prediction with learned-range variance, masked.

  `loss = mse + vb`: `mse` the ε-MSE, `vb` the VLB term with a stop-gradient on ε so that it
  only trains the variance (Nichol & Dhariwal 2021, `LossType.MSE` with `learn_sigma`). Both
  terms are multiplied by `mask` and averaged over all pixels, the masking Diff2Lip's VLB uses
  (upstream's ε-MSE was not released; masking it the same way keeps the unused upper half,
  whose x_t the model never sees, out of the loss).

  Args:
    model_fn: (x_t [N,H,W,C], model timesteps [N]) -> [N, H, W, 2C]; conditioning is closed over.
    x_start: [N, H, W, C] clean frames in [-1, 1].
    t: [N] int respaced steps.
    noise: [N, H, W, C] standard normal.
    mask: [N, H, W, 1] or None.

  Returns:
    dict of [N] arrays: "loss", "mse", "vb"; and "pred_xstart" [N, H, W, C] (unclipped x̂_0, for
    the sync/LPIPS/GAN losses of training).
  """
  x_t = q_sample(d, x_start, t, noise)
  out = model_fn(x_t, d.timestep_map[t])
  c = x_start.shape[-1]
  eps = out[..., :c]
  frozen = jnp.concatenate([jax.lax.stop_gradient(eps), out[..., c:]], axis=-1)
  vb = vb_terms_bpd(d, frozen, x_start, x_t, t, mask)
  err = (noise - eps) ** 2
  mse = mean_flat(err * mask if mask is not None else err)
  return {"loss": mse + vb, "mse": mse, "vb": vb,
          "pred_xstart": predict_xstart_from_eps(d, x_t, t, eps)}
