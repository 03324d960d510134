"""Noise schedules and timestep respacing (guided-diffusion `gaussian_diffusion.py`, `respace.py`).

All schedule arithmetic is float64 in numpy, as upstream, and the per-step coefficients are
cast to float32 once (upstream's `_extract_into_tensor` does the same cast at every use).
"""

from __future__ import annotations

import math

import flax.struct
import jax.numpy as jnp
import numpy as np


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
  """β_t for t = 0..T-1, float64.

  "linear": Ho et al.'s 1e-4..0.02 over 1000 steps, scaled by 1000/T for other T.
  "cosine": Nichol & Dhariwal's `cos²((t/T + 0.008)/1.008 · π/2)` ᾱ, β capped at 0.999.

  Raises:
    ValueError: an unknown schedule name.
  """
  if name == "linear":
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
  if name == "cosine":
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps),
                         0.999) for i in range(num_timesteps)], dtype=np.float64)
  raise ValueError(f"unknown noise_schedule {name!r}; use 'linear' or 'cosine'")


def space_timesteps(num_timesteps: int, section_counts: str) -> list[int]:
  """The original timesteps kept by a `timestep_respacing` string, ascending.

  Same rule as upstream `respace.space_timesteps`:
    "" -> all steps; "ddimN" -> `range(0, T, stride)` with the stride giving exactly N steps
    (ddim25 -> 0, 40, ..., 960); "N" or "N1,N2,..." -> the T steps cut into equal sections and
    N_i steps taken evenly from section i (e.g. "10,10,5"): a float stride (size-1)/(N_i-1)
    accumulated and each partial sum rounded (Python's round, half to even), as upstream.

  Raises:
    ValueError: a malformed string, or more steps asked of a section than it has.
  """
  if not section_counts:
    return list(range(num_timesteps))
  if section_counts.startswith("ddim"):
    try:
      desired = int(section_counts[len("ddim"):])
    except ValueError:
      raise ValueError(f"bad timestep_respacing {section_counts!r}: expected e.g. 'ddim25'") from None
    for stride in range(1, num_timesteps):
      if len(range(0, num_timesteps, stride)) == desired:
        return list(range(0, num_timesteps, stride))
    raise ValueError(f"cannot take exactly {desired} evenly strided steps of {num_timesteps}; "
                     "choose another ddimN or a plain count such as '25'")
  try:
    counts = [int(c) for c in section_counts.split(",")]
  except ValueError:
    raise ValueError(f"bad timestep_respacing {section_counts!r}: expected 'ddim25', '250' or "
                     "'10,10,5'") from None
  size_per, extra = divmod(num_timesteps, len(counts))
  steps, start = [], 0
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if size < count or count < 1:
      raise ValueError(f"cannot take {count} steps from a section of {size} steps")
    frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
    # Upstream accumulates the float stride (cur_idx += frac_stride) rather than multiplying;
    # the rounding of the sum differs from round(j * frac_stride) for 278 of the counts 1..1000.
    cur_idx = 0.0
    for _ in range(count):
      steps.append(start + round(cur_idx))
      cur_idx += frac_stride
    start += size
  return sorted(set(steps))


@flax.struct.dataclass
class Diffusion:
  """Per-step coefficients of a (possibly respaced) Gaussian diffusion; [T'] float32 each.

  Indexed by the respaced step `t` in 0..T'-1; `timestep_map[t]` is the original timestep the
  model is conditioned on (upstream `SpacedDiffusion` / `_WrappedModel`).
  """

  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray
  log_betas: jnp.ndarray
  timestep_map: jnp.ndarray  # [T'] int32

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


def make_diffusion(diffusion_steps: int = 1000, noise_schedule: str = "linear",
                   timestep_respacing: str = "") -> Diffusion:
  """Builds the coefficients of upstream's (spaced) diffusion.

  Args:
    diffusion_steps: T of training (1000 for Diff2Lip).
    noise_schedule: "linear" (Diff2Lip) or "cosine".
    timestep_respacing: "" (all T steps), "ddim25", "250", "10,10,5", ...

  Returns:
    A `Diffusion` whose β are recomputed from ᾱ at the kept steps, as upstream.
  """
  base_betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
  base_ac = np.cumprod(1.0 - base_betas)
  kept = space_timesteps(diffusion_steps, timestep_respacing)
  betas, last = [], 1.0
  for t in kept:
    betas.append(1.0 - base_ac[t] / last)
    last = base_ac[t]
  betas = np.asarray(betas, np.float64)
  ac = np.cumprod(1.0 - betas)
  ac_prev = np.append(1.0, ac[:-1])
  post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
  post_var_for_log = np.append(post_var[1], post_var[1:]) if len(betas) > 1 else betas
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float64), jnp.float32)
  return Diffusion(
      betas=f32(betas),
      alphas_cumprod=f32(ac),
      alphas_cumprod_prev=f32(ac_prev),
      sqrt_alphas_cumprod=f32(np.sqrt(ac)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
      sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / ac)),
      sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / ac - 1.0)),
      posterior_variance=f32(post_var),
      posterior_log_variance_clipped=f32(np.log(post_var_for_log)),
      posterior_mean_coef1=f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
      posterior_mean_coef2=f32((1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac)),
      log_betas=f32(np.log(betas)),
      timestep_map=jnp.asarray(kept, jnp.int32),
  )
