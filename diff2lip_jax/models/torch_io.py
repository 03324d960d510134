"""Reading PyTorch weights and re-laying them out for Flax, for every converted network.

One rule maps names (`upstream_name`): a Flax param path such as
`("input_blocks_1_0", "in_layers_2", "kernel")` is upstream's `input_blocks.1.0.in_layers.2.weight`
(numbered children `_N` <-> `.N`; `kernel`/`scale` <-> `weight`). Layouts (`to_flax`): Conv2d
OIHW -> HWIO, Conv1d OIK -> KIO (or IO for 1x1 convs that are Dense here), Linear OI -> IO.
Any missing, unexpected or mis-shaped tensor fails the conversion, naming it.

Used by the Diff2Lip UNet converter (`diff2lip_jax.convert`), SyncNet, Inception, LPIPS and S3FD.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util


class ConversionError(ValueError):
  """The upstream state_dict does not fit the architecture."""


def upstream_name(path: tuple[str, ...]) -> str:
  """Flax param path -> upstream state_dict name, e.g. ('out_2', 'kernel') -> 'out.2.weight'."""
  *modules, leaf = path
  leaf = "weight" if leaf in ("kernel", "scale") else leaf
  return ".".join([re.sub(r"_(\d+)", r".\1", m) for m in modules] + [leaf])


def to_flax(name: str, tensor: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  """Re-lays one upstream tensor into the Flax layout of `target_shape`."""
  t = np.asarray(tensor)
  if t.ndim == 4:                      # Conv2d [O, I, kh, kw] -> [kh, kw, I, O]
    t = t.transpose(2, 3, 1, 0)
  elif t.ndim == 3 and len(target_shape) == 2:  # 1x1 Conv1d [O, I, 1] -> Dense [I, O]
    t = t[..., 0].T if t.shape[-1] == 1 else t
  elif t.ndim == 3:                    # Conv1d [O, I, k] -> [k, I, O]
    t = t.transpose(2, 1, 0)
  elif t.ndim == 2:                    # Linear [O, I] -> [I, O]
    t = t.T
  if t.shape != tuple(target_shape):
    raise ConversionError(f"{name}: upstream shape {tuple(tensor.shape)} does not fit the "
                          f"architecture (expects {tuple(target_shape)} in Flax layout); check "
                          "--model_flags")
  return np.ascontiguousarray(t, dtype=np.float32)


def convert_state_dict(state_dict: Mapping[str, Any], abstract_params: Any,
                       ignore: tuple[str, ...] = ()) -> Any:
  """Maps an upstream state_dict onto a Flax params tree.

  Args:
    state_dict: upstream names -> arrays (numpy or torch tensors, any float dtype).
    abstract_params: the target tree (e.g. `checkpoints.abstract_params(model)`).
    ignore: upstream names that carry no parameters here (constant buffers); dropped.

  Returns:
    The params tree, float32 numpy arrays.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped name.
  """
  targets = {upstream_name(k): (k, v.shape)
             for k, v in traverse_util.flatten_dict(abstract_params).items()}
  missing = sorted(set(targets) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(targets) - set(ignore))
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing: {', '.join(missing[:8])}"
                    + (" ..." if len(missing) > 8 else ""))
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:8])}"
                    + (" ..." if len(unexpected) > 8 else ""))
  flat = {}
  for name, (path, shape) in targets.items():
    if name in state_dict:
      try:
        flat[path] = to_flax(name, as_numpy(state_dict[name]), shape)
      except ConversionError as e:
        problems.append(str(e))
  if problems:
    raise ConversionError("state_dict does not match the architecture: " + "; ".join(problems))
  return traverse_util.unflatten_dict(flat)


def as_numpy(x: Any) -> np.ndarray:
  """A torch.Tensor (any device/dtype) or array-like -> float32 numpy array, same shape."""
  if hasattr(x, "detach"):  # torch.Tensor
    return x.detach().cpu().float().numpy()
  return np.asarray(x, dtype=np.float32)


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads PyTorch weights as {state_dict name: float32 array}.

  `.npz` (names -> arrays) is read with numpy; any other file with `torch.load` (`.pt`, `.pth`,
  syncnet_python's `.model`, ...); a `{"state_dict": ...}` training checkpoint (as Wav2Lip's
  `lipsync_expert.pth`) is unwrapped.

  Raises:
    ConversionError: missing file, torch not installed for a torch file, not a state_dict.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f"weights file {path} not found")
  if path.suffix == ".npz":
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError(f"reading {path} needs torch: `pip install torch` (the CPU build is "
                          "enough), or save the state_dict as .npz") from None
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"{path} is not a torch.save file ({e})") from None
  if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
    sd = sd["state_dict"]
  if not isinstance(sd, Mapping):
    raise ConversionError(f"{path} holds a {type(sd).__name__}, not a state_dict")
  return {k: as_numpy(v) for k, v in sd.items()}
