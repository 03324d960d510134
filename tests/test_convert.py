"""Checkpoint converter: the released key set, rejection of mismatches, Orbax round trip."""

import json
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util

from diff2lip_jax.inference import checkpoints
from diff2lip_jax.models import torch_io
from diff2lip_jax.models import RELEASED_FLAGS, model_from_flags


@pytest.fixture(scope="module")
def released():
  """(fake state_dict with the released names and shapes, abstract params)."""
  from tests.conftest import UPSTREAM
  keys = json.loads((UPSTREAM / "tfg_released_keys.json").read_text())["state_dict"]
  rng = np.random.default_rng(0)
  # Small distinct values so that a wrong transpose shows up as a wrong value.
  sd = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in keys.items()}
  return sd, checkpoints.abstract_params(model_from_flags(RELEASED_FLAGS))


def test_accepts_exactly_the_released_key_set(released):
  sd, target = released
  params = torch_io.convert_state_dict(sd, target)
  flat = traverse_util.flatten_dict(params)
  assert len(flat) == len(sd) == 632
  # Spot-check layouts: conv OIHW -> HWIO, linear OI -> IO, 1x1 conv1d -> dense.
  w = sd["input_blocks.0.0.weight"]
  np.testing.assert_array_equal(params["input_blocks_0_0"]["kernel"], w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["time_embed_0"]["kernel"], sd["time_embed.0.weight"].T)
  np.testing.assert_array_equal(params["middle_block_1"]["qkv"]["kernel"],
                                sd["middle_block.1.qkv.weight"][..., 0].T)
  np.testing.assert_array_equal(params["audio_encoder"]["input_block_0"]["kernel"],
                                sd["audio_encoder.input_block.0.weight"].transpose(2, 1, 0))
  np.testing.assert_array_equal(params["out_0"]["scale"], sd["out.0.weight"])


@pytest.mark.parametrize("edit,match", [
    ("remove", "1 missing: output_blocks.3.1.qkv.bias"),
    ("reshape", "output_blocks.3.1.qkv.bias: upstream shape"),
    ("extra", "1 unexpected: label_emb.weight"),
])
def test_rejects_mismatched_state_dict(released, edit, match):
  sd, target = released
  sd = dict(sd)
  if edit == "remove":
    del sd["output_blocks.3.1.qkv.bias"]
  elif edit == "reshape":
    sd["output_blocks.3.1.qkv.bias"] = np.zeros(7, np.float32)
  else:
    sd["label_emb.weight"] = np.zeros((3, 512), np.float32)
  with pytest.raises(torch_io.ConversionError, match=match):
    torch_io.convert_state_dict(sd, target)


def test_checkpoint_round_trip(small_checkpoint, small_model_params, small_flags):
  _, params = small_model_params
  loaded = checkpoints.load_model(small_checkpoint)
  model, restored = loaded.model, loaded.params
  assert loaded.upstream and loaded.s3fd_path is None
  assert model == model_from_flags(small_flags)
  for (k, a), (_, b) in zip(traverse_util.flatten_dict(params).items(),
                            traverse_util.flatten_dict(restored).items()):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg="/".join(k))


def test_load_errors(tmp_path, small_checkpoint):
  with pytest.raises(checkpoints.CheckpointError, match="is not a model"):
    checkpoints.load_model(tmp_path / "nope")
  with pytest.raises(checkpoints.CheckpointError, match="is not a model"):
    checkpoints.load_model(tmp_path)
  # Flags of another architecture next to the small model's params: a mismatched checkpoint.
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "params").symlink_to(small_checkpoint / "params")
  (bad / "model_flags.json").write_text(json.dumps({"num_channels": 64}))
  with pytest.raises(checkpoints.CheckpointError, match="does not match"):
    checkpoints.load_model(bad)


def test_cli_converts_npz_and_fails_cleanly(tmp_path):
  from tests.conftest import UPSTREAM
  flags_file = UPSTREAM / "tfg_small_config.json"
  ok = subprocess.run([sys.executable, "-m", "diff2lip_jax.convert",
                       f"--upstream_checkpoint={UPSTREAM / 'tfg_small.npz'}",
                       f"--output_dir={tmp_path / 'out'}", f"--model_flags={flags_file}"],
                      capture_output=True, text=True, check=False)
  assert ok.returncode == 0, ok.stderr
  assert (tmp_path / "out" / "model_flags.json").is_file()
  # Without --model_flags the released architecture is assumed: the small weights do not fit.
  bad = subprocess.run([sys.executable, "-m", "diff2lip_jax.convert",
                        f"--upstream_checkpoint={UPSTREAM / 'tfg_small.npz'}",
                        f"--output_dir={tmp_path / 'bad'}"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1].startswith("error: state_dict does not match")
  assert "Traceback" not in bad.stderr
  assert not (tmp_path / "bad").exists()
