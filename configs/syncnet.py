r"""Training the Wav2Lip lip-sync expert (`SyncNet_color`) on our prepared data.

  python -m launch.train_syncnet --config configs/syncnet.py --workdir DIR \
      --config.data.data_dir=DIR/tfds

then train Diff2Lip with it: `--config.loss.syncnet_weights=DIR` (a directory is read as an
expert trained here, a file as Wav2Lip's `lipsync_expert.pth`; `training.expert.load_expert`).

Wav2Lip `color_syncnet_train.py` / `hparams.py`: 5 frames, lower half of the face at 48x96,
16-step mel window, BCE on the cosine similarity, Adam lr 1e-4, batch 64, evaluation and
checkpoints every 3000 steps. Wav2Lip stops by hand once the val loss is ~0.25 (its README);
`num_train_steps` is an upper bound, pick the checkpoint by `val_loss` / `val_accuracy` in
`DIR/metrics.jsonl` (the best one by val loss is kept, `keep_best`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dtype = "float32"               # compute dtype; params, BatchNorm and optimizer are float32
  c.precision = "default"           # jax.lax.Precision of convs ("highest": exact fp32 on GPU)

  c.data = ml_collections.ConfigDict(dict(
      dataset_name="diff2lip_voxceleb2", data_dir="", eval_split="val", worker_count=8,
      random_flip=False, synthetic=False, synthetic_ids=3, synthetic_clips_per_id=2,
      synthetic_seconds=2.0, synthetic_val_ids=0))
  c.batch_size = 64                 # global, in (5-frame, audio window) pairs
  c.eval_batch_size = 64
  c.eval_batches = 50               # fixed validation pairs: eval_batches x eval_batch_size
  c.num_train_steps = 300_000

  c.optim = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.999))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))

  c.log_every = 100
  c.eval_every = 3000
  c.checkpoint_every = 3000
  c.keep_checkpoints = 3
  c.keep_best = 1
  c.async_checkpointing = True
  return c
