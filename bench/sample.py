"""Benchmarks DDIM sampling (`make_sampler`) and one forward pass of the denoiser.

Figures (issue 4; defaults are the issue's, on the released architecture in bfloat16):
  ddim_sampling  `--timestep_respacing` (ddim25) with `--batch` (32) frames per call: the jitted
                 sampler of `diff2lip_jax.inference.sampler.make_sampler` (one `lax.scan`; audio style
                 and the conditioning part of the first conv computed once per call), frames
                 sharded over all local devices, params replicated.
  forward        one `TFGModel` forward pass on `--forward_batch` (256) frames, jitted, batch
                 sharded over all local devices.

Inputs are random (the figures do not depend on the values) and already on the devices; the
timed calls exclude host transfers. FLOPs: `bench/flops.py` (157.4 GFLOP per frame released).

  python bench/sample.py                       # both figures, released model, bf16
  python bench/sample.py --timestep_respacing ddim10 --figures ddim_sampling
  python bench/sample.py --smoke               # CPU check, seconds
"""

from __future__ import annotations

import argparse

import common  # pylint: disable=g-bad-import-order  (bench/ is sys.path[0])
import jax
import numpy as np

from bench import flops
from diff2lip_jax import sharding
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax.models import model_from_flags
from diff2lip_jax.inference.sampler import make_sampler

FIGURES = ("ddim_sampling", "forward")


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_common_args(p, batch=32)
  p.add_argument("--forward_batch", type=int, default=256, help="frames of the forward figure")
  p.add_argument("--timestep_respacing", default="ddim25",
                 help="sampler steps: ddimK (DDIM, K steps) or guided-diffusion section counts")
  p.add_argument("--use_ddim", type=int, default=1, help="1: DDIM (eta 0); 0: ancestral")
  p.add_argument("--figures", default=",".join(FIGURES), help=f"comma list of {FIGURES}")
  args = p.parse_args(argv)
  return common.apply_smoke(args, batch=2, forward_batch=2, timestep_respacing="ddim2")


def _inputs(rng: np.random.Generator, n: int, size: int, nrefer: int):
  faces = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  refs = rng.uniform(-1, 1, (n, size, size, 3 * max(nrefer, 1))).astype(np.float32)
  mels = rng.uniform(-4, 4, (n, 80, 16)).astype(np.float32)
  return faces, refs, mels


def main(argv=None) -> list[dict]:
  args = parse(argv)
  figures = [f for f in args.figures.split(",") if f]
  unknown = set(figures) - set(FIGURES)
  if unknown:
    raise SystemExit(f"unknown --figures {sorted(unknown)}; known: {FIGURES}")
  model = model_from_flags(common.CONFIGS[args.config], dtype=common.DTYPES[args.dtype])
  mesh = sharding.local_mesh()
  params = jax.device_put(common.random_params(model, args.seed), sharding.replicated(mesh))
  size = model.image_size
  rng = np.random.default_rng(args.seed)
  fwd_flop = flops.model_forward_flops(model)
  rows = []

  if "ddim_sampling" in figures:
    diffusion = make_diffusion(timestep_respacing=args.timestep_respacing)
    steps = int(diffusion.num_timesteps)
    sample = make_sampler(model, diffusion, use_ddim=bool(args.use_ddim), mesh=mesh)
    faces, refs, mels = _inputs(rng, args.batch, size, model.nrefer)
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
    faces, refs, mels = put(faces), put(refs), put(mels)
    noise = jax.device_put(jax.random.normal(jax.random.key(1), (1, size, size, 3)),
                           sharding.replicated(mesh))
    key = None if args.use_ddim else jax.random.key(2)
    jaxpr_flop = flops.count_flops(
        make_sampler(model, diffusion, use_ddim=bool(args.use_ddim)),
        params, faces, refs, mels, noise, key)
    times, compile_s = common.time_calls(lambda: sample(params, faces, refs, mels, noise, key),
                                         args.warmup, args.iters,
                                         common.profile_subdir(args, "ddim_sampling"))
    rows.append(common.emit("ddim_sampling", args, times, compile_s, steps * fwd_flop,
                            jaxpr_flop, timestep_respacing=args.timestep_respacing,
                            sampler_steps=steps, use_ddim=bool(args.use_ddim)))

  if "forward" in figures:
    n = args.forward_batch
    faces, refs, mels = _inputs(rng, n, size, model.nrefer)
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
    x_t, cond, refs, mels = put(faces), put(faces[::-1].copy()), put(refs), put(mels)
    t = put(rng.integers(0, 1000, (n,)).astype(np.int32))
    mask = jax.device_put(np.ones((1, size, size, 1), np.float32), sharding.replicated(mesh))
    apply = lambda p, x, tt, c, m, r, a: model.apply({"params": p}, x, tt, c, m, r, a)
    forward = jax.jit(apply)
    jaxpr_flop = flops.count_flops(apply, params, x_t, t, cond, mask, refs, mels)
    times, compile_s = common.time_calls(lambda: forward(params, x_t, t, cond, mask, refs, mels),
                                         args.warmup, args.iters,
                                         common.profile_subdir(args, "forward"))
    fargs = argparse.Namespace(**{**vars(args), "batch": n})
    rows.append(common.emit("forward", fargs, times, compile_s, fwd_flop, jaxpr_flop))
  return rows


if __name__ == "__main__":
  main()
