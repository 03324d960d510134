"""Shared pieces of the benchmarks: model configs, timing, device facts, the JSON line.

Every bench prints one JSON object per figure on its own line (and nothing else on stdout), so
`python bench/sample.py | tee -a results.jsonl` collects them. Keys (see `emit`):

  figure              what was timed ("train_step", "ddim_sampling", "forward", "lipsync")
  frames_per_s        frames processed per second = batch / step_time_median_s
  step_time_median_s  median wall time of one call over `timed_runs` calls, each ended by
                      `jax.block_until_ready`, after `warmup_runs` untimed calls (compilation)
  step_time_min_s, step_time_max_s, timed_runs, warmup_runs
  flop_per_frame      analytic FLOPs per frame in the upstream convention (`bench/flops.py`):
                      forward = F_fwd, train step = 3 F_fwd, DDIM-k = k F_fwd
  tflop_per_s         achieved = frames_per_s * flop_per_frame / 1e12
  jaxpr_flop_per_step matmul + conv FLOPs of the timed jitted function itself, counted from its
                      jaxpr (includes the backward pass, the audio encoder run once per batch...)
  peak_memory_bytes   max over local devices of `memory_stats()["peak_bytes_in_use"]` (the
                      process's peak since start); null where the backend has no memory stats
                      (CPU)
  device, platform, device_count, jax_version, config, batch, dtype, compile_s
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` from anywhere, without `pip install -e .`
  sys.path.insert(0, str(REPO))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from diff2lip_jax.models import RELEASED_FLAGS  # pylint: disable=wrong-import-position

# Model configs by name. "released" is the checkpoint's architecture (101.7 M params,
# 157.4 GFLOP per frame); "small" is the upstream reference model of the parity tests
# (`../shared/upstream/tfg_small_config.json`: 128², 32 channels, 1 ResBlock per level);
# "tiny" is a 16² model with two levels and a one-level audio encoder for the CPU smoke run
# (seconds; its figures mean nothing).
CONFIGS: dict[str, dict[str, Any]] = {
    "released": dict(RELEASED_FLAGS),
    "small": {**RELEASED_FLAGS, "num_channels": 32, "num_res_blocks": 1, "num_head_channels": 32,
              "use_fp16": False},
    "tiny": {**RELEASED_FLAGS, "image_size": 16, "num_channels": 32, "num_res_blocks": 1,
             "num_head_channels": 32, "attention_resolutions": "8", "channel_mult": "1,2",
             "audio_encoder_kwargs": {"channel_mult": (1,), "num_res_blocks": 1},
             "use_fp16": False},
}

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def add_common_args(parser: argparse.ArgumentParser, *, batch: int, iters: int = 10,
                    warmup: int = 2) -> None:
  """Flags every bench takes; `--smoke` turns them into a seconds-long CPU check."""
  parser.add_argument("--config", choices=sorted(CONFIGS), default="released",
                      help="model architecture (default: the released checkpoint's)")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                      help="computation dtype; params stay float32")
  parser.add_argument("--batch", type=int, default=batch, help="frames per call")
  parser.add_argument("--iters", type=int, default=iters, help="timed calls (>= 10 for figures)")
  parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls first")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoint", default="",
                      help="time this model (any name `generate --checkpoint` takes) instead "
                           "of --config with random weights")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny config, tiny batch, few runs: checks that the bench runs (CI)")
  parser.add_argument("--attention", choices=("default", "xla", "cudnn"), default="default",
                      help="jax.nn.dot_product_attention implementation (sets "
                           "DIFF2LIP_ATTENTION; cudnn: GPU, bf16 only)")
  parser.add_argument("--profile_dir", default="",
                      help="after timing, trace 3 more calls with jax.profiler into this folder")


def apply_smoke(args: argparse.Namespace, **overrides: Any) -> argparse.Namespace:
  """With `--smoke`: the tiny config, float32, 1 warm-up + 3 timed runs, then `overrides`.
  Also applies `--attention` (before any tracing)."""
  import os  # pylint: disable=import-outside-toplevel
  if args.attention != "default":
    os.environ["DIFF2LIP_ATTENTION"] = args.attention
  if args.smoke:
    args.config, args.dtype, args.iters, args.warmup = "tiny", "float32", 3, 1
    for k, v in overrides.items():
      setattr(args, k, v)
  return args


def model_and_params(args: argparse.Namespace) -> tuple[Any, Any]:
  """(model, params) to time: `--checkpoint` loaded as every tool loads a model, else the
  `--config` architecture with `random_params`."""
  from diff2lip_jax.inference import checkpoints  # pylint: disable=import-outside-toplevel
  from diff2lip_jax.models import model_from_flags  # pylint: disable=import-outside-toplevel
  if args.checkpoint:
    loaded = checkpoints.load_model(args.checkpoint, DTYPES[args.dtype])
    return loaded.model, loaded.params
  model = model_from_flags(CONFIGS[args.config], dtype=DTYPES[args.dtype])
  return model, random_params(model, args.seed)


def random_params(model: Any, seed: int = 0) -> Any:
  """Params for timing, drawn on the host without compiling `model.init` (which takes a minute
  on a loaded CPU even for the tiny config): kernels ~ N(0, 1/fan_in), norm scales 1, biases
  0. Values do not change the timings; they keep activations finite.

  Returns:
    A float32 numpy params tree with `checkpoints.abstract_params(model)`'s structure.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  from diff2lip_jax.inference import checkpoints  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(leaf.shape)
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      return (rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)).astype(np.float32)
    if name == "scale":
      return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, checkpoints.abstract_params(model))


def profile_subdir(args: argparse.Namespace, figure: str) -> str:
  """`--profile_dir/figure`, or "" without `--profile_dir`."""
  return str(pathlib.Path(args.profile_dir) / figure) if args.profile_dir else ""


def time_calls(fn: Callable[[], Any], warmup: int, iters: int,
               profile_dir: str = "") -> tuple[list[float], float]:
  """Runs `fn` `warmup` times untimed, then `iters` times timed; each ends with
  `jax.block_until_ready` on its result. With `profile_dir`, 3 more (untimed) calls run under
  `jax.profiler.trace(profile_dir)` (TensorBoard / Perfetto trace; a summary of it is what the
  issue asks for where a target is missed).

  Returns:
    (wall seconds of each timed call, seconds of the first warm-up call, which includes
    compilation; 0 without warm-up).
  """
  compile_s = 0.0
  for i in range(warmup):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    if i == 0:
      compile_s = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for _ in range(3):
        jax.block_until_ready(fn())
  return times, compile_s


def peak_memory_bytes() -> Optional[int]:
  """Max over local devices of the allocator's peak bytes in use, or None (no stats: CPU)."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def emit(figure: str, args: argparse.Namespace, times: list[float], compile_s: float,
         flop_per_frame: float, jaxpr_flop_per_step: Optional[float] = None,
         **extra: Any) -> dict[str, Any]:
  """Prints and returns the figure's JSON line (keys in the module docstring)."""
  med = statistics.median(times)
  fps = args.batch / med
  dev = jax.local_devices()[0]
  row = {
      "figure": figure,
      "frames_per_s": round(fps, 3),
      "step_time_median_s": med,
      "step_time_min_s": min(times),
      "step_time_max_s": max(times),
      "timed_runs": len(times),
      "warmup_runs": args.warmup,
      "compile_s": round(compile_s, 3),
      "flop_per_frame": float(flop_per_frame),
      "tflop_per_s": round(fps * flop_per_frame / 1e12, 4),
      "jaxpr_flop_per_step": None if jaxpr_flop_per_step is None else float(jaxpr_flop_per_step),
      "peak_memory_bytes": peak_memory_bytes(),
      "device": dev.device_kind,
      "platform": dev.platform,
      "device_count": jax.local_device_count(),
      "jax_version": jax.__version__,
      "config": args.config,
      "batch": args.batch,
      "dtype": args.dtype,
      "attention": args.attention,
      **extra,
  }
  print(json.dumps(row), flush=True)
  return row
