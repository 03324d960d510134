"""Lip-sync experts in Flax linen (NHWC / NDHWC), with converters from their PyTorch weights.

Two networks:

* `Wav2LipSyncNet`: Wav2Lip's lip-sync expert `SyncNet_color` (Rudrabha/Wav2Lip
  `models/syncnet.py`, blocks from `models/conv.py`). Five stacked lower-half face frames
  (96x96 BGR faces in [0, 1], lower half 48x96, frames concatenated on channels -> 15 channels)
  and the matching 16-step mel window (`[80, 16]`, the Wav2Lip/Diff2Lip mel of `audio.py`) each
  become a 512-d L2-normalised embedding; their cosine similarity is the sync probability that
  Wav2Lip trains with BCE and that Diff2Lip's sync loss uses (spec §3.1). Public weights:
  `lipsync_expert.pth`.
* `SyncNetV2`: the SyncNet of Chung & Zisserman (ACCV-W 2016) as released in
  joonson/syncnet_python (`SyncNetModel.py`, class `S`), used for LSE-C / LSE-D (spec §6.1).
  MFCC windows `[13, 20]` (0.2 s) and 5-frame 224x224 BGR clips in [0, 255] each become a
  1024-d feature. Public weights: `syncnet_v2.model`.

Every convolution block is conv -> BatchNorm -> ReLU, so both models carry a `batch_stats`
collection: `apply(variables, ..., train=False)` normalises with the running statistics (as
PyTorch's `eval()`); `apply(variables, ..., train=True, mutable=["batch_stats"])` uses batch
statistics and returns updated running statistics (Flax momentum 0.9 == PyTorch momentum 0.1;
PyTorch updates the running variance with the unbiased batch variance, Flax with the biased
one, a factor n/(n-1) on the running update only). There is no dropout in either network.

Submodule names mirror the PyTorch `state_dict` names with `_N` for `.N` (Sequential indices
included, so `netcnnaud.18.weight` is `netcnnaud_18/kernel`); `convert_torch_variables` maps the
two by rule (`diff2lip_jax.models.torch_io.upstream_name`), for `params` and `batch_stats` alike.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diff2lip_jax.models import torch_io as convert

Dtype = Any
Precision = Any

BN_EPS = 1e-5          # torch.nn.BatchNorm{1,2,3}d default.
BN_MOMENTUM = 0.9      # Flax convention; PyTorch's default momentum 0.1.
L2_EPS = 1e-12         # torch.nn.functional.normalize default.

# ---------------------------------------------------------------------------------------------
# PyTorch state_dict -> Flax variables (params + batch_stats), by rule.

_STATS_LEAF = {"mean": "running_mean", "var": "running_var"}


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """Flax variable path -> PyTorch state_dict name, by this project's rule.

  `params`: `('netcnnaud_18', 'kernel')` -> `netcnnaud.18.weight` (`convert.upstream_name`).
  `batch_stats`: `('netcnnaud_19', 'mean')` -> `netcnnaud.19.running_mean`, `var` ->
  `running_var`.
  """
  if collection == "batch_stats":
    path = (*path[:-1], _STATS_LEAF[path[-1]])
  return convert.upstream_name(path)


def _relayout(name: str, tensor: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  """PyTorch layout -> Flax layout; Conv3d OIDHW -> DHWIO here, the rest by `convert.to_flax`
  (Conv2d OIHW -> HWIO, Linear OI -> IO). Raises `convert.ConversionError` on a shape misfit."""
  t = np.asarray(tensor, np.float32)
  if t.ndim == 5:
    t = t.transpose(2, 3, 4, 1, 0)
  return convert.to_flax(name, t, target_shape)


def convert_torch_variables(state_dict: Mapping[str, Any], abstract_variables: Mapping[str, Any],
                            *, name_fn: Callable[[str, tuple[str, ...]], str] = torch_name,
                            ignore: Callable[[str], bool] = lambda name: False) -> dict:
  """Maps a PyTorch state_dict onto Flax variables with `params` and `batch_stats`.

  Args:
    state_dict: PyTorch names -> arrays (numpy or torch tensors). A leading `module.`
      (DataParallel) is stripped; `*.num_batches_tracked` counters are dropped.
    abstract_variables: the target tree, e.g. `jax.eval_shape(model.init, ...)`, with
      collections `params` and (optionally) `batch_stats`.
    name_fn: (collection, Flax path) -> PyTorch name.
    ignore: PyTorch names that have no counterpart here (e.g. an unused classifier head).

  Returns:
    {"params": ..., "batch_stats": ...}: float32 numpy trees.

  Raises:
    convert.ConversionError: naming every missing, unexpected and mis-shaped tensor.
  """
  sd = {}
  for k, v in state_dict.items():
    k = k[len("module."):] if k.startswith("module.") else k
    if k.endswith("num_batches_tracked") or ignore(k):
      continue
    sd[k] = v
  targets = {}
  for collection, tree in abstract_variables.items():
    for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
      targets[name_fn(collection, path)] = (collection, path, tuple(leaf.shape))
  missing = sorted(set(targets) - set(sd))
  unexpected = sorted(set(sd) - set(targets))
  problems = []
  for what, names in (("missing", missing), ("unexpected", unexpected)):
    if names:
      problems.append(f"{len(names)} {what}: {', '.join(names[:8])}"
                      + (" ..." if len(names) > 8 else ""))
  flat: dict[str, dict] = {c: {} for c in abstract_variables}
  for name, (collection, path, shape) in targets.items():
    if name not in sd:
      continue
    try:
      flat[collection][path] = _relayout(name, convert.as_numpy(sd[name]), shape)
    except convert.ConversionError as e:
      problems.append(str(e))
  if problems:
    raise convert.ConversionError("state_dict does not match the architecture: "
                                  + "; ".join(problems))
  return {c: traverse_util.unflatten_dict(f) for c, f in flat.items()}


def random_variables(abstract_variables: Mapping[str, Any], seed: int = 0) -> dict:
  """Cheap random weights for a tree of shapes, without running the network (for pipeline
  checks): kernels N(0, 2/fan_in) (He; fan_in = all but the last axis), BatchNorm scale 1 and
  running variance 1, biases and running means 0. float32 numpy."""
  rng = np.random.default_rng(seed)
  out = {}
  for collection, tree in abstract_variables.items():
    flat = {}
    for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
      shape = tuple(leaf.shape)
      if path[-1] == "kernel":
        v = rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[:-1]))))
      elif path[-1] in ("scale", "var"):
        v = np.ones(shape)
      else:
        v = np.zeros(shape)
      flat[path] = v.astype(np.float32)
    out[collection] = traverse_util.unflatten_dict(flat)
  return out


# ---------------------------------------------------------------------------------------------
# Shared layers.


def _pads(padding: int | Sequence[int]) -> list[tuple[int, int]]:
  """PyTorch symmetric `padding` (int or per-axis) -> Flax explicit [(lo, hi), ...]."""
  return [(p, p) for p in padding] if isinstance(padding, Sequence) else padding


def _pair(v: int | Sequence[int], n: int = 2) -> tuple[int, ...]:
  return tuple(v) if isinstance(v, Sequence) else (v,) * n


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      dtype=jnp.float32, name=name)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """`x / max(||x||_2, 1e-12)` (torch.nn.functional.normalize), in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), L2_EPS)


class ConvBlock(nn.Module):
  """Wav2Lip `Conv2d` block: conv (bias) -> BatchNorm2d -> (+ input if residual) -> ReLU.

  Input [N, H, W, C_in] -> [N, H', W', features] (PyTorch conv arithmetic, symmetric zero
  padding). Submodules `conv_block_0` (conv) and `conv_block_1` (BatchNorm) as upstream's
  `conv_block` Sequential.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 1
  residual: bool = False
  dtype: Dtype = jnp.float32
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = nn.Conv(self.features, _pair(self.kernel_size), _pair(self.strides),
                padding=_pads(_pair(self.padding)), dtype=self.dtype, precision=self.precision,
                name="conv_block_0")(x)
    y = _batch_norm(train, "conv_block_1")(y).astype(self.dtype)
    if self.residual:
      y = y + x
    return nn.relu(y)


# ---------------------------------------------------------------------------------------------
# Wav2Lip SyncNet_color.

# (out channels, kernel, stride, padding, residual) of each block, in Sequential order.
# Source: Wav2Lip models/syncnet.py (face: 48x96 -> 1x1; audio: 80x16 -> 1x1).
_W2L_FACE = (
    (32, 7, 1, 3, False),
    (64, 5, (1, 2), 1, False), (64, 3, 1, 1, True), (64, 3, 1, 1, True),
    (128, 3, 2, 1, False), (128, 3, 1, 1, True), (128, 3, 1, 1, True), (128, 3, 1, 1, True),
    (256, 3, 2, 1, False), (256, 3, 1, 1, True), (256, 3, 1, 1, True),
    (512, 3, 2, 1, False), (512, 3, 1, 1, True), (512, 3, 1, 1, True),
    (512, 3, 2, 1, False), (512, 3, 1, 0, False), (512, 1, 1, 0, False),
)
_W2L_AUDIO = (
    (32, 3, 1, 1, False), (32, 3, 1, 1, True), (32, 3, 1, 1, True),
    (64, 3, (3, 1), 1, False), (64, 3, 1, 1, True), (64, 3, 1, 1, True),
    (128, 3, 3, 1, False), (128, 3, 1, 1, True), (128, 3, 1, 1, True),
    (256, 3, (3, 2), 1, False), (256, 3, 1, 1, True), (256, 3, 1, 1, True),
    (512, 3, 1, 0, False), (512, 1, 1, 0, False),
)
WAV2LIP_FACE_SHAPE = (48, 96, 15)   # lower half of 5 stacked 96x96 BGR frames.
WAV2LIP_MEL_SHAPE = (80, 16, 1)     # mel bins x mel steps x 1.
WAV2LIP_T = 5                       # frames per clip (`syncnet_T`).


class Wav2LipSyncNet(nn.Module):
  """Wav2Lip's lip-sync expert `SyncNet_color`.

  `__call__(mels, faces, train=False) -> (audio_embedding, face_embedding)`:
    mels: [B, 80, 16, 1] float, the Wav2Lip mel window of the clip (`audio.melspectrogram`
      values in [-4, 4]; PyTorch layout [B, 1, 80, 16]).
    faces: [B, 48, 96, 15] float in [0, 1]: the lower halves of 5 consecutive 96x96 BGR face
      crops, frame-major on channels (`[f0 B, f0 G, f0 R, f1 B, ...]`); see `stack_faces`.
    Returns two [B, 512] float32 L2-normalised (non-negative, after ReLU) embeddings.
  `sync_probability` turns them into Wav2Lip's sync probability.
  """

  dtype: Dtype = jnp.float32
  precision: Precision = jax.lax.Precision.HIGHEST

  def setup(self):
    kw = dict(dtype=self.dtype, precision=self.precision)
    self.face_encoder = [ConvBlock(c, k, s, p, r, **kw) for c, k, s, p, r in _W2L_FACE]
    self.audio_encoder = [ConvBlock(c, k, s, p, r, **kw) for c, k, s, p, r in _W2L_AUDIO]

  def embed_face(self, faces: jax.Array, train: bool = False) -> jax.Array:
    """[B, 48, 96, 15] -> [B, 512] float32, L2-normalised."""
    h = faces.astype(self.dtype)
    for block in self.face_encoder:
      h = block(h, train)
    return l2_normalize(h.reshape(h.shape[0], -1))

  def embed_audio(self, mels: jax.Array, train: bool = False) -> jax.Array:
    """[B, 80, 16, 1] (or [B, 80, 16]) -> [B, 512] float32, L2-normalised."""
    h = mels.astype(self.dtype)
    if h.ndim == 3:
      h = h[..., None]
    for block in self.audio_encoder:
      h = block(h, train)
    return l2_normalize(h.reshape(h.shape[0], -1))

  def __call__(self, mels: jax.Array, faces: jax.Array,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    return self.embed_audio(mels, train), self.embed_face(faces, train)


def stack_faces(frames: jax.Array, rgb: bool = True) -> jax.Array:
  """5 face crops per clip -> Wav2Lip SyncNet face input.

  Args:
    frames: [B, T, H, W, 3] float in [0, 1] (T = 5, H = W = 96 for the released expert).
    rgb: True if the channels are RGB (they are flipped to Wav2Lip's cv2 BGR order).

  Returns:
    [B, H/2, W, 3T]: the lower half (rows H//2..), frames concatenated on channels frame-major
    (Wav2Lip `hq_wav2lip_train.py` / `get_sync_loss` layout).
  """
  x = frames[..., ::-1] if rgb else frames
  x = x[:, :, x.shape[2] // 2:]
  b, t, h, w, c = x.shape
  return jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, h, w, t * c)


def sync_probability(audio_embedding: jax.Array, face_embedding: jax.Array) -> jax.Array:
  """Wav2Lip's sync probability: cosine similarity of the two [B, D] embeddings -> [B] float32.

  The embeddings are non-negative and unit-norm, so the value lies in [0, 1]; Wav2Lip trains
  the expert (and its generator's sync loss) with BCE on it (label 1 = in sync).
  """
  a = l2_normalize(audio_embedding)
  v = l2_normalize(face_embedding)
  return jnp.sum(a * v, axis=-1)


def sync_bce(probability: jax.Array, label: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Per-example binary cross-entropy `-(y log p + (1-y) log(1-p))`, p clipped to [eps, 1-eps]
  (PyTorch's BCELoss clamps the log at -100 instead). [B] float32."""
  p = jnp.clip(probability.astype(jnp.float32), eps, 1.0 - eps)
  y = label.astype(jnp.float32)
  return -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))


def init_wav2lip_syncnet(model: Wav2LipSyncNet, rng: jax.Array) -> dict:
  """Random variables (`params`, `batch_stats`) of `model` (Flax default initialisers)."""
  mels = jnp.zeros((1, *WAV2LIP_MEL_SHAPE), jnp.float32)
  faces = jnp.zeros((1, *WAV2LIP_FACE_SHAPE), jnp.float32)
  return dict(jax.jit(model.init)(rng, mels, faces))


def wav2lip_syncnet_variables(state_dict: Mapping[str, Any],
                              model: Wav2LipSyncNet | None = None) -> dict:
  """Converts a `SyncNet_color` state_dict to `Wav2LipSyncNet` variables (float32 numpy)."""
  model = model or Wav2LipSyncNet()
  abstract = jax.eval_shape(lambda: init_wav2lip_syncnet(model, jax.random.key(0)))
  return convert_torch_variables(state_dict, abstract)


def load_wav2lip_syncnet(path: str | os.PathLike, dtype: Dtype = jnp.float32,
                         ) -> tuple[Wav2LipSyncNet, dict]:
  """(model, variables) from Wav2Lip's `lipsync_expert.pth` (needs torch) or an `.npz` of its
  state_dict. Raises `convert.ConversionError` on a missing file or mismatched weights."""
  model = Wav2LipSyncNet(dtype=dtype)
  return model, wav2lip_syncnet_variables(convert.load_state_dict(path), model)


# ---------------------------------------------------------------------------------------------
# syncnet_python SyncNet (`S`), for LSE-C / LSE-D.

SYNCNET_V2_MFCC_SHAPE = (13, 20, 1)       # 13 cepstra x 20 steps (0.2 s at 100 Hz).
SYNCNET_V2_VIDEO_SHAPE = (5, 224, 224, 3)  # 5 frames, BGR in [0, 255].
SYNCNET_V2_DIM = 1024


class SyncNetV2(nn.Module):
  """syncnet_python's `S` (the `syncnet_v2.model` weights).

  `embed_audio(mfcc)`: [B, 13, 20, 1] MFCC window (PyTorch [B, 1, 13, 20]) -> [B, 1024]
    (`forward_aud`).
  `embed_lips(video)`: [B, 5, 224, 224, 3] BGR frames in [0, 255] (PyTorch [B, 3, 5, 224, 224])
    -> [B, 1024] (`forward_lip`).
  Outputs are float32 and not normalised (LSE uses Euclidean distances between them).

  Layers are keyed by their index in upstream's Sequentials (ReLU and pooling take indices
  too), so `netcnnaud_18` is `netcnnaud.18`.
  """

  dtype: Dtype = jnp.float32
  precision: Precision = jax.lax.Precision.HIGHEST

  def setup(self):
    kw = dict(dtype=self.dtype, precision=self.precision)
    bn = lambda: nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=jnp.float32)
    conv = lambda f, k, s=1, p=0: nn.Conv(f, k, _pair(s, len(k)), padding=_pads(_pair(p, len(k))),
                                          **kw)
    # Source: syncnet_python SyncNetModel.py (netcnnaud: 13x20 -> 1x1; netcnnlip: 5x224x224 ->
    # 1x1x1).
    self.netcnnaud = {
        "0": conv(64, (3, 3), 1, 1), "1": bn(),
        "4": conv(192, (3, 3), 1, 1), "5": bn(),
        "8": conv(384, (3, 3), 1, 1), "9": bn(),
        "11": conv(256, (3, 3), 1, 1), "12": bn(),
        "14": conv(256, (3, 3), 1, 1), "15": bn(),
        "18": conv(512, (5, 4)), "19": bn(),
    }
    self.netcnnlip = {
        "0": conv(96, (5, 7, 7), (1, 2, 2)), "1": bn(),
        "4": conv(256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), "5": bn(),
        "8": conv(256, (1, 3, 3), 1, (0, 1, 1)), "9": bn(),
        "11": conv(256, (1, 3, 3), 1, (0, 1, 1)), "12": bn(),
        "14": conv(256, (1, 3, 3), 1, (0, 1, 1)), "15": bn(),
        "18": conv(512, (1, 6, 6)), "19": bn(),
    }
    dense = lambda f: nn.Dense(f, **kw)
    self.netfcaud = {"0": dense(512), "1": bn(), "3": dense(SYNCNET_V2_DIM)}
    self.netfclip = {"0": dense(512), "1": bn(), "3": dense(SYNCNET_V2_DIM)}

  def _cbr(self, layers: dict, i: int, x: jax.Array, train: bool) -> jax.Array:
    """conv i -> BatchNorm i+1 -> ReLU."""
    y = layers[str(i + 1)](layers[str(i)](x), use_running_average=not train)
    return nn.relu(y).astype(self.dtype)

  def _fc(self, layers: dict, x: jax.Array, train: bool) -> jax.Array:
    h = nn.relu(layers["1"](layers["0"](x), use_running_average=not train)).astype(self.dtype)
    return layers["3"](h).astype(jnp.float32)

  def embed_audio(self, mfcc: jax.Array, train: bool = False) -> jax.Array:
    """[B, 13, 20, 1] (or [B, 13, 20]) MFCC windows -> [B, 1024] float32 (`forward_aud`)."""
    x = mfcc.astype(self.dtype)
    if x.ndim == 3:
      x = x[..., None]
    n = self.netcnnaud
    x = self._cbr(n, 0, x, train)                                   # 13x20 (maxpool 1x1: no-op)
    x = nn.max_pool(self._cbr(n, 4, x, train), (3, 3), (1, 2))      # 11x9
    x = self._cbr(n, 8, x, train)
    x = self._cbr(n, 11, x, train)
    x = nn.max_pool(self._cbr(n, 14, x, train), (3, 3), (2, 2))     # 5x4
    x = self._cbr(n, 18, x, train)                                  # 1x1
    return self._fc(self.netfcaud, x.reshape(x.shape[0], -1), train)

  def embed_lips(self, video: jax.Array, train: bool = False) -> jax.Array:
    """[B, 5, 224, 224, 3] BGR in [0, 255] -> [B, 1024] float32 (`forward_lip`)."""
    x = video.astype(self.dtype)
    n = self.netcnnlip
    x = nn.max_pool(self._cbr(n, 0, x, train), (1, 3, 3), (1, 2, 2))        # 1x54x54
    x = nn.max_pool(self._cbr(n, 4, x, train), (1, 3, 3), (1, 2, 2),
                    padding=((0, 0), (1, 1), (1, 1)))                        # 1x13x13
    x = self._cbr(n, 8, x, train)
    x = self._cbr(n, 11, x, train)
    x = nn.max_pool(self._cbr(n, 14, x, train), (1, 3, 3), (1, 2, 2))       # 1x6x6
    x = self._cbr(n, 18, x, train)                                          # 1x1x1
    return self._fc(self.netfclip, x.reshape(x.shape[0], -1), train)

  def __call__(self, mfcc: jax.Array, video: jax.Array,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    return self.embed_audio(mfcc, train), self.embed_lips(video, train)


def init_syncnet_v2(model: SyncNetV2, rng: jax.Array) -> dict:
  """Random variables (`params`, `batch_stats`) of `model`."""
  mfcc = jnp.zeros((1, *SYNCNET_V2_MFCC_SHAPE), jnp.float32)
  video = jnp.zeros((1, *SYNCNET_V2_VIDEO_SHAPE), jnp.float32)
  return dict(jax.jit(model.init)(rng, mfcc, video))


def syncnet_v2_variables(state_dict: Mapping[str, Any], model: SyncNetV2 | None = None) -> dict:
  """Converts a syncnet_python `S` state_dict to `SyncNetV2` variables (float32 numpy)."""
  model = model or SyncNetV2()
  abstract = jax.eval_shape(lambda: init_syncnet_v2(model, jax.random.key(0)))
  return convert_torch_variables(state_dict, abstract)


def load_syncnet_v2(path: str | os.PathLike, dtype: Dtype = jnp.float32) -> tuple[SyncNetV2, dict]:
  """(model, variables) from syncnet_python's `syncnet_v2.model` (needs torch) or an `.npz` of
  its state_dict. Raises `convert.ConversionError` on a missing file or mismatched weights."""
  model = SyncNetV2(dtype=dtype)
  return model, syncnet_v2_variables(convert.load_state_dict(path), model)


def count_params(variables: Mapping[str, Any], collections: Iterable[str] = ("params",)) -> int:
  """Number of scalars in the given collections of `variables`."""
  return int(sum(np.prod(x.shape) for c in collections
                 for x in jax.tree_util.tree_leaves(variables.get(c, {}))))
