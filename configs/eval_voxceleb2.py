r"""Evaluation on VoxCeleb2 test with upstream's 5k reconstruction and cross lists (spec §4.1).

  python -m launch.evaluate --config configs/eval_voxceleb2.py \
      --config.checkpoint=checkpoints/diff2lip_released \
      --config.data_root=/data/vox2_test_mp4/mp4 \
      --config.filelist_dir=/path/to/diff2lip/dataset/filelists \
      --config.metrics.syncnet=weights/syncnet_v2.model \
      --config.metrics.inception=weights/pt_inception-2015-12-05-6726825d.pth \
      --workdir runs/eval_vox2

VoxCeleb2 clips are 224x224 face-centred videos at 25 fps; faces are cropped with upstream's
fixed VoxCeleb2 crop (`--is_voxceleb2=True`, the default of its generate.py), DDIM 25 steps.
"""

from diff2lip_jax.evaluation.job import default_config


def get_config():
  c = default_config()
  c.filelists.reconstruction = "voxceleb2_test_n_5000_reconstruction_5k.txt"  # 4,911 pairs
  c.filelists.cross = "voxceleb2_test_n_5000_seed_797_cross_5K.txt"            # 4,970 pairs
  c.options.crop = "voxceleb2"
  return c
