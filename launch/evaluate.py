r"""Evaluates Diff2Lip (or any method's videos) on upstream's file lists: FID, SSIM, PSNR, LMD,
LSE-C, LSE-D per setting, as the paper's tables.

  python -m launch.evaluate --config configs/eval_voxceleb2.py \
      --config.checkpoint=checkpoints/diff2lip_released --config.data_root=... \
      --config.filelist_dir=... --config.metrics.syncnet=... --config.metrics.inception=... \
      --workdir runs/eval_vox2
  python -m launch.evaluate --config configs/eval_debug.py --workdir /tmp/eval_debug

Writes WORKDIR/<setting>/{videos,clips,features}/, WORKDIR/summary.json and WORKDIR/summary.md;
rerunning with the same WORKDIR resumes. See `diff2lip_jax.evaluation.job`.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from diff2lip_jax.evaluation import job

_CONFIG = config_flags.DEFINE_config_file("config", None, "evaluation config file "
                                          "(configs/eval_*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (resumable)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().python_handler.stream = sys.stderr
  try:
    summary = job.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  if summary:
    print(job.summary_markdown(summary))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
