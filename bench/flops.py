"""Analytic FLOP counts from a function's jaxpr (matmuls and convolutions, 2 FLOPs per MAC).

Why this and not XLA's `cost_analysis()`: `jax.jit(f).lower(...).compile().cost_analysis()`
works in jax 0.10/0.11, but its number depends on the backend and on what XLA fused or
rewrote (on CPU it also counts elementwise ops and transcendental ops, on GPU cuDNN custom calls
count 0), so the same model gives different figures on different machines. Counting the jaxpr
is backend-independent and follows the convention of the upstream anchor (PyTorch's
`torch.utils.flop_counter`, fvcore): only `dot_general` (dense layers, attention's QK^T and AV)
and `conv_general_dilated` count, at 2 FLOPs per multiply-accumulate; normalisation,
activations, softmax and the diffusion arithmetic are ignored (< 1 % here).

The count is taken on abstract shapes (`jax.make_jaxpr`), so counting the released model costs
no memory and about a second. Sub-jaxprs (jit, custom_jvp/vjp, remat, cond, scan) are followed;
a `scan` multiplies its body by its length; `while` loops are counted once and reported. A
cuDNN fused attention forward (`DIFF2LIP_ATTENTION=cudnn`) counts as its two matmuls; its
backward primitive is not counted (so `jaxpr_flop_per_step` of a train step undercounts then;
`flop_per_frame` is always from the plain model).

Source of the anchor: issue 4, "157.4 GFLOP forward per frame" for the released 128² model.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jex_core


def _conv_flops(eqn) -> int:
  """2 * output elements * (kernel spatial size * input channels per group)."""
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  dn = eqn.params["dimension_numbers"]
  rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  kernel_spatial = int(np.prod([rhs.shape[d] for d in rhs_spec[2:]]))
  in_per_group = rhs.shape[rhs_spec[1]]
  del lhs
  return 2 * int(np.prod(out.shape)) * kernel_spatial * in_per_group


def _dot_flops(eqn) -> int:
  """2 * output elements * contracted size."""
  lhs = eqn.invars[0].aval
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  contracted = int(np.prod([lhs.shape[d] for d in lhs_contract]))
  return 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted


def _sub_jaxprs(eqn):
  for name, value in eqn.params.items():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, jex_core.ClosedJaxpr):
        yield name, v.jaxpr
      elif isinstance(v, jex_core.Jaxpr):
        yield name, v


def jaxpr_flops(jaxpr, notes: list[str] | None = None) -> int:
  """Matmul + conv FLOPs of a (open) jaxpr, following sub-jaxprs."""
  total = 0
  for eqn in jaxpr.eqns:
    prim = eqn.primitive.name
    if prim == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif prim == "dot_general":
      total += _dot_flops(eqn)
    elif prim == "cond":
      total += max(jaxpr_flops(b.jaxpr, notes) for b in eqn.params["branches"])
    elif prim == "scan":
      total += int(eqn.params["length"]) * jaxpr_flops(eqn.params["jaxpr"].jaxpr, notes)
    elif prim == "while":
      if notes is not None:
        notes.append("while loop counted once")
      total += jaxpr_flops(eqn.params["body_jaxpr"].jaxpr, notes)
    elif "dot_product_attention" in prim and "fwd" in prim:  # cuDNN fused attention, forward
      # query [B, T, N, H], key [B, S, N, H]: QK^T and AV, 2 * B*T*S*N*H FLOPs each.
      q, k = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      total += 4 * int(np.prod(q)) * int(k[1])
    elif "attention" in prim and notes is not None:  # e.g. the fused attention's backward
      notes.append(f"primitive {prim} not counted")
    else:
      # custom_vjp_call's fwd/bwd jaxprs are not run in a forward pass: follow only "call_jaxpr"
      # / "jaxpr" (the primal computation).
      for name, sub in _sub_jaxprs(eqn):
        if name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
          total += jaxpr_flops(sub, notes)
  return total


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
  """FLOPs (matmul + conv, 2 per MAC) of one call `fn(*args, **kwargs)`.

  Args:
    fn: a JAX-traceable function.
    *args, **kwargs: arrays or `jax.ShapeDtypeStruct`s (nothing is computed).

  Returns:
    The FLOP count as a Python int.
  """
  closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
  return jaxpr_flops(closed.jaxpr)


def xla_flops(fn: Callable[..., Any], *args: Any) -> float | None:
  """XLA's own estimate (`compile().cost_analysis()["flops"]`) for comparison, or None.

  Backend-dependent (see the module docstring); compiles `fn`, so use small shapes on CPU.
  """
  try:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):  # jax < 0.4.30 returned a list of one dict
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def model_forward_flops(model, batch: int = 1) -> int:
  """FLOPs of one `TFGModel` forward pass (audio encoder included) on `batch` frames."""
  from diff2lip_jax.inference import checkpoints  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  s, f32 = model.image_size, jnp.float32
  params = checkpoints.abstract_params(model)
  img = jax.ShapeDtypeStruct((batch, s, s, 3), f32)
  ref = jax.ShapeDtypeStruct((batch, s, s, 3 * max(model.nrefer, 1)), f32)
  mask = jax.ShapeDtypeStruct((1, s, s, 1), f32)
  mels = jax.ShapeDtypeStruct((batch, 80, 16), f32)
  t = jax.ShapeDtypeStruct((batch,), jnp.int32)
  fn = lambda p, x, tt, c, m, r, a: model.apply({"params": p}, x, tt, c, m, r, a)
  import os  # pylint: disable=import-outside-toplevel
  saved = os.environ.pop("DIFF2LIP_ATTENTION", None)  # count the plain (XLA) attention
  try:
    return count_flops(fn, params, img, t, img, mask, ref if model.nrefer else None, mels)
  finally:
    if saved is not None:
      os.environ["DIFF2LIP_ATTENTION"] = saved
