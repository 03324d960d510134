"""Model architecture from upstream's flags (`guided-diffusion/guided_diffusion/script_util.py`).

An architecture is described everywhere in this project by a dict of upstream's flag names
(`num_channels`, `attention_resolutions`, ...), as in upstream's scripts and in
`tfg_small_config.json`; the converter stores that dict beside each checkpoint.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax.numpy as jnp

from diff2lip_jax.models.unet import TFGModel

# Flags of the released checkpoint (`scripts/inference.sh`, spec §1.1), with the defaults of
# `tfg_model_and_diffusion_defaults` for the rest.
RELEASED_FLAGS: dict[str, Any] = {
    "image_size": 128,
    "class_cond": False,
    "learn_sigma": True,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "attention_resolutions": "32,16,8",
    "dropout": 0.0,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": False,
    "resblock_updown": True,
    "use_fp16": True,
    "use_ref": True,
    "nframes": 5,
    "nrefer": 1,
    "use_audio": True,
    "audio_encoder_kwargs": {},
    "audio_as_style": True,
    "audio_as_style_encoder_mlp": False,
    "loss_variation": 0,
    # guided-diffusion's flag; Diff2Lip ignores it and fixes the multipliers by image size. Here
    # a non-empty value ("1,2") overrides them (tiny test/debug models only).
    "channel_mult": "",
}

# upstream `create_model`: channel multipliers are fixed by the image size.
_CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}


def full_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
  """Returns `flags` completed with the released values for any flag it does not set.

  Accepts upstream's flag dict flat or nested under a "model" key (as in
  `tfg_small_config.json`).
  """
  if "model" in flags and isinstance(flags["model"], Mapping):
    flags = flags["model"]
  unknown = set(flags) - set(RELEASED_FLAGS)
  if unknown:
    raise ValueError(f"unknown model flags {sorted(unknown)}; known: {sorted(RELEASED_FLAGS)}")
  return {**RELEASED_FLAGS, **flags}


def _hashable_kwargs(kwargs: Mapping[str, Any]) -> Optional[tuple[tuple[str, Any], ...]]:
  """`{"channel_mult": [1, 2]}` -> `(("channel_mult", (1, 2)),)`, None if empty: a Flax module
  attribute must be hashable (jit caches and `generate.get_sampler` key on the module)."""
  freeze = lambda v: tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v
  return tuple(sorted((str(k), freeze(v)) for k, v in dict(kwargs).items())) or None


def model_from_flags(flags: Mapping[str, Any], dtype: Any = jnp.float32,
                     param_dtype: Any = jnp.float32) -> TFGModel:
  """Builds the `TFGModel` that upstream builds from these flags.

  Args:
    flags: upstream flag names (see `RELEASED_FLAGS`), flat or under "model"; missing ones take
      the released values.
    dtype: computation dtype (float32 for parity, bfloat16 for speed).
    param_dtype: parameter dtype.

  Raises:
    ValueError: unknown flags or an image size upstream has no channel multipliers for.
    NotImplementedError: options upstream has but the released model does not use
      (class_cond, audio concatenated in the middle block, the MLP audio encoder).
  """
  f = full_flags(flags)
  size = int(f["image_size"])
  if f["channel_mult"]:
    mult = f["channel_mult"]
    channel_mult = tuple(int(m) for m in (mult.split(",") if isinstance(mult, str) else mult))
  elif size in _CHANNEL_MULT:
    channel_mult = _CHANNEL_MULT[size]
  else:
    raise ValueError(f"image_size {size} unsupported; upstream defines {sorted(_CHANNEL_MULT)} "
                     "(or set channel_mult)")
  if f["class_cond"]:
    raise NotImplementedError("class_cond=True is not used by Diff2Lip")
  if not (f["use_audio"] and f["audio_as_style"]) or f["audio_as_style_encoder_mlp"]:
    raise NotImplementedError("only use_audio=True, audio_as_style=True with the conv audio "
                              "encoder (the released configuration) is implemented")
  if f["predict_xstart"]:
    raise NotImplementedError("only epsilon prediction (predict_xstart=False) is implemented")
  return TFGModel(
      image_size=size,
      model_channels=int(f["num_channels"]),
      out_channels=6 if f["learn_sigma"] else 3,
      num_res_blocks=int(f["num_res_blocks"]),
      attention_ds=tuple(size // int(r) for r in str(f["attention_resolutions"]).split(",") if r),
      channel_mult=channel_mult,
      num_heads=int(f["num_heads"]),
      num_head_channels=int(f["num_head_channels"]),
      num_heads_upsample=int(f["num_heads_upsample"]),
      dropout=float(f["dropout"]),
      use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
      resblock_updown=bool(f["resblock_updown"]),
      nrefer=int(f["nrefer"]) if f["use_ref"] else 0,
      audio=_hashable_kwargs(f["audio_encoder_kwargs"]),
      dtype=dtype,
      param_dtype=param_dtype,
  )
