"""TFG UNet: parity with upstream PyTorch outputs, architecture size, bf16 switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from diff2lip_jax.inference import checkpoints
from diff2lip_jax.models import RELEASED_FLAGS, model_from_flags
from diff2lip_jax.models.layers import timestep_embedding


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def _forward(model, params, io, **kw):
  return jax.jit(model.apply)(
      {"params": params}, io["x_t"], io["timesteps"], io["cond_img"], io["mask"],
      io["ref_img"], io["indiv_mels"], **kw)


def test_small_model_matches_upstream_output(small_model_params, small_io):
  model, params = small_model_params
  out = _forward(model, params, small_io)
  assert out.shape == (4, 128, 128, 6)
  assert _rel(out, small_io["model_output"]) < 1e-4


def test_precomputed_audio_style_gives_same_output(small_model_params, small_io):
  model, params = small_model_params
  style = model.apply({"params": params}, small_io["indiv_mels"], method=model.audio_style)
  assert style.shape == (4, 4 * model.model_channels)
  out = jax.jit(lambda p, s: model.apply(
      {"params": p}, small_io["x_t"], small_io["timesteps"], small_io["cond_img"],
      small_io["mask"], small_io["ref_img"], audio_style=s))(params, style)
  assert _rel(out, small_io["model_output"]) < 1e-4


def test_cond_conv_split_gives_same_output(small_model_params, small_io):
  """First conv split: conv(concat(x, cond, ref)) = conv_x(x) + cond_conv(cond, ref) (+ bias)."""
  model, params = small_model_params
  io = small_io
  cond = model.apply({"params": params}, io["cond_img"], io["ref_img"], method=model.cond_conv)
  assert cond.shape == (4, 128, 128, model.model_channels) and cond.dtype == jnp.float32
  # ref_img is not needed once its conv is precomputed.
  out = jax.jit(lambda p, c: model.apply(
      {"params": p}, io["x_t"], io["timesteps"], io["cond_img"], io["mask"], None,
      io["indiv_mels"], cond_conv=c))(params, cond)
  full = _forward(model, params, io)
  assert _rel(out, io["model_output"]) < 1e-4
  assert _rel(out, np.asarray(full)) < 1e-5
  with pytest.raises(ValueError, match="ref_img is required"):
    model.apply({"params": params}, io["cond_img"], method=model.cond_conv)


def test_audio_changes_output(small_model_params, small_io):
  model, params = small_model_params
  io = dict(small_io, indiv_mels=np.roll(small_io["indiv_mels"], 1, axis=0))
  # Parity error is ~1e-6; the audio effect of these random weights is ~5e-4.
  assert _rel(_forward(model, params, io), small_io["model_output"]) > 1e-4


def test_upper_half_of_x_t_is_ignored(small_model_params, small_io):
  """x_t's unmasked rows are replaced by cond_img (upstream TFGModel.forward)."""
  model, params = small_model_params
  x_t = small_io["x_t"].copy()
  x_t[:, :64] = 123.0
  out = _forward(model, params, dict(small_io, x_t=x_t))
  np.testing.assert_allclose(out, small_io["model_output"], atol=1e-4)


def test_bfloat16_compute_close_to_float32(small_model_params, small_io, small_flags):
  _, params = small_model_params
  model16 = model_from_flags(small_flags, dtype=jnp.bfloat16)
  out = _forward(model16, params, small_io)
  assert out.dtype == jnp.float32
  assert 0 < _rel(out, small_io["model_output"]) < 0.05


def test_released_architecture_has_upstream_parameter_count(upstream_dir):
  import json
  released = json.loads((upstream_dir / "tfg_released_keys.json").read_text())
  shapes = checkpoints.abstract_params(model_from_flags(RELEASED_FLAGS))
  leaves = traverse_util.flatten_dict(shapes)
  assert len(leaves) == len(released["state_dict"]) == 632
  assert sum(int(np.prod(v.shape)) for v in leaves.values()) == released["n_params"] == 101_670_630


def test_timestep_embedding_is_cos_then_sin():
  emb = np.asarray(timestep_embedding(jnp.array([0, 7]), 8))
  np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(emb[1], np.concatenate([np.cos(7 * freqs), np.sin(7 * freqs)]),
                             rtol=1e-5)


def test_unsupported_flags_are_rejected():
  with pytest.raises(NotImplementedError):
    model_from_flags({"audio_as_style": False})
  with pytest.raises(ValueError, match="unknown model flags"):
    model_from_flags({"num_chanels": 64})
  with pytest.raises(ValueError, match="image_size"):
    model_from_flags({"image_size": 96})
