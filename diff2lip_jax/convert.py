r"""Converts upstream Diff2Lip weights (PyTorch state_dict) to a diff2lip-jax checkpoint.

  python -m diff2lip_jax.convert --upstream_checkpoint e7.24.1.3_model260000_paper.pt \
      --output_dir checkpoints/diff2lip_released [--model_flags flags.json] \
      [--s3fd_checkpoint s3fd-619a316812.pth]

Reads a `.pt` (needs torch: `pip install torch`) or an `.npz` holding the same state_dict
names, maps every tensor onto the Flax params of the architecture given by `--model_flags`
(upstream flag names, flat or under "model"; default: the released flags), and writes an Orbax
checkpoint plus `model_flags.json` (see `diff2lip_jax.inference.checkpoints`).

With `--s3fd_checkpoint` the face detector upstream used (S3FD) is stored in the checkpoint too
(`s3fd.npz`, Flax params, loads without torch): `generate` then finds faces as upstream did, in the
crops the released weights were trained on.

The mapping is a rule, not a table: a Flax param path such as
`("input_blocks_1_0", "in_layers_2", "kernel")` is upstream's `input_blocks.1.0.in_layers.2.weight`
(numbered children: `_N` <-> `.N`; `kernel`/`scale` <-> `weight`). Layouts: Conv2d OIHW -> HWIO,
Conv1d OIK -> KIO (or IO for the 1x1 attention convs, which are Dense here), Linear OI -> IO.
Any missing, unexpected or mis-shaped tensor fails the conversion, naming it.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Mapping

from absl import app, flags, logging

from diff2lip_jax.inference import checkpoints
from diff2lip_jax.models import config as model_config
from diff2lip_jax.models import s3fd
from diff2lip_jax.models.torch_io import ConversionError, convert_state_dict, load_state_dict


def convert(upstream_checkpoint: str | pathlib.Path | None, output_dir: str | pathlib.Path,
            model_flags: Mapping[str, Any] | None = None,
            s3fd_checkpoint: str | pathlib.Path | None = None) -> pathlib.Path:
  """Converts `upstream_checkpoint` (and/or upstream's S3FD weights) into `output_dir`.

  Args:
    upstream_checkpoint: the Diff2Lip state_dict (`.pt`/`.pth`/`.npz`); None only adds S3FD to
      an existing checkpoint directory.
    output_dir: the checkpoint directory to write.
    model_flags: upstream flags of the architecture (default: the released ones).
    s3fd_checkpoint: upstream's `s3fd-619a316812.pth` (or its state_dict as `.npz`): stored in
      the checkpoint (`s3fd.npz`), so that `generate` detects faces as upstream did.

  Returns:
    The checkpoint directory.

  Raises:
    ConversionError / CheckpointError: unreadable or mismatched weights, occupied directory.
  """
  out = pathlib.Path(output_dir)
  if upstream_checkpoint is not None:
    model_flags = model_config.full_flags(model_flags or {})
    model = model_config.model_from_flags(model_flags)
    params = convert_state_dict(load_state_dict(upstream_checkpoint),
                                checkpoints.abstract_params(model))
    s3fd_params = s3fd.load_s3fd_params(s3fd_checkpoint) if s3fd_checkpoint else None
    return checkpoints.save(out, params, model_flags, s3fd_params=s3fd_params)
  if s3fd_checkpoint is None:
    raise ConversionError("nothing to convert: pass --upstream_checkpoint and/or "
                          "--s3fd_checkpoint")
  checkpoints.load_flags(out)  # must already be a checkpoint
  s3fd.save_s3fd_params(out / checkpoints.S3FD_FILE, s3fd.load_s3fd_params(s3fd_checkpoint))
  return out.resolve()


_UPSTREAM = flags.DEFINE_string("upstream_checkpoint", None, "upstream .pt/.pth or .npz state_dict")
_OUTPUT = flags.DEFINE_string("output_dir", None, "directory to write the checkpoint to")
_FLAGS_FILE = flags.DEFINE_string(
    "model_flags", None, "JSON of upstream model flags (flat or under 'model'); default: the "
    "released Diff2Lip architecture")
_S3FD = flags.DEFINE_string(
    "s3fd_checkpoint", None, "upstream S3FD weights (s3fd-619a316812.pth, or its state_dict as "
    ".npz): stored in the checkpoint; generate then detects faces with S3FD as upstream. Alone "
    "(without --upstream_checkpoint) it adds S3FD to the existing checkpoint --output_dir")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  try:
    model_flags = json.loads(pathlib.Path(_FLAGS_FILE.value).read_text()) if _FLAGS_FILE.value else None
    out = convert(_UPSTREAM.value, _OUTPUT.value, model_flags, _S3FD.value)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out}" + (" (with S3FD)" if _S3FD.value else ""))


if __name__ == "__main__":
  flags.mark_flags_as_required(["output_dir"])
  app.run(main)
