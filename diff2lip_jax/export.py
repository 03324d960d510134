r"""Writes a standalone inference checkpoint from a training workdir, to share or deploy.

  python -m diff2lip_jax.export --workdir runs/vox2 --output_dir checkpoints/vox2_best
  python -m diff2lip_jax.export --workdir runs/vox2 --output_dir D --step 200000 --dtype bfloat16

The EMA params of the checkpoint with the best validation loss (or of `--step`), with the
workdir's `model_flags.json`, in the layout `convert` writes (`inference.checkpoints`): every tool
that takes `--checkpoint` loads it, and gives the same frames as the workdir itself.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from diff2lip_jax.inference import checkpoints

_WORKDIR = flags.DEFINE_string("workdir", None, "a launch.train workdir (or WORKDIR/checkpoints/STEP)")
_OUTPUT = flags.DEFINE_string("output_dir", None, "where to write the checkpoint (new folder)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: best validation loss)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "dtype of the stored params (bfloat16: half the size)")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    out = checkpoints.export(_WORKDIR.value, _OUTPUT.value, step=_STEP.value,
                             dtype=None if _DTYPE.value == "float32" else _DTYPE.value)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out} ({checkpoints.load_model(out).source}, from {_WORKDIR.value})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output_dir"])
  app.run(main)
