r"""Converts upstream Diff2Lip weights (PyTorch state_dict) to a diff2lip-jax checkpoint.

  python -m diff2lip_jax.convert --upstream_checkpoint e7.24.1.3_model260000_paper.pt \
      --output_dir checkpoints/diff2lip_released [--model_flags flags.json]

Reads a `.pt` (needs torch: `pip install torch`) or an `.npz` holding the same state_dict
names, maps every tensor onto the Flax params of the architecture given by `--model_flags`
(upstream flag names, flat or under "model"; default: the released flags), and writes an Orbax
checkpoint plus `model_flags.json` (see `diff2lip_jax.checkpoint`).

The mapping is a rule, not a table: a Flax param path such as
`("input_blocks_1_0", "in_layers_2", "kernel")` is upstream's `input_blocks.1.0.in_layers.2.weight`
(numbered children: `_N` <-> `.N`; `kernel`/`scale` <-> `weight`). Layouts: Conv2d OIHW -> HWIO,
Conv1d OIK -> KIO (or IO for the 1x1 attention convs, which are Dense here), Linear OI -> IO.
Any missing, unexpected or mis-shaped tensor fails the conversion, naming it.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any, Mapping

import numpy as np
from absl import app, flags, logging
from flax import traverse_util

from diff2lip_jax import checkpoint
from diff2lip_jax.models import config as model_config


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
    abstract_params: the target tree (e.g. `checkpoint.abstract_params(model)`).
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


def convert(upstream_checkpoint: str | pathlib.Path, output_dir: str | pathlib.Path,
            model_flags: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Converts `upstream_checkpoint` and writes a checkpoint to `output_dir`; returns its path."""
  model_flags = model_config.full_flags(model_flags or {})
  model = model_config.model_from_flags(model_flags)
  params = convert_state_dict(load_state_dict(upstream_checkpoint),
                              checkpoint.abstract_params(model))
  return checkpoint.save(output_dir, params, model_flags)


_UPSTREAM = flags.DEFINE_string("upstream_checkpoint", None, "upstream .pt/.pth or .npz state_dict")
_OUTPUT = flags.DEFINE_string("output_dir", None, "directory to write the checkpoint to")
_FLAGS_FILE = flags.DEFINE_string(
    "model_flags", None, "JSON of upstream model flags (flat or under 'model'); default: the "
    "released Diff2Lip architecture")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  try:
    model_flags = json.loads(pathlib.Path(_FLAGS_FILE.value).read_text()) if _FLAGS_FILE.value else None
    out = convert(_UPSTREAM.value, _OUTPUT.value, model_flags)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["upstream_checkpoint", "output_dir"])
  app.run(main)
