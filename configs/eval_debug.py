r"""The evaluation job end to end on a tiny synthetic clip set with the small upstream model.

  python -m launch.evaluate --config configs/eval_debug.py --workdir /tmp/eval_debug

Synthesises 2 clips of 16 frames (the example face, synthetic voiced audio) in
WORKDIR/debug_data, generates through the inference core (upstream preset, but dlib faces) with
the small TFGModel of ../shared/upstream (`tfg_small.npz`, converted on the fly; random weights of
that architecture, with a warning, if it is absent) and 2 DDIM steps, and scores with randomly
initialised SyncNet and Inception: it checks the pipeline, the numbers mean nothing. Runs on CPU
in about a minute. `--config.checkpoint=WORKDIR_OF_LAUNCH_TRAIN` scores a model trained with
`configs/debug.py` instead.
"""

import pathlib

from diff2lip_jax.evaluation.job import default_config
from diff2lip_jax.inference.checkpoints import RANDOM_SMALL

UPSTREAM = pathlib.Path(__file__).resolve().parents[2] / "shared" / "upstream"


def get_config():
  c = default_config()
  c.method = "diff2lip-jax (debug: small model, random experts)"
  weights = UPSTREAM / "tfg_small.npz"
  c.checkpoint = str(weights) if weights.is_file() else RANDOM_SMALL
  c.model_flags = str(UPSTREAM / "tfg_small_config.json") if weights.is_file() else ""
  c.debug_clips = 2
  c.debug_frames = 16
  c.host_workers = 1
  c.options.timestep_respacing = "ddim2"
  c.options.detector = "dlib"      # no S3FD weights on CI: the upstream preset's S3FD is replaced
  c.metrics.syncnet = "random"
  c.metrics.inception = "random"
  c.metrics.fid_batch = 8
  c.metrics.lse_batch = 4
  c.metrics.fid_frame_stride = 2
  return c
