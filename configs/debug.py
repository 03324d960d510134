"""A tiny CPU config that trains on synthetic clips it generates itself (no downloads):

  python -m launch.train --config configs/debug.py --workdir /tmp/d2l_debug

32x32 crops (resized from the 128x128 data), a 2-level 32-channel UNet with one ResBlock per
level, a smaller audio encoder, no LPIPS/SyncNet weights (those losses off), the GAN on,
2 clips (10 frames) per step.
Measured on a 2-core CPU shared with other jobs: ~1 s per step after ~1 min of start-up
(compiles, dataset); loss_simple averaged over steps 1-10 -> 51-60: 0.61 -> 0.33.
"""

from configs import diff2lip_voxceleb2


def get_config():
  c = diff2lip_voxceleb2.get_config()
  c.model.image_size = 32
  c.model.channel_mult = "1,2"
  c.model.num_channels = 32
  c.model.num_res_blocks = 1
  c.model.num_head_channels = 32
  c.model.attention_resolutions = "16"
  c.model.audio_encoder_kwargs.init_spatial_dim = 32
  c.model.audio_encoder_kwargs.channel_mult = (1, 2)
  c.model.audio_encoder_kwargs.num_res_blocks = 1
  c.dtype = "float32"
  c.data.synthetic = True
  c.data.eval_split = "train"
  c.data.worker_count = 0
  c.batch_size = 2
  c.num_train_steps = 200
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10
  c.optim.ema_decay = 0.99
  c.disc.ndf = 32
  c.disc.n_layers = 2
  c.log_every = 10
  c.sample_every = 100
  c.sample_respacing = "ddim5"
  c.checkpoint_every = 50
  c.eval_every = 50                 # evaluation.during_training at the checkpoints: 2 clips,
  c.eval.num_clips = 2
  c.eval.timestep_respacing = "ddim5"  # 5 DDIM steps
  c.async_checkpointing = False
  return c
