"""Diffusion schedules, respacing, losses and the scan samplers (parity with upstream DDIM-25)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax.diffusion import (
    get_named_beta_schedule, make_diffusion, p_mean_variance, q_sample, sample_loop,
    space_timesteps, training_losses)
from diff2lip_jax.inference.sampler import lower_face_mask, make_cond_img, make_sampler


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_linear_schedule_known_values():
  betas = get_named_beta_schedule("linear", 1000)
  assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
  assert np.cumprod(1 - betas)[-1] == pytest.approx(4.04e-5, rel=1e-2)  # spec §2
  cos = get_named_beta_schedule("cosine", 1000)
  assert cos.max() <= 0.999 and np.all(np.diff(cos[:-50]) > 0)
  with pytest.raises(ValueError, match="unknown noise_schedule"):
    get_named_beta_schedule("quadratic", 10)


@pytest.mark.parametrize("spec,expected", [
    ("", list(range(10))),
    ("ddim5", [0, 2, 4, 6, 8]),
    ("2,3", [0, 4, 5, 7, 9]),   # sections of 5: strides 4 and 2
    ("3", [0, 4, 9]),           # round(4.5) = 4 (banker's rounding, as Python/upstream)
])
def test_space_timesteps_known_answers(spec, expected):
  assert space_timesteps(10, spec) == expected


def test_ddim25_respacing():
  d = make_diffusion(timestep_respacing="ddim25")
  np.testing.assert_array_equal(d.timestep_map, np.arange(0, 1000, 40))
  assert float(d.alphas_cumprod[-1]) == pytest.approx(8.74e-5, rel=1e-2)  # spec §2: ᾱ_960
  assert len(space_timesteps(1000, "10,10,5")) == 25
  for bad in ("ddimx", "ddim999", "a,b", "400,400,400"):
    with pytest.raises(ValueError):
      space_timesteps(1000, bad)


def test_perfect_eps_gives_true_posterior_and_zero_mse():
  d = make_diffusion(timestep_respacing="ddim25")
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jnp.clip(jax.random.normal(k1, (3, 8, 8, 3)) * 0.3, -1, 1)
  noise = jax.random.normal(k2, x0.shape)
  t = jnp.array([0, 12, 24])
  x_t = q_sample(d, x0, t, noise)
  out = p_mean_variance(d, jnp.concatenate([noise, jnp.zeros_like(noise)], -1), x_t, t)
  np.testing.assert_allclose(out["pred_xstart"], x0, atol=1e-4)
  mask = jnp.zeros((3, 8, 8, 1)).at[:, 4:].set(1.0)
  losses = training_losses(d, lambda x, tt: jnp.concatenate([noise, jnp.zeros_like(noise)], -1),
                           x0, t, noise, mask)
  np.testing.assert_allclose(losses["mse"], 0.0, atol=1e-10)
  assert np.all(np.isfinite(losses["vb"]))


def test_vb_trains_only_the_variance_and_is_masked():
  d = make_diffusion()
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  x0 = jax.random.uniform(k1, (2, 8, 8, 3), minval=-1, maxval=1)
  noise = jax.random.normal(k2, x0.shape)
  out0 = jax.random.normal(k3, (2, 8, 8, 6))
  t = jnp.array([10, 500])
  mask = jnp.zeros((2, 8, 8, 1)).at[:, 4:].set(1.0)
  vb = lambda o: training_losses(d, lambda x, tt: o, x0, t, noise, mask)["vb"].sum()
  g = jax.grad(vb)(out0)
  assert np.all(g[..., :3] == 0) and np.any(g[..., 3:] != 0)
  assert np.all(g[:, :4] == 0)  # unmasked rows carry no loss
  total = lambda o: training_losses(d, lambda x, tt: o, x0, t, noise, mask)["loss"].sum()
  assert np.all(jax.grad(total)(out0)[:, :4] == 0)


@pytest.mark.parametrize("clip,key", [(True, "ddim25_sample"), (False, "ddim25_sample_unclipped")])
def test_ddim25_matches_upstream(small_model_params, small_io, clip, key):
  """Same noise, same conditioning as upstream's `ddim_sample_loop` on the small model."""
  model, params = small_model_params
  d = make_diffusion(timestep_respacing="ddim25")
  io = small_io

  @jax.jit
  def run(params):
    style = model.apply({"params": params}, io["indiv_mels"], method=model.audio_style)
    fn = lambda x, t: model.apply({"params": params}, x, t, io["cond_img"], io["mask"],
                                  io["ref_img"], audio_style=style)
    return sample_loop(d, fn, jnp.asarray(io["ddim25_noise"]), clip_denoised=clip)

  assert _rel(run(params), io[key]) < 1e-3


def test_frame_sampler_composites_and_is_deterministic(small_model_params):
  model, params = small_model_params
  d = make_diffusion(timestep_respacing="ddim2")
  rng = np.random.default_rng(0)
  faces = jnp.asarray(rng.uniform(-1, 1, (2, 128, 128, 3)), jnp.float32)
  mels = jnp.asarray(rng.uniform(-4, 4, (2, 80, 16)), jnp.float32)
  noise = jax.random.normal(jax.random.key(7), (1, 128, 128, 3))
  sample = make_sampler(model, d)
  out = sample(params, faces, faces, mels, noise)
  assert out.shape == faces.shape
  np.testing.assert_array_equal(out[:, :64], faces[:, :64])
  assert float(jnp.abs(out[:, 64:] - faces[:, 64:]).mean()) > 0.05
  assert np.all(np.abs(out) <= 1.0)
  np.testing.assert_array_equal(out, sample(params, faces, faces, mels, noise))
  ddpm = make_sampler(model, d, use_ddim=False)
  with pytest.raises(ValueError, match="rng is required"):
    ddpm(params, faces, faces, mels, noise)
  a = ddpm(params, faces, faces, mels, noise, jax.random.key(0))
  b = ddpm(params, faces, faces, mels, noise, jax.random.key(1))
  assert np.all(np.isfinite(a)) and float(jnp.abs(a - b).max()) > 0


def test_mask_and_cond_img():
  mask = lower_face_mask(128, 0.5)
  assert mask.shape == (1, 128, 128, 1)
  assert float(mask[0, 63].max()) == 0 and float(mask[0, 64].min()) == 1
  assert int(lower_face_mask(10, 0.3)[0, :, 0, 0].sum()) == 3  # rows int(10 * 0.7) = 7..9
  face, noise = jnp.ones((1, 4, 4, 3)), -jnp.ones((1, 4, 4, 3))
  cond = make_cond_img(face, lower_face_mask(4), noise)
  assert float(cond[0, :2].min()) == 1 and float(cond[0, 2:].max()) == -1
