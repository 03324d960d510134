"""FID InceptionV3: parity with pytorch-fid (resize and normalisation included), converter."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax.models import torch_io
from diff2lip_jax.inference import crops
from diff2lip_jax.models import inception
from tests.test_syncnet import seeded


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def fid_weights(upstream_dir):
  return seeded(upstream_dir, "pt_inception")


def test_pool3_matches_pytorch_fid(fid_weights):
  sd, io = fid_weights
  model = inception.FIDInceptionV3()
  variables = inception.fid_inception_variables(sd, model)
  images = io["images"].transpose(0, 2, 3, 1)            # [3, 128, 128, 3] in [0, 1]
  pool3 = jax.jit(model.apply)(variables, images)
  assert pool3.shape == (3, inception.FID_DIM)
  assert _rel(pool3, io["pool3"]) < 1e-4


def test_resize_is_torch_bilinear_without_antialias():
  """Upsampling with half-pixel centres and edge clamping (`F.interpolate(align_corners=False)`),
  checked against the cv2-grid NumPy resize of `face.py` on a random image."""
  x = np.random.default_rng(0).uniform(size=(1, 5, 7, 3)).astype(np.float32)
  got = inception.resize_for_inception(jnp.asarray(x), size=13)
  want = crops.resize_bilinear(x[0], (13, 13))
  np.testing.assert_allclose(got[0], want, atol=1e-6)


def test_average_pool_ignores_padding():
  x = jnp.ones((1, 4, 4, 2))
  pooled = inception._avg3_no_pad_count(x)  # pylint: disable=protected-access
  np.testing.assert_allclose(pooled, 1.0)


def test_converter_names_ignore_fc_and_reject_missing(fid_weights):
  sd, _ = fid_weights
  assert "fc.weight" in sd and "Mixed_7c.bn.weight" not in sd
  name = inception.inception_torch_name("params", ("Mixed_6b", "branch7x7dbl_3", "conv", "kernel"))
  assert name == "Mixed_6b.branch7x7dbl_3.conv.weight"
  assert inception.inception_torch_name("batch_stats", ("Conv2d_1a_3x3", "bn", "var")) == \
      "Conv2d_1a_3x3.bn.running_var"
  sd = dict(sd)
  del sd["Mixed_7b.branch3x3_2b.bn.running_mean"]
  with pytest.raises(torch_io.ConversionError,
                     match="1 missing: Mixed_7b.branch3x3_2b.bn.running_mean"):
    inception.fid_inception_variables(sd)


def test_parameter_count_matches_keys(upstream_dir):
  keys = json.loads((upstream_dir / "pt_inception_keys.json").read_text())["state_dict"]
  model = inception.FIDInceptionV3()
  abstract = jax.eval_shape(lambda: inception.init_fid_inception(model, jax.random.key(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract))
  want = sum(int(np.prod(s)) for name, s, _ in keys
             if not name.startswith("fc.") and not name.endswith("num_batches_tracked"))
  assert n == want
