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
from jax.sharding import Mesh

from diff2lip_jax import sharding
from diff2lip_jax.diffusion import SOLVERS, Diffusion, make_diffusion, make_plan, sample_loop
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
                 face_hide_percentage: float = 0.5,
                 mesh: Optional[Mesh] = None) -> Callable[..., jax.Array]:
  """Returns `sample(params, faces, refs, mels, noise, rng=None) -> frames`, jitted.

  The whole reverse process is one `lax.scan` under `jit`. Work that does not depend on the
  step is done once per batch outside the scan: the audio style vector
  (`TFGModel.audio_style`) and the first conv's response to the constant `cond_img`/`ref_img`
  channels (`TFGModel.cond_conv`). No input is donated: the inputs are a few MB against the
  scan's activations, and callers reuse them (the shared noise; `faces` passed as `refs`).

  Args:
    model, diffusion: the denoiser and the (respaced) diffusion.
    use_ddim, eta, clip_denoised: sampler settings (upstream: DDIM, η = 0, clipped).
    face_hide_percentage: masked lower fraction of each crop.
    mesh: a mesh from `diff2lip_jax.sharding` (e.g. `sharding.local_mesh()`): the frame batch
      is split over its data x fsdp axes and params, noise and rng replicated; frames are
      padded to a multiple of the device count and the padding cut off again. Pass params
      already replicated (`jax.device_put(params, sharding.replicated(mesh))`) to avoid a copy
      per call. None: no placement, the jitted function follows its inputs' shardings.

  Args of the returned function:
    params: the model's params tree.
    faces: [N, S, S, 3] float32 in [-1, 1]: the crops to re-synthesise (upstream `gt`).
    refs: [N, S, S, 3 * nrefer] float32 in [-1, 1]: reference crops (upstream: the face itself).
    mels: [N, 80, 16] per-frame mel windows.
    noise: [1 or N, S, S, 3] initial noise x_T, broadcast over frames.
    rng: PRNG key for stochastic samplers (DDPM, DDIM η > 0); None for DDIM η = 0.

  Returns:
    [N, S, S, 3] float32 in [-1, 1]: the sample in the masked rows, `faces` elsewhere (on the
    mesh's devices when `mesh` is given: batch-sharded, or gathered where padding was cut).
  """

  @jax.jit
  def sample(params: Any, faces: jax.Array, refs: jax.Array, mels: jax.Array,
             noise: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    variables = {"params": params}
    mask = lower_face_mask(faces.shape[1], face_hide_percentage)
    x_T = jnp.broadcast_to(noise, faces.shape).astype(jnp.float32)
    if mesh is not None:
      x_T = jax.lax.with_sharding_constraint(x_T, sharding.batch_sharding(mesh, 4))
    cond_img = make_cond_img(faces, mask, x_T)
    style = model.apply(variables, mels, method=TFGModel.audio_style)
    cond = model.apply(variables, cond_img, refs, method=TFGModel.cond_conv)
    model_fn = lambda x, t: model.apply(variables, x, t, cond_img, mask, audio_style=style,
                                        cond_conv=cond).astype(jnp.float32)
    x0 = sample_loop(diffusion, model_fn, x_T, use_ddim=use_ddim, eta=eta,
                     clip_denoised=clip_denoised, rng=rng)
    return x0 * mask + (1.0 - mask) * faces

  if mesh is None:
    return sample

  devices = sharding.batch_size_multiple(mesh)
  replicated = sharding.replicated(mesh)

  def sharded_sample(params: Any, faces: jax.Array, refs: jax.Array, mels: jax.Array,
                     noise: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    n = faces.shape[0]
    padded = -(-n // devices) * devices
    pad = lambda x: x if x.shape[0] == padded else jnp.concatenate(
        [x, jnp.repeat(x[-1:], padded - x.shape[0], axis=0)])
    put = lambda x: jax.device_put(pad(x), sharding.batch_sharding(mesh, x.ndim))
    noise = put(noise) if noise.shape[0] == n and n > 1 else jax.device_put(noise, replicated)
    params, rng = jax.device_put((params, rng), replicated)
    out = sample(params, put(faces), put(refs), put(mels), noise, rng)
    return out if padded == n else out[:n]

  return sharded_sample


def build_sampler(model: TFGModel, *, sampler: str = "ddim", steps: int = 0,
                  timestep_respacing: str = "ddim25", use_ddim: bool = True, eta: float = 0.0,
                  clip_denoised: bool = True, face_hide_percentage: float = 0.5,
                  diffusion_steps: int = 1000, noise_schedule: str = "linear",
                  mesh: Optional[Mesh] = None, solver_order: int = 2,
                  solver_schedule: Optional[str] = None) -> Callable[..., jax.Array]:
  """The frame sampler a user chose by name: the one entry point of the inference core.

  Args:
    model: the denoiser.
    sampler: "ddim" (upstream), "ddpm" (ancestral), "dpmpp_2m" (DPM-Solver++(2M)) or "unipc"
      (UniPC bh2 with the UniC corrector); the last two are deterministic ODE solvers of
      `diff2lip_jax.diffusion.solvers` on the same conditioning and shared initial noise.
    steps: model evaluations of "dpmpp_2m"/"unipc" (>= 1). ddim/ddpm use `timestep_respacing`
      when steps is 0; "ddim" with steps N > 0 is deterministic DDIM on the "trailing" grid
      (t = 1000 k / N - 1, k = N..1), the grid `launch.distill` students are trained for.
    timestep_respacing: upstream's respacing string ("ddim25", "250", ...), ddim/ddpm only.
    use_ddim, eta, face_hide_percentage, mesh: as `make_sampler` (use_ddim/eta: ddim/ddpm).
    clip_denoised: clamp x̂_0 to [-1, 1] (for the solvers: every data prediction).
    diffusion_steps, noise_schedule: the training diffusion (Diff2Lip: 1000, linear).
    solver_order: UniPC's order p (1..3; default 2). DPM-Solver++(2M) is always 2.
    solver_schedule: "logsnr" or "time_uniform"; None: the solver paper's choice (logsnr for
      dpmpp_2m, time_uniform for unipc).

  Returns:
    `sample(params, faces, refs, mels, noise, rng=None)` as `make_sampler`'s (rng unused by
    the deterministic samplers).

  Raises:
    ValueError: an unknown sampler, or a solver without `steps`.
  """
  if sampler == "ddim" and steps > 0:
    plan = make_plan("ddim", steps, schedule="trailing", diffusion_steps=diffusion_steps,
                     noise_schedule=noise_schedule)
    return make_sampler(model, plan, clip_denoised=clip_denoised,  # type: ignore[arg-type]
                        face_hide_percentage=face_hide_percentage, mesh=mesh)
  if sampler in ("ddim", "ddpm"):
    diffusion = make_diffusion(diffusion_steps, noise_schedule, timestep_respacing)
    return make_sampler(model, diffusion, use_ddim=use_ddim and sampler == "ddim", eta=eta,
                        clip_denoised=clip_denoised,
                        face_hide_percentage=face_hide_percentage, mesh=mesh)
  if sampler in SOLVERS:
    if steps < 1:
      raise ValueError(f"sampler {sampler} needs steps >= 1 (e.g. 10); got {steps}")
    plan = make_plan(sampler, steps, order=solver_order, schedule=solver_schedule,
                     diffusion_steps=diffusion_steps, noise_schedule=noise_schedule)
    # `make_sampler` runs `sample_loop`, which runs a `SolverPlan` with `solvers.solve`.
    return make_sampler(model, plan, clip_denoised=clip_denoised,  # type: ignore[arg-type]
                        face_hide_percentage=face_hide_percentage, mesh=mesh)
  raise ValueError(f"unknown sampler {sampler!r}; choose ddim, ddpm, dpmpp_2m or unipc")
