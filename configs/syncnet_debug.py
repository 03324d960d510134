"""A tiny CPU run of the SyncNet expert on synthetic clips it generates itself (no downloads):

  python -m launch.train_syncnet --config configs/syncnet_debug.py --workdir /tmp/syncnet_debug

4 synthetic speakers x 2 clips of 3 s (`data.synthetic`, the mouth opening follows the audio
envelope); the 4th speaker is the val split. The full-size expert, batch 8.
"""

from configs import syncnet


def get_config():
  c = syncnet.get_config()
  c.data.synthetic = True
  c.data.synthetic_ids = 4
  c.data.synthetic_clips_per_id = 2
  c.data.synthetic_seconds = 3.0
  c.data.synthetic_val_ids = 1
  c.data.worker_count = 0
  c.batch_size = 8
  c.eval_batch_size = 8
  c.eval_batches = 4
  c.num_train_steps = 300
  c.optim.lr = 3e-4
  c.log_every = 10
  c.eval_every = 50
  c.checkpoint_every = 100
  c.async_checkpointing = False
  return c
