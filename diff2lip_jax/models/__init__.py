"""Flax linen models: the TFG UNet denoiser and its audio encoder."""

from diff2lip_jax.models.audio_encoder import AudioEncoder
from diff2lip_jax.models.unet import TFGModel
from diff2lip_jax.models.config import model_from_flags, RELEASED_FLAGS

__all__ = ["AudioEncoder", "TFGModel", "model_from_flags", "RELEASED_FLAGS"]
