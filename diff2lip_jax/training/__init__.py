"""Training: train state, losses, the sharded train step, checkpointing, metrics, the loop."""
