r"""The paper's training setup on VoxCeleb2 (Diff2Lip, WACV 2024; spec §3).

  python -m launch.train --config configs/diff2lip_voxceleb2.py --workdir gs://bucket/run1 \
      --config.data.data_dir=gs://bucket/tfds --config.loss.syncnet_weights=lipsync_expert.pth \
      --config.loss.lpips_weights=lpips_alex.pth

Known from upstream: the released architecture, 1000-step linear diffusion, loss weights
λ_simple 1 / λ_sync 0.1 / λ_lpips 0.25 / λ_gan 0.5 (author, diff2lip #41), the released
checkpoint at 260k steps. Not released (spec §3.2), so guided-diffusion's defaults are used:
AdamW lr 1e-4, weight decay 0, EMA 0.9999. The global batch is ours (64 clips = 320 frames).
"""

import ml_collections

from diff2lip_jax.models.config import RELEASED_FLAGS


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(
      {k: v for k, v in RELEASED_FLAGS.items() if k != "audio_encoder_kwargs"})
  c.model.audio_encoder_kwargs = ml_collections.ConfigDict()
  c.dtype = "bfloat16"              # compute; params, optimizer and EMA stay float32
  c.face_hide_percentage = 0.5
  c.init_checkpoint = ""            # a converted checkpoint to fine-tune from

  c.diffusion = ml_collections.ConfigDict(dict(steps=1000, noise_schedule="linear"))

  c.data = ml_collections.ConfigDict(dict(
      dataset_name="diff2lip_voxceleb2", data_dir="", eval_split="val", nframes=5,
      worker_count=8, synthetic=False, synthetic_ids=3, synthetic_clips_per_id=2,
      synthetic_seconds=2.0))
  c.batch_size = 64                 # global, in 5-frame clips
  c.accum_steps = 1
  c.num_train_steps = 260_000

  c.loss = ml_collections.ConfigDict(dict(
      simple=1.0, sync=0.1, lpips=0.25, gan=0.5,
      syncnet_weights="",          # Wav2Lip lipsync_expert.pth (or .npz), or a directory: an
                                   # expert from launch.train_syncnet; empty: sync loss off
      lpips_weights=""))           # lpips.LPIPS(net='alex') state_dict; empty: LPIPS loss off
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=1000, weight_decay=0.0, b1=0.9, b2=0.999, grad_clip=1.0,
      ema_decay=0.9999))
  c.disc = ml_collections.ConfigDict(dict(ndf=64, n_layers=3, lr=1e-4, b1=0.5, b2=0.999))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))

  c.log_every = 100
  c.sample_every = 5000
  c.sample_respacing = "ddim25"
  c.checkpoint_every = 5000
  c.eval_every = 0                  # steps between evaluations on validation clips (0: off)
  c.eval = ml_collections.ConfigDict(dict(   # evaluation.during_training
      num_clips=16,                 # validation clips lip-synced with the EMA params
      timestep_respacing="ddim25",
      data_root="",                 # folder of videos; empty: data_dir/videos (synthetic data)
      filelist="",                  # upstream filelist relative to data_root; empty: first clips
      crop="voxceleb2",             # upstream's fixed VoxCeleb2 crop, or "detect"
      detector="dlib", s3fd_path="",
      syncnet_weights=""))          # syncnet_python weights for LSE-C/LSE-D; empty: skipped
  c.keep_checkpoints = 3
  c.keep_best = 1
  c.async_checkpointing = True
  return c
