"""Pixel scaling, in one place: uint8 pixels <-> the model's [-1, 1] floats.

Upstream (`tfg_data_util.normalise2` and `generate.py`, spec §5): crops are `x / 255 * 2 - 1`
going in; the composited sample comes out as `(clamp((x + 1) / 2, 0, 1) * 255).astype(uint8)`,
i.e. truncated toward zero. Training and our default output round to nearest instead.
Works on numpy and jax arrays alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROUNDING = ("round", "truncate")


def _xp(x: Any):
  return np if isinstance(x, (np.ndarray, np.generic, int, float)) else __import__("jax").numpy


def to_unit(x: Any) -> Any:
  """uint8 [..., 3] in 0..255 -> float32 in [-1, 1] (x / 127.5 - 1)."""
  xp = _xp(x)
  return xp.asarray(x, xp.float32) / 127.5 - 1.0


def to_uint8(x: Any, rounding: str = "round") -> np.ndarray:
  """float in [-1, 1] -> uint8 0..255, clipped.

  Args:
    x: any shape, float.
    rounding: "round" (to nearest) or "truncate" (upstream: `(clamp((x+1)/2, 0, 1) * 255)` cast
      to uint8, in float32).

  Raises:
    ValueError: unknown rounding.
  """
  x = np.asarray(x, np.float32)
  if rounding == "truncate":
    return (np.clip((x + np.float32(1)) / np.float32(2), 0, 1) * np.float32(255)).astype(np.uint8)
  if rounding == "round":
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  raise ValueError(f"rounding must be one of {ROUNDING}, got {rounding!r}")

