"""Benchmarks the train step of `diff2lip_jax.training.step` (one optimizer step per call).

The step is built exactly as `diff2lip_jax.training.train` builds it: `make_train_step` ->
`init_train_state` (jitted with the state's out_shardings) -> `jit_train_step` (NamedSharding
over all local devices, the state donated). Loss: the denoising loss (L_simple + L_vlb) only,
as the upstream anchor's FLOP count (3 x forward per frame); `--lpips` and `--gan` add
randomly initialised LPIPS / PatchGAN terms (their networks' FLOPs are not in
`flop_per_frame`, only in `jaxpr_flop_per_step`). The sync-expert loss needs SyncNet weights
and is left out.

One call trains on `--batch` frames = clips x `--nframes`; the default 64 frames as 64 clips of
one frame (issue 4's "64 frames per step"; use `--nframes 5 --batch 65` for 13 five-frame
clips, needed with `--gan`). The batch is random uint8/float data placed on the devices once;
the timed calls exclude host input. Each timed call ends with `block_until_ready` on the new
state and metrics (no host sync inside the step).

  python bench/train_step.py                   # released model, bf16 compute, fp32 params
  python bench/train_step.py --smoke           # CPU check, seconds
"""

from __future__ import annotations

import argparse
import time

import common  # pylint: disable=g-bad-import-order  (bench/ is sys.path[0])
import jax
import numpy as np

from bench import flops
from diff2lip_jax import sharding
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax.models import model_from_flags
from diff2lip_jax.models.discriminator import PatchDiscriminator
from diff2lip_jax.training.state import make_optimizer
from diff2lip_jax.training.step import (
    LossWeights, init_train_state, jit_train_step, make_train_step)


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_common_args(p, batch=64)
  p.add_argument("--nframes", type=int, default=1, help="frames per clip (batch must divide)")
  p.add_argument("--accum_steps", type=int, default=1, help="micro-batches per step")
  p.add_argument("--lpips", type=float, default=0.0, help="LPIPS weight (random AlexNet)")
  p.add_argument("--gan", type=float, default=0.0, help="GAN weight (random PatchGAN)")
  args = p.parse_args(argv)
  args = common.apply_smoke(args, batch=2, nframes=1)
  if args.batch % args.nframes or (args.batch // args.nframes) % args.accum_steps:
    p.error(f"--batch {args.batch} must be clips x --nframes {args.nframes} with clips "
            f"divisible by --accum_steps {args.accum_steps}")
  return args


def main(argv=None) -> list[dict]:
  args = parse(argv)
  dtype = common.DTYPES[args.dtype]
  model = model_from_flags(common.CONFIGS[args.config], dtype=dtype)
  diffusion = make_diffusion()
  tx = make_optimizer(lr=1e-4, warmup_steps=0, total_steps=0, weight_decay=0.0, grad_clip=1.0)
  lpips_fn = disc = disc_tx = None
  if args.lpips:
    from diff2lip_jax.models.lpips import LPIPS  # pylint: disable=import-outside-toplevel
    lp = LPIPS()
    dummy = np.zeros((1, model.image_size, model.image_size, 3), np.float32)
    lp_params = jax.jit(lp.init)(jax.random.key(3), dummy, dummy)["params"]
    lpips_fn = lambda x, y: lp.apply({"params": lp_params}, x, y)
  if args.gan:
    import optax  # pylint: disable=import-outside-toplevel
    disc, disc_tx = PatchDiscriminator(dtype=dtype), optax.adam(1e-4)
  weights = LossWeights(simple=1.0, sync=0.0, lpips=args.lpips, gan=args.gan)
  step_fn = make_train_step(model=model, diffusion=diffusion, tx=tx, weights=weights,
                            accum_steps=args.accum_steps, disc=disc, disc_tx=disc_tx,
                            lpips_fn=lpips_fn)

  mesh = sharding.make_mesh(devices=jax.local_devices())
  params = common.random_params(model, args.seed)
  init_fn = lambda: init_train_state(jax.random.PRNGKey(args.seed), model, tx, disc, disc_tx,
                                     params, args.nframes)
  abstract = jax.eval_shape(init_fn)
  train_step, state_shardings = jit_train_step(step_fn, abstract, mesh)
  state = jax.jit(init_fn, out_shardings=state_shardings)()

  clips, f, s = args.batch // args.nframes, args.nframes, model.image_size
  rng = np.random.default_rng(args.seed)
  batch = sharding.global_batch({
      "image": rng.integers(0, 256, (clips, f, s, s, 3), dtype=np.uint8),
      "ref_img": rng.integers(0, 256, (clips, f, s, s, 3), dtype=np.uint8),
      "indiv_mels": rng.uniform(-4, 4, (clips, f, 80, 16)).astype(np.float32),
      "mel": rng.uniform(-4, 4, (clips, 80, 16)).astype(np.float32),
  }, mesh)
  # Trace once: the jaxpr gives the FLOP count, its compilation is what the loop calls.
  t0 = time.perf_counter()
  traced = train_step.trace(state, batch)
  jaxpr_flop = flops.jaxpr_flops(traced.jaxpr.jaxpr)
  compiled = traced.lower().compile()
  compile_s = time.perf_counter() - t0

  holder = {"state": state}

  def call():
    holder["state"], metrics = compiled(holder["state"], batch)
    return holder["state"], metrics

  times, _ = common.time_calls(call, args.warmup, args.iters, args.profile_dir)
  loss = float(jax.device_get(call()[1]["loss"]))
  fwd_flop = flops.model_forward_flops(model)
  return [common.emit("train_step", args, times, compile_s, 3 * fwd_flop, jaxpr_flop,
                      nframes=args.nframes, accum_steps=args.accum_steps,
                      losses=["simple", "vb"] + (["lpips"] if args.lpips else [])
                      + (["gan"] if args.gan else []), loss=loss)]


if __name__ == "__main__":
  main()
