"""Runs one train step of the debug config's model (32x32, 2 levels) on a given mesh and prints
the results as JSON (used by tests/test_train.py in subprocesses, since the CPU device count is
fixed at start-up): `python tests/train_check.py 2x4 1` (mesh data x fsdp, accumulation steps)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import debug
from diff2lip_jax import sharding
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax.models import model_from_flags
from diff2lip_jax.models.discriminator import PatchDiscriminator
from diff2lip_jax.training.state import make_optimizer
from diff2lip_jax.training.step import (LossWeights, init_train_state, jit_train_step,
                                        make_train_step, split_metrics)


def batch(b=8, s=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 255, (b, 5, s, s, 3), dtype=np.uint8),
          "ref_img": rng.integers(0, 255, (b, 5, s, s, 3), dtype=np.uint8),
          "indiv_mels": rng.uniform(-4, 4, (b, 5, 80, 16)).astype(np.float32),
          "mel": rng.uniform(-4, 4, (b, 80, 16)).astype(np.float32)}


def main(mesh_shape, accum):
  data, fsdp = mesh_shape
  mesh = sharding.make_mesh(data, fsdp, 1)
  model = model_from_flags(debug.get_config().model.to_dict())
  disc = PatchDiscriminator(ndf=32, n_layers=2)
  tx, dtx = make_optimizer(1e-3, 0, 10, 0.0, 1.0), optax.adam(1e-3)
  step_fn = make_train_step(model=model, diffusion=make_diffusion(), tx=tx,
                            weights=LossWeights(sync=0.0, lpips=0.0), disc=disc, disc_tx=dtx,
                            accum_steps=accum)
  init = lambda: init_train_state(jax.random.PRNGKey(0), model, tx, disc, dtx)
  step, shardings = jit_train_step(step_fn, jax.eval_shape(init), mesh)
  state = jax.jit(init, out_shardings=shardings)()
  state, metrics = step(state, sharding.global_batch(batch(), mesh))
  kernel = state.params["input_blocks_1_0"]["in_layers_2"]["kernel"]
  scalars, quartiles = split_metrics(metrics)
  out = {"metrics": {k: float(v) for k, v in scalars.items()},
         "quartiles": {k: np.asarray(v).tolist() for k, v in quartiles.items()},
         "kernel_spec": str(kernel.sharding.spec),
         "kernel_shards": len({str(s.index) for s in kernel.addressable_shards}),
         "param_sum": float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(state.params))),
         "kernel": np.asarray(kernel).ravel()[:64].tolist(),
         "disc_sum": float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(state.disc_params)))}
  print(json.dumps(out))


if __name__ == "__main__":
  main(tuple(int(x) for x in sys.argv[1].split("x")), int(sys.argv[2]))
