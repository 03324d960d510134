"""Lip-sync experts: parity with Wav2Lip's SyncNet_color and syncnet_python's S, converters,
train-mode BatchNorm."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax.models import torch_io
from diff2lip_jax.models import syncnet


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def seeded(upstream_dir, name):
  """(state_dict rebuilt by ../shared/upstream/seeded_weights.py, io npz dict)."""
  spec = importlib.util.spec_from_file_location("seeded_weights",
                                                upstream_dir / "seeded_weights.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  keys = json.loads((upstream_dir / f"{name}_keys.json").read_text())
  sd = mod.seeded_state_dict(keys["state_dict"], keys["seed"])
  with np.load(upstream_dir / f"{name}_io.npz") as z:
    io = {k: z[k] for k in z.files}
  return sd, io


@pytest.fixture(scope="module")
def wav2lip(upstream_dir):
  return seeded(upstream_dir, "wav2lip_syncnet")


@pytest.fixture(scope="module")
def v2(upstream_dir):
  return seeded(upstream_dir, "syncnet_v2")


def test_wav2lip_syncnet_matches_upstream(wav2lip):
  sd, io = wav2lip
  model = syncnet.Wav2LipSyncNet()
  variables = syncnet.wav2lip_syncnet_variables(sd, model)
  mels = io["audio_sequences"].transpose(0, 2, 3, 1)          # [B, 80, 16, 1]
  faces = io["face_sequences"].transpose(0, 2, 3, 1)          # [B, 48, 96, 15]
  audio_emb, face_emb = jax.jit(model.apply)(variables, mels, faces)
  assert audio_emb.shape == face_emb.shape == (3, 512)
  assert _rel(audio_emb, io["audio_embedding"]) < 1e-4
  assert _rel(face_emb, io["face_embedding"]) < 1e-4
  np.testing.assert_allclose(np.linalg.norm(face_emb, axis=-1), 1.0, rtol=1e-5)
  p = syncnet.sync_probability(audio_emb, face_emb)
  ref = np.sum(io["audio_embedding"] * io["face_embedding"], axis=-1)
  np.testing.assert_allclose(p, ref, atol=1e-5)
  assert np.all((np.asarray(p) >= 0) & (np.asarray(p) <= 1))


def test_syncnet_v2_matches_upstream(v2):
  sd, io = v2
  model = syncnet.SyncNetV2()
  variables = syncnet.syncnet_v2_variables(sd, model)
  aud = jax.jit(lambda v, x: model.apply(v, x, method=model.embed_audio))(
      variables, io["mfcc"].transpose(0, 2, 3, 1))                  # [B, 13, 20, 1]
  lip = jax.jit(lambda v, x: model.apply(v, x, method=model.embed_lips))(
      variables, io["video"].transpose(0, 2, 3, 4, 1))              # [B, 5, 224, 224, 3]
  assert aud.shape == lip.shape == (2, 1024)
  assert _rel(aud, io["audio_feature"]) < 1e-4
  assert _rel(lip, io["lip_feature"]) < 1e-4


def test_converter_layouts_and_stats(v2):
  sd, _ = v2
  variables = syncnet.syncnet_v2_variables(sd)
  p, s = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(p["netcnnlip_0"]["kernel"],
                                sd["netcnnlip.0.weight"].transpose(2, 3, 4, 1, 0))
  np.testing.assert_array_equal(p["netcnnaud_18"]["kernel"],
                                sd["netcnnaud.18.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["netfcaud_3"]["kernel"], sd["netfcaud.3.weight"].T)
  np.testing.assert_array_equal(p["netfclip_1"]["scale"], sd["netfclip.1.weight"])
  np.testing.assert_array_equal(s["netcnnlip_19"]["var"], sd["netcnnlip.19.running_var"])
  np.testing.assert_array_equal(s["netfcaud_1"]["mean"], sd["netfcaud.1.running_mean"])


@pytest.mark.parametrize("edit,match", [
    ("remove", "1 missing: face_encoder.3.conv_block.1.running_var"),
    ("reshape", "audio_encoder.13.conv_block.0.weight: upstream shape"),
    ("extra", "1 unexpected: fc.weight"),
])
def test_converter_rejects_mismatch(wav2lip, edit, match):
  sd = dict(wav2lip[0])
  if edit == "remove":
    del sd["face_encoder.3.conv_block.1.running_var"]
  elif edit == "reshape":
    sd["audio_encoder.13.conv_block.0.weight"] = np.zeros((512, 512, 3, 3), np.float32)
  else:
    sd["fc.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(torch_io.ConversionError, match=match):
    syncnet.wav2lip_syncnet_variables(sd)


def test_load_by_path_npz_and_dataparallel_prefix(tmp_path, wav2lip):
  sd, _ = wav2lip
  path = tmp_path / "lipsync_expert.npz"
  np.savez(path, **{f"module.{k}": v for k, v in sd.items()})
  model, variables = syncnet.load_wav2lip_syncnet(path)
  np.testing.assert_array_equal(variables["params"]["face_encoder_0"]["conv_block_0"]["bias"],
                                sd["face_encoder.0.conv_block.0.bias"])
  with pytest.raises(torch_io.ConversionError, match="not found"):
    syncnet.load_syncnet_v2(tmp_path / "missing.model")


def test_torch_file_without_torch_says_so(tmp_path):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed")
  path = tmp_path / "syncnet_v2.model"
  path.write_bytes(b"\x80\x02}q\x00.")
  with pytest.raises(torch_io.ConversionError, match="pip install torch"):
    syncnet.load_syncnet_v2(path)


def test_stack_faces_layout():
  # frame f, channel c (RGB) holds 10 f + c; rows: top half 0, bottom half 1 (+ 100).
  frames = np.zeros((1, 5, 96, 96, 3), np.float32)
  for f in range(5):
    for c in range(3):
      frames[0, f, :, :, c] = 10 * f + c
  frames[:, :, 48:] += 100
  x = np.asarray(syncnet.stack_faces(jnp.asarray(frames)))
  assert x.shape == (1, 48, 96, 15)
  expected = [100 + 10 * f + (2 - k) for f in range(5) for k in range(3)]  # BGR, frame-major
  np.testing.assert_array_equal(x[0, 0, 0], expected)


def test_train_mode_updates_batch_stats(wav2lip):
  model = syncnet.Wav2LipSyncNet()
  abstract = jax.eval_shape(lambda: syncnet.init_wav2lip_syncnet(model, jax.random.key(0)))
  variables = syncnet.random_variables(abstract)
  # Same parameter count as upstream's SyncNet_color (running statistics excluded).
  assert syncnet.count_params(variables) == sum(
      v.size for k, v in wav2lip[0].items() if k.endswith(("weight", "bias")))
  rng = np.random.default_rng(0)
  mels = rng.standard_normal((2, 80, 16, 1)).astype(np.float32)
  faces = rng.uniform(size=(2, 48, 96, 15)).astype(np.float32)
  (a, v), updates = jax.jit(lambda var: model.apply(var, mels, faces, train=True,
                                                    mutable=["batch_stats"]))(variables)
  assert np.isfinite(np.asarray(a)).all() and np.isfinite(np.asarray(v)).all()
  before = variables["batch_stats"]["face_encoder_0"]["conv_block_1"]["mean"]
  after = updates["batch_stats"]["face_encoder_0"]["conv_block_1"]["mean"]
  assert not np.allclose(before, after)


def test_conv_block_train_gradients():
  """Gradients flow through a residual block in train mode (batch statistics)."""
  block = syncnet.ConvBlock(8, 3, residual=True)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6, 6, 8)), jnp.float32)
  variables = block.init(jax.random.key(0), x)

  def loss(params):
    y, _ = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                       train=True, mutable=["batch_stats"])
    return jnp.mean(y ** 2)

  grads = jax.grad(loss)(variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves) and any(np.abs(g).max() > 0 for g in leaves)
  # Train mode normalises with the batch statistics, eval mode with the running ones.
  y_eval = block.apply(variables, x)
  y_train, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(y_eval, y_train)


def test_sync_bce_known_values():
  p = jnp.array([0.5, 0.9, 0.1])
  y = jnp.array([1.0, 1.0, 0.0])
  np.testing.assert_allclose(syncnet.sync_bce(p, y), [np.log(2), -np.log(0.9), -np.log(0.9)],
                             rtol=1e-6)
