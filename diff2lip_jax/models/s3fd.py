r"""S3FD face detector in Flax (upstream's detector), its weight converter and box decoding.

Upstream Diff2Lip detects faces with the S3FD copy in Wav2Lip's `face_detection/` (spec §4.2):
`face_detection/detection/sfd/net_s3fd.py` (the network), `detect.py::batch_detect` (softmax,
anchor decoding), `bbox.py::{decode, nms}` and `sfd_detector.py::detect_from_batch`
(NMS 0.3, keep scores > 0.5), then `api.py::get_detections_for_batch` (first = highest-scoring box,
clipped at 0, truncated to int). Weights: the public `s3fd-619a316812.pth` (adrianbulat.com).

Weights convert with `python -m diff2lip_jax.convert --s3fd_checkpoint s3fd-619a316812.pth`
(needs torch); the detector itself is `diff2lip_jax.inference.s3fd`.

Network (NHWC here, NCHW upstream): VGG16 conv1_1..conv5_3 (3x3, ReLU, 2x2 max-pool after each
stage), fc6 (3x3, padding 3), fc7 (1x1), conv6_1/6_2 (1x1, 3x3 stride 2), conv7_1/7_2 (idem);
L2Norm with learned scales on conv3_3, conv4_3, conv5_3; six heads (class + box regression) at
strides 4, 8, 16, 32, 64, 128. The stride-4 class head has 4 channels and its background score is
the max of the first three ("max-out background label").

Input: BGR frames minus the per-channel mean (104, 117, 123): Diff2Lip reads RGB frames and flips
them (`images[..., ::-1]`) before detection, so S3FD sees BGR, as the model was trained (spec §4.2
notes that Wav2Lip, which reads BGR, ends up feeding RGB). `S3FDDetector` takes RGB uint8 frames
and does the flip and the mean subtraction on the accelerator, for a whole batch at once.

Decoding, per level i (stride s = 2^(i+2), anchor side 4s, anchor centre (s/2 + s*col, s/2 +
s*row)): score = softmax(class)[face]; centre = anchor centre + 0.1 * 4s * (dx, dy); size = 4s *
exp(0.2 * (dw, dh)); box = centre -/+ size / 2. Upstream then keeps anchors scoring > 0.05, runs
greedy NMS (IoU > 0.3 suppressed, areas with upstream's +1 pixel convention) and drops boxes
scoring <= 0.5. Greedy NMS only lets a box suppress lower-scoring ones, so NMS over the boxes
scoring > 0.5 alone gives exactly the same result; that is what `decode_detections` does.

Names: Flax submodules are named exactly as upstream's state_dict entries (`conv1_1`,
`conv3_3_norm`, `fc7_mbox_loc`, ...; there are no numbered children), so the conversion is the
rule `("conv1_1", "kernel") <-> "conv1_1.weight"`, with the layouts of `diff2lip_jax.convert`.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diff2lip_jax.models import torch_io as convert_lib

__all__ = ["S3FD", "BGR_MEAN", "STRIDES", "s3fd_upstream_name", "convert_s3fd_state_dict",
           "load_s3fd_params", "save_s3fd_params", "abstract_s3fd_params"]

BGR_MEAN = (104.0, 117.0, 123.0)  # upstream detect.py, subtracted from BGR pixels.
STRIDES = (4, 8, 16, 32, 64, 128)
L2NORM_EPS = 1e-10


class L2Norm(nn.Module):
  """Channel-wise L2 normalisation with a learned per-channel scale (net_s3fd.py `L2Norm`).

  `x / (||x||_2 over channels + 1e-10) * scale`. Param `scale` [C] (upstream `weight`), initialised
  to `init_scale`.
  """

  features: int
  init_scale: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.constant(self.init_scale), (self.features,),
                       jnp.float32)
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + L2NORM_EPS
    return x / norm * scale


class S3FD(nn.Module):
  """The S3FD network (upstream `net_s3fd.s3fd`), NHWC.

  Attributes:
    dtype: computation dtype of the convolutions (float32 for parity; bfloat16 is faster on
      GPU/TPU). L2Norm and the outputs are float32.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """Runs the network.

    Args:
      x: [B, H, W, 3] float, BGR minus `BGR_MEAN` (as upstream feeds it).

    Returns:
      12 float32 maps `[cls1, reg1, ..., cls6, reg6]`: cls_i [B, h_i, w_i, 2] (background,
      face logits; cls1 after the max-out), reg_i [B, h_i, w_i, 4] (dx, dy, dw, dh), for strides
      4, 8, 16, 32, 64, 128 (h_1 = H / 4, ...; fc6's padding of 3 makes the last three levels
      slightly larger than H / stride).
    """

    def conv(name: str, features: int, kernel: int = 3, stride: int = 1, pad: int = 1):
      return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)), dtype=self.dtype, name=name)

    def pool(h):
      return nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")

    h = x.astype(self.dtype)
    feats = {}
    stages = (("conv1", 64, 2), ("conv2", 128, 2), ("conv3", 256, 3), ("conv4", 512, 3),
              ("conv5", 512, 3))
    for stage, features, depth in stages:
      for j in range(1, depth + 1):
        h = nn.relu(conv(f"{stage}_{j}", features)(h))
      feats[stage] = h
      h = pool(h)
    h = nn.relu(conv("fc6", 1024, pad=3)(h))
    h = nn.relu(conv("fc7", 1024, kernel=1, pad=0)(h))
    f_fc7 = h
    h = nn.relu(conv("conv6_1", 256, kernel=1, pad=0)(h))
    h = nn.relu(conv("conv6_2", 512, stride=2)(h))
    f6_2 = h
    h = nn.relu(conv("conv7_1", 128, kernel=1, pad=0)(h))
    h = nn.relu(conv("conv7_2", 256, stride=2)(h))
    f7_2 = h

    f3_3 = L2Norm(256, 10.0, name="conv3_3_norm")(feats["conv3"]).astype(self.dtype)
    f4_3 = L2Norm(512, 8.0, name="conv4_3_norm")(feats["conv4"]).astype(self.dtype)
    f5_3 = L2Norm(512, 5.0, name="conv5_3_norm")(feats["conv5"]).astype(self.dtype)

    outputs = []
    heads = (("conv3_3_norm", f3_3, 4), ("conv4_3_norm", f4_3, 2), ("conv5_3_norm", f5_3, 2),
             ("fc7", f_fc7, 2), ("conv6_2", f6_2, 2), ("conv7_2", f7_2, 2))
    for name, feat, num_cls in heads:
      cls = conv(f"{name}_mbox_conf", num_cls)(feat).astype(jnp.float32)
      reg = conv(f"{name}_mbox_loc", 4)(feat).astype(jnp.float32)
      if num_cls == 4:  # max-out background label
        cls = jnp.concatenate([jnp.max(cls[..., :3], axis=-1, keepdims=True), cls[..., 3:]],
                              axis=-1)
      outputs += [cls, reg]
    return outputs


# ---------------------------------------------------------------------------------------------
# Weights.


def s3fd_upstream_name(path: tuple[str, ...]) -> str:
  """Flax param path -> upstream name: ('conv1_1', 'kernel') -> 'conv1_1.weight'."""
  *modules, leaf = path
  return ".".join([*modules, "weight" if leaf in ("kernel", "scale") else leaf])


def abstract_s3fd_params() -> Any:
  """The S3FD params tree as `jax.ShapeDtypeStruct`s."""
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda: S3FD().init(jax.random.key(0), x))["params"]


def convert_s3fd_state_dict(state_dict: Mapping[str, Any]) -> Any:
  """Maps upstream's S3FD state_dict (PyTorch layouts) onto the Flax params tree.

  Raises:
    ConversionError: listing missing, unexpected and mis-shaped tensors.
  """
  targets = {s3fd_upstream_name(k): (k, v.shape)
             for k, v in traverse_util.flatten_dict(abstract_s3fd_params()).items()}
  problems = []
  missing = sorted(set(targets) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(targets))
  if missing:
    problems.append(f"{len(missing)} missing: {', '.join(missing[:8])}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:8])}")
  flat = {}
  for name, (path, shape) in targets.items():
    if name in state_dict:
      try:
        flat[path] = convert_lib.to_flax(name, convert_lib.as_numpy(state_dict[name]), shape)
      except convert_lib.ConversionError as e:
        problems.append(str(e))
  if problems:
    raise convert_lib.ConversionError("not an S3FD state_dict (upstream net_s3fd.py): "
                                      + "; ".join(problems))
  return traverse_util.unflatten_dict(flat)


def save_s3fd_params(path: str | pathlib.Path, params: Any) -> pathlib.Path:
  """Writes Flax S3FD params to an `.npz` keyed by '/'-joined param paths."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {"/".join(k): np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(params).items()}
  np.savez(path, **flat)
  return path


def load_s3fd_params(path: str | pathlib.Path) -> Any:
  """S3FD params from upstream's `.pth` (needs torch), an `.npz` of the upstream state_dict, or an
  `.npz` written by `save_s3fd_params`.

  Raises:
    ConversionError: missing/unreadable file or tensors that are not S3FD's.
  """
  path = pathlib.Path(path)
  if path.suffix == ".npz" and path.is_file():
    with np.load(path) as z:
      data = {k: z[k] for k in z.files}
    if data and all("/" in k for k in data):
      target = traverse_util.flatten_dict(abstract_s3fd_params())
      got = {tuple(k.split("/")): v for k, v in data.items()}
      bad = sorted("/".join(k) for k in set(got) ^ set(target))
      bad += sorted("/".join(k) for k in set(got) & set(target)
                    if got[k].shape != target[k].shape)
      if bad:
        raise convert_lib.ConversionError(f"{path} is not a converted S3FD: {', '.join(bad[:8])}")
      return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in got.items()})
    return convert_s3fd_state_dict(data)
  return convert_s3fd_state_dict(convert_lib.load_state_dict(path))
