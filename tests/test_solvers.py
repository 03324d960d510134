"""ODE solvers (DPM-Solver++(2M), UniPC): grids, coefficients, an exactly solvable ODE, and the
issue's claim on the small upstream model (closer to DDIM-1000 than DDIM, observed order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax.diffusion import make_diffusion, sample_loop, solvers
from diff2lip_jax.inference.sampler import build_sampler

AC = solvers.discrete_alphas_cumprod()


def _gaussian_model(mu: float, s: float):
  """ε_θ of the exact score for data ~ N(mu, s²): σ (x - α mu) / (α² s² + σ²)."""
  ac = jnp.asarray(AC, jnp.float32)

  def model_fn(x, t):
    a = jnp.sqrt(ac[t])[:, None, None, None]
    sg = jnp.sqrt(1.0 - ac[t])[:, None, None, None]
    return jnp.concatenate([sg * (x - a * mu) / (a ** 2 * s ** 2 + sg ** 2),
                            jnp.zeros_like(x)], axis=-1)
  return model_fn


def _gaussian_exact(x_T, mu, s):
  """The probability-flow ODE keeps (x - α mu) / sqrt(α² s² + σ²) constant: x at t = 0 from
  x_T at t = 999, then x_θ(x, 0) (the last step every sampler here shares)."""
  a, sg = np.sqrt(AC), np.sqrt(1.0 - AC)
  spread = lambda i: np.sqrt(a[i] ** 2 * s ** 2 + sg[i] ** 2)
  x = a[0] * mu + (np.asarray(x_T, np.float64) - a[-1] * mu) / spread(-1) * spread(0)
  return (x - sg[0] * sg[0] * (x - a[0] * mu) / spread(0) ** 2) / a[0]


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("schedule", ["logsnr", "time_uniform"])
@pytest.mark.parametrize("steps", [1, 2, 10, 25, 200])
def test_grid_is_integer_descending_and_spans_the_schedule(schedule, steps):
  t = solvers.solver_timesteps(steps, schedule, AC)
  assert len(t) == steps and t[0] == 999 and (steps == 1 or t[-1] == 0)
  assert np.all(np.diff(t) < 0) and t.dtype.kind == "i"
  if schedule == "time_uniform" and steps > 1:  # upstream's `timestep_respacing="N"` grid
    np.testing.assert_array_equal(t[::-1], make_diffusion(timestep_respacing=str(steps))
                                  .timestep_map)
  if schedule == "logsnr" and steps == 10:      # λ steps equal up to the integer rounding
    lam = solvers.half_log_snr(AC[t])
    assert np.all(np.abs(np.diff(lam)[:-2] / np.diff(lam).mean() - 1) < 0.1)
  with pytest.raises(ValueError):
    solvers.solver_timesteps(0, schedule, AC)


def test_unip2_bh2_is_dpmpp_2m_and_ddim_plan_is_sample_loop():
  """UniPC's predictor with one previous point and B(h) = 1 - e^{-h} is DPM-Solver++(2M)."""
  dpm = solvers.make_plan("dpmpp_2m", 12)
  unip = solvers.make_plan("unipc", 12, schedule="logsnr", corrector=False)
  np.testing.assert_allclose(dpm.pred_m, unip.pred_m, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(dpm.pred_x, unip.pred_x, rtol=1e-6)
  assert not np.allclose(solvers.make_plan("unipc", 12, schedule="logsnr").corr_m, 0)
  # The last step maps t = 0 to x_θ; the first is DDIM's (no history yet).
  assert float(dpm.pred_x[-1]) == 0 and list(np.asarray(dpm.pred_m[-1])) == [1.0, 0.0]
  assert float(dpm.pred_m[0, 1]) == 0
  # The 1st-order plan on upstream's "N" grid is the DDIM of `sample_loop`.
  model_fn = _gaussian_model(0.3, 0.5)
  x_T = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  for n in (7, 25):
    ddim = sample_loop(make_diffusion(timestep_respacing=str(n)), model_fn, x_T)
    np.testing.assert_allclose(solvers.solve(solvers.make_plan("ddim", n), model_fn, x_T), ddim,
                               atol=1e-5)
  with pytest.raises(ValueError, match="unknown solver"):
    solvers.make_plan("euler", 10)
  with pytest.raises(ValueError, match="order"):
    solvers.make_plan("unipc", 10, order=4)


def test_exactly_solvable_ode_converges_at_second_order():
  """Gaussian data: the ODE's exact solution is known; both solvers beat DDIM and converge at
  order >= 1.8 on the logSNR grid (the time-uniform grid's last step, λ 0.97 -> 4.6, is too
  long for this data's x_θ, which changes fastest near λ = log(1/s))."""
  mu, s = 0.3, 0.5
  model_fn = _gaussian_model(mu, s)
  x_T = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
  exact = _gaussian_exact(x_T, mu, s)
  run = jax.jit(lambda plan: solvers.solve(plan, model_fn, x_T, clip_denoised=False))
  errs = {}
  for name in ("ddim", "dpmpp_2m", "unipc"):
    errs[name] = [_rel(run(solvers.make_plan(name, n, schedule="logsnr")), exact)
                  for n in (20, 40, 80)]
  print({k: ["%.2e" % e for e in v] for k, v in errs.items()})
  for name in ("dpmpp_2m", "unipc"):
    assert all(e < d for e, d in zip(errs[name], errs["ddim"]))
    assert np.log2(errs[name][1] / errs[name][2]) >= 1.8
  assert 0.9 < np.log2(errs["ddim"][1] / errs["ddim"][2]) < 1.1
