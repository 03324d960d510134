"""Benchmarks DDIM sampling (`make_sampler`), the samplers by name, and one forward pass.

Figures (issue 4; defaults are the issue's, on the released architecture in bfloat16):
  ddim_sampling  `--timestep_respacing` (ddim25) with `--batch` (32) frames per call: the jitted
                 sampler of `diff2lip_jax.inference.sampler.make_sampler` (one `lax.scan`; audio style
                 and the conditioning part of the first conv computed once per call), frames
                 sharded over all local devices, params replicated.
  forward        one `TFGModel` forward pass on `--forward_batch` (256) frames, jitted, batch
                 sharded over all local devices.
  samplers       (only when asked: `--figures samplers`) one line per `--samplers` x
                 `--sampler_steps` through `inference.sampler.build_sampler` (ddim: upstream's
                 "ddimN" grid, or "N" where no stride gives N; dpmpp_2m, unipc: `steps=N`), with
                 the quality proxy `rmse_to_ref` / `psnr_to_ref_db`: the distance, on the
                 regenerated lower half of the face crops in [-1, 1], to the output of
                 `--quality_ref` (ddim250) from the same noise and inputs (clip_denoised as
                 deployed). Meaningful only with trained weights (`--checkpoint`) and real crops
                 (`--faces`, an npz with `crops` [N,S,S,3] uint8 and `indiv_mels` [N,80,16],
                 e.g. ../shared/upstream/e2e_small.npz).

Inputs are random (the figures do not depend on the values) and already on the devices; the
timed calls exclude host transfers. FLOPs: `bench/flops.py` (157.4 GFLOP per frame released).

  python bench/sample.py                       # both figures, released model, bf16
  python bench/sample.py --timestep_respacing ddim10 --figures ddim_sampling
  python bench/sample.py --smoke               # CPU check, seconds
  python bench/sample.py --figures samplers --checkpoint CKPT --faces crops.npz
"""

from __future__ import annotations

import argparse
import pathlib

import common  # pylint: disable=g-bad-import-order  (bench/ is sys.path[0])
import jax
import numpy as np

from bench import flops
from diff2lip_jax import sharding
from diff2lip_jax.diffusion import make_diffusion, space_timesteps
from diff2lip_jax.inference.sampler import build_sampler, make_sampler

FIGURES = ("ddim_sampling", "forward")   # the default set
OPTIONAL_FIGURES = ("samplers",)


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_common_args(p, batch=32)
  p.add_argument("--forward_batch", type=int, default=256, help="frames of the forward figure")
  p.add_argument("--timestep_respacing", default="ddim25",
                 help="sampler steps: ddimK (DDIM, K steps) or guided-diffusion section counts")
  p.add_argument("--use_ddim", type=int, default=1, help="1: DDIM (eta 0); 0: ancestral")
  p.add_argument("--figures", default=",".join(FIGURES),
                 help=f"comma list of {FIGURES + OPTIONAL_FIGURES}")
  p.add_argument("--samplers", default="ddim,dpmpp_2m,unipc", help="samplers figure: names")
  p.add_argument("--sampler_steps", default="5,10,15,20,25", help="samplers figure: step counts")
  p.add_argument("--quality_ref", default="ddim250",
                 help="samplers figure: DDIM respacing of the quality reference ('' = none)")
  p.add_argument("--faces", default="", help="samplers figure: npz of crops and indiv_mels")
  args = p.parse_args(argv)
  return common.apply_smoke(args, batch=2, forward_batch=2, timestep_respacing="ddim2",
                            sampler_steps="2,3", quality_ref="ddim10")


def _inputs(rng: np.random.Generator, n: int, size: int, nrefer: int):
  faces = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  refs = rng.uniform(-1, 1, (n, size, size, 3 * max(nrefer, 1))).astype(np.float32)
  mels = rng.uniform(-4, 4, (n, 80, 16)).astype(np.float32)
  return faces, refs, mels


def _face_inputs(path: str, n: int, nrefer: int):
  """(faces, refs, mels) of the first `n` frames of an npz (`crops` uint8, `indiv_mels`);
  each frame is its own reference (upstream's cross mode); tiled when the file is short."""
  with np.load(path) as z:
    take = np.arange(n) % len(z["crops"])
    faces = z["crops"][take].astype(np.float32) / 127.5 - 1.0
    mels = z["indiv_mels"][take].astype(np.float32)
  return faces, np.concatenate([faces] * max(nrefer, 1), axis=-1), mels


def _ddim_respacing(steps: int) -> str:
  """Upstream's "ddimN" grid where a stride gives exactly N steps, else the "N" sections."""
  try:
    space_timesteps(1000, f"ddim{steps}")
    return f"ddim{steps}"
  except ValueError:
    return str(steps)


def samplers_figure(args, model, params, mesh, fwd_flop: float) -> list[dict]:
  """One JSON line per sampler x steps: frames/s and the distance to `--quality_ref`."""
  size = model.image_size
  if args.faces:
    faces, refs, mels = _face_inputs(args.faces, args.batch, model.nrefer)
  else:
    faces, refs, mels = _inputs(np.random.default_rng(args.seed), args.batch, size, model.nrefer)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
  faces, refs, mels = put(faces), put(refs), put(mels)
  noise = jax.device_put(jax.random.normal(jax.random.key(1), (1, size, size, 3)),
                         sharding.replicated(mesh))
  lower = slice(size // 2, None)  # face_hide_percentage 0.5: the regenerated rows
  ref = None
  if args.quality_ref:
    ref_sample = build_sampler(model, sampler="ddim", timestep_respacing=args.quality_ref,
                               mesh=mesh)
    ref = np.asarray(ref_sample(params, faces, refs, mels, noise), np.float64)[:, lower]
  rows = []
  for name in [s for s in args.samplers.split(",") if s]:
    for steps in [int(k) for k in args.sampler_steps.split(",") if k]:
      respacing = _ddim_respacing(steps)
      sample = build_sampler(model, sampler=name, steps=steps, timestep_respacing=respacing,
                             mesh=mesh)
      run = lambda: sample(params, faces, refs, mels, noise)
      times, compile_s = common.time_calls(run, args.warmup, args.iters,
                                           common.profile_subdir(args, f"{name}{steps}"))
      extra = {"sampler": name, "sampler_steps": steps,
               "timestep_respacing": respacing if name == "ddim" else None,
               "quality_ref": args.quality_ref or None, "faces": args.faces or "random",
               "checkpoint": args.checkpoint or "random"}
      if ref is not None:
        rmse = float(np.sqrt(np.mean((np.asarray(run(), np.float64)[:, lower] - ref) ** 2)))
        extra.update(rmse_to_ref=rmse, psnr_to_ref_db=float(20 * np.log10(2.0 / max(rmse, 1e-12))))
      rows.append(common.emit("samplers", args, times, compile_s, steps * fwd_flop, None,
                              **extra))
  return rows


def main(argv=None) -> list[dict]:
  args = parse(argv)
  figures = [f for f in args.figures.split(",") if f]
  unknown = set(figures) - set(FIGURES + OPTIONAL_FIGURES)
  if unknown:
    raise SystemExit(f"unknown --figures {sorted(unknown)}; known: {FIGURES + OPTIONAL_FIGURES}")
  model, host_params = common.model_and_params(args)
  if args.checkpoint:
    args.config = pathlib.Path(args.checkpoint).name
  mesh = sharding.local_mesh()
  params = jax.device_put(host_params, sharding.replicated(mesh))
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

  if "samplers" in figures:
    rows += samplers_figure(args, model, params, mesh, fwd_flop)
  return rows


if __name__ == "__main__":
  main()
