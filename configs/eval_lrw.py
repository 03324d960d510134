r"""Evaluation on LRW test with upstream's reconstruction and cross lists (spec §4.1).

  python -m launch.evaluate --config configs/eval_lrw.py \
      --config.checkpoint=checkpoints/diff2lip_released \
      --config.data_root=/data/lrw/lipread_mp4 \
      --config.filelist_dir=/path/to/diff2lip/dataset/filelists \
      --config.metrics.syncnet=weights/syncnet_v2.model \
      --config.metrics.inception=weights/pt_inception-2015-12-05-6726825d.pth \
      --workdir runs/eval_lrw

LRW clips are 256x256, 29 frames at 25 fps (paths `WORD/test/WORD_00001`); faces are found
per frame (upstream's generic branch, `--is_voxceleb2=False`) with S3FD, as upstream: the
checkpoint must hold it (`convert --s3fd_checkpoint`) or pass --config.options.s3fd_path.
"""

from diff2lip_jax.evaluation.job import default_config


def get_config():
  c = default_config()
  c.filelists.reconstruction = "lrw_reconstruction_relative_path.txt"  # 25,000 pairs
  c.filelists.cross = "lrw_cross_relative_path.txt"                    # 28,000 pairs
  c.options.crop = "detect"
  return c
