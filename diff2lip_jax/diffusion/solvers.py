"""Training-free ODE solvers for the ε-prediction model: DPM-Solver++(2M) and UniPC (bh2, UniC).

Both integrate the probability-flow ODE of the 1000-step discrete diffusion in its
data-prediction form (Lu et al. 2022b, DPM-Solver++, arXiv 2211.01095; the change of variable to
λ and the exponential integrator are DPM-Solver's, Lu et al. 2022a, arXiv 2206.00927):
with `α_t = sqrt(ᾱ_t)`, `σ_t = sqrt(1 - ᾱ_t)`, `λ_t = log(α_t / σ_t)` (half the log-SNR) and the
data prediction `x_θ(x_t, t) = (x_t - σ_t ε_θ(x_t, t)) / α_t`, the exact solution from s to t is

    x_t = (σ_t / σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x_θ(x_λ, λ) dλ,

and expanding x_θ in λ around λ_s (h = λ_t - λ_s > 0, φ_1(z) = (e^z - 1)/z,
φ_{k+1}(z) = (φ_k(z) - 1/k!)/z) gives

    x_t = (σ_t / σ_s) x_s + α_t Σ_{n≥0} h^{n+1} φ_{n+1}(-h) x_θ^{(n)}(λ_s).

The n = 0 term alone, `α_t (1 - e^{-h}) x_θ`, is DDIM (DPM-Solver++ 1st order). The learned Σ
output of the model is unused: these are ODE (η = 0) solvers.

Discrete time (the model is conditioned on integer t in 0..T-1): ᾱ, hence λ, is defined only
on the integer grid. Each solver places its N evaluation times on that grid (`solver_timesteps`:
the papers' continuous schedule, inverted through λ interpolated linearly between integers, then
rounded to the nearest integer and made strictly decreasing) and then uses the *exact* ᾱ of
those integers in every coefficient, so the model is evaluated precisely where the solver
assumes it is; rounding only moves the grid, it adds no error. The grid always runs from
t = T-1 (x_T is pure noise there, as DDIM-1000 assumes) down to t = 0, and the last transition,
t = 0 -> clean data (σ = 0, λ = +∞), is the first-order step `x_0 = x_θ(x_{t=0}, 0)`, exactly
DDIM's last step (a polynomial in λ cannot be extrapolated to λ = ∞). N steps = N model calls.

Every solver here is a linear multistep method in x_θ whose coefficients depend only on the λ
grid, so they are computed once on the host in float64 (`SolverPlan`) and the device loop is one
`lax.scan` with a fixed linear combination per step (`solve`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diff2lip_jax.diffusion.schedule import get_named_beta_schedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
SOLVERS = ("dpmpp_2m", "unipc")
SCHEDULES = ("logsnr", "time_uniform", "trailing")
DEFAULT_SCHEDULE = {"dpmpp_2m": "logsnr", "unipc": "time_uniform", "ddim": "time_uniform"}


def trailing_timestep(k, n: int, num_timesteps: int = 1000):
  """t of point k (1..n) of the n-step "trailing" grid: round(T k / n) - 1 (halves rounded
  up), in integer arithmetic so that numpy and traced jnp ints agree. Point 0 (t = -1) is clean
  data. Grid n is a subset of grid 2n (t(k, n) = t(2k, 2n)): the nesting progressive
  distillation needs (Salimans & Ho 2022, Algorithm 2: one student step = two teacher steps).
  """
  return (2 * num_timesteps * k + n) // (2 * n) - 1


def discrete_alphas_cumprod(diffusion_steps: int = 1000,
                            noise_schedule: str = "linear") -> np.ndarray:
  """ᾱ_t for the integer timesteps t = 0..T-1 of training, float64 [T]."""
  return np.cumprod(1.0 - get_named_beta_schedule(noise_schedule, diffusion_steps))


def half_log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
  """λ = log(α/σ) = ½ (log ᾱ - log(1 - ᾱ)), float64, decreasing in t (Lu et al. 2022a §2)."""
  ac = np.asarray(alphas_cumprod, np.float64)
  return 0.5 * (np.log(ac) - np.log1p(-ac))


def solver_timesteps(steps: int, schedule: str, alphas_cumprod: np.ndarray) -> np.ndarray:
  """N integer evaluation times, descending from T-1 to 0, int64 [N].

  Schedules (the ones issue 13 names from the papers: DPM-Solver's "logSNR" step-size
  schedule, Lu et al. 2022a, for DPM-Solver++; time-uniform, UniPC's setting for pixel-space
  models, Zhao et al. 2023):
    "logsnr": λ uniform between λ(T-1) and λ(0) (DPM-Solver++'s choice);
    "time_uniform": t uniform between T-1 and 0 (UniPC's choice; also what upstream's
      `timestep_respacing="N"` keeps).
    "trailing": `trailing_timestep(k, N)` for k = N..1: T-1 down to T/N - 1, the last step
      going to clean data from there (the grid of the distilled students, `training.distill`).
  Continuous λ targets are mapped to t by inverting λ(t), taken linear between integers, then
  rounded; collisions near t = 0 (where λ changes fastest) are pushed up by one.

  Raises:
    ValueError: steps < 1, steps > T, or an unknown schedule.
  """
  n_train = len(alphas_cumprod)
  if steps < 1 or steps > n_train:
    raise ValueError(f"steps must be in 1..{n_train}; got {steps}")
  if schedule == "trailing":
    return trailing_timestep(np.arange(steps, 0, -1, dtype=np.int64), steps, n_train)
  if steps == 1:
    return np.array([n_train - 1])
  frac = np.arange(steps) / (steps - 1)
  if schedule == "time_uniform":
    t = (n_train - 1) * (1.0 - frac)
  elif schedule == "logsnr":
    lam = half_log_snr(alphas_cumprod)
    targets = lam[-1] + frac * (lam[0] - lam[-1])
    t = np.interp(targets, lam[::-1], np.arange(n_train - 1, -1, -1, dtype=np.float64))
  else:
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
  t = np.rint(t).astype(np.int64)
  t[0], t[-1] = n_train - 1, 0
  for i in range(steps - 2, -1, -1):  # strictly decreasing, fixing from t = 0 upwards
    t[i] = max(t[i], t[i + 1] + 1)
  if t[0] != n_train - 1:
    raise ValueError(f"{steps} steps do not fit on the {n_train}-step grid with {schedule}")
  return t


def _h_phi(h: float, n: int) -> float:
  """h φ_{n+1}(-h) for h > 0: `α_t h^n · h φ_{n+1}(-h)` weighs x_θ^{(n)}(λ_s) in the module
  docstring's expansion.

  φ_k(z) = Σ_{j≥0} z^j / (j + k)!; the series is used for small h (the recursion cancels).
  """
  z = -h
  if h < 0.5:
    phi = sum(z ** j / math.factorial(j + n + 1) for j in range(30))
  else:
    phi = math.expm1(z) / z
    for k in range(1, n + 1):
      phi = (phi - 1.0 / math.factorial(k)) / z
  return h * phi


def _higher_order_weights(h: float, r: Sequence[float], variant: str) -> np.ndarray:
  """Weights c_k of the differences D_k = x_θ(λ_s + r_k h) - x_θ(λ_s), float64 [len(r)].

  UniPC's order conditions (Zhao et al. 2023, §3: UniC-p / UniP-p, written for data
  prediction):
  with c_k = B(h) a_k / r_k, Σ_k c_k D_k reproduces the Taylor terms n = 1..len(r) when
  `Σ_k a_k r_k^{n-1} = n! h φ_{n+1}(-h) / B(h)`, i.e. `Σ_k c_k r_k^n = n! h φ_{n+1}(-h)`.
  With as many conditions as unknowns, B(h) cancels; for a single difference UniPC sets
  a_1 = 1/2 (its leading value) so B(h) decides: "bh1" B(h) = h, "bh2" B(h) = 1 - e^{-h}
  (e^{h} - 1 in the paper's noise-prediction form). bh2 with one previous point is exactly
  DPM-Solver++(2M)'s difference term (checked in tests/test_solvers.py).
  """
  r = np.asarray(r, np.float64)
  if len(r) == 0:
    return r
  if len(r) == 1:
    b = h if variant == "bh1" else -math.expm1(-h)
    return np.array([b * 0.5 / r[0]])
  k = len(r)
  mat = np.stack([r ** n for n in range(1, k + 1)])            # [n, k]
  rhs = np.array([math.factorial(n) * _h_phi(h, n) for n in range(1, k + 1)])
  return np.linalg.solve(mat, rhs)


@flax.struct.dataclass
class SolverPlan:
  """Per-step coefficients of a multistep solver in x_θ; the arrays of `solve`'s scan.

  N = steps, K = history length (the order). At step i the model is evaluated at t_i on the
  predicted x̃_i, giving m_i = x_θ(x̃_i, t_i); `hist` holds m_{i-1}, ..., m_{i-K}.
    corrector: x_i = corr_w[i] x̃_i + corr_x[i] x_{i-1} + Σ_j corr_m[i, j] hist_j + corr_new[i] m_i
    predictor: x̃_{i+1} = pred_x[i] x_i + Σ_j pred_m[i, j] hist'_j   (hist' = m_i, m_{i-1}, ...)
  The last row maps to clean data: pred_x = 0, pred_m = (1, 0, ...).

  Fields: timesteps [N] int32 (the model's grid), alphas, sigmas [N] float32 (sqrt ᾱ,
  sqrt(1-ᾱ)), corr_w, corr_x, corr_new, pred_x [N] float32, corr_m, pred_m [N, K] float32.
  """

  timesteps: jax.Array
  alphas: jax.Array
  sigmas: jax.Array
  corr_w: jax.Array
  corr_x: jax.Array
  corr_m: jax.Array
  corr_new: jax.Array
  pred_x: jax.Array
  pred_m: jax.Array

  @property
  def steps(self) -> int:
    return int(self.timesteps.shape[0])


def _transition(lam: np.ndarray, alpha: np.ndarray, sigma: np.ndarray, s: int, t: int,
                prev: Sequence[int], new: bool, variant: str, k_hist: int, dpmpp: bool):
  """Coefficients of one step s -> t (indices into the grid; t = len(lam) means clean data).

  Returns (coef on x_s, coefs [K] on m_s, m_{s-1}, ..., coef on m_t (new point; corrector)).
  """
  m = np.zeros(k_hist)
  if t == len(lam):                      # to λ = ∞: x_0 = x_θ(x_s, s), DDIM's last step
    m[0] = 1.0
    return 0.0, m, 0.0
  h = lam[t] - lam[s]
  base = alpha[t] * -math.expm1(-h)      # α_t (1 - e^{-h}) = α_t h φ_1(-h)
  m[0] = base
  if dpmpp and prev:
    # Lu et al. 2022b, Algorithm 2: D = (1 + 1/(2r)) m_s - 1/(2r) m_{s-1}, r = h_{prev} / h.
    r = (lam[s] - lam[prev[0]]) / h
    m[0] += base / (2 * r)
    m[1] -= base / (2 * r)
    return sigma[t] / sigma[s], m, 0.0
  r = [(lam[p] - lam[s]) / h for p in prev] + ([1.0] if new else [])
  c = alpha[t] * _higher_order_weights(h, r, variant)
  m[0] -= c.sum()
  for j in range(len(prev)):
    m[1 + j] += c[j]
  return sigma[t] / sigma[s], m, (c[-1] if new else 0.0)


def make_plan(solver: str, steps: int, *, order: int = 2, schedule: Optional[str] = None,
              variant: str = "bh2", corrector: Optional[bool] = None,
              diffusion_steps: int = 1000, noise_schedule: str = "linear",
              timesteps: Optional[Sequence[int]] = None) -> SolverPlan:
  """The coefficients of a solver on the discrete diffusion of training.

  Args:
    solver: "dpmpp_2m" (Lu et al. 2022b, Algorithm 2, multistep 2nd order, data prediction),
      "unipc" (Zhao et al. 2023: UniP-p predictor + UniC-p corrector, p = `order`, data
      prediction, B(h) by `variant`) or "ddim" (1st order; the same as `sample_loop` with DDIM,
      η = 0, on the same grid).
    steps: N, model evaluations = grid points.
    order: UniPC's p (1..3; the warm-up steps use what history there is). DPM-Solver++(2M) is 2.
    schedule: "logsnr" or "time_uniform"; None: the solver's paper's choice (logsnr for
      dpmpp_2m, time_uniform for unipc and ddim).
    variant: UniPC's B(h): "bh2" (default, recommended by the paper for few steps) or "bh1".
    corrector: UniC on or off (None: on for unipc). Never applied at the last grid point (its
      corrected value would need one more model call).
    diffusion_steps, noise_schedule: the training diffusion (Diff2Lip: 1000, linear).
    timesteps: an explicit strictly descending integer grid instead of `schedule` (the last
      point, usually 0, steps to clean data with x_θ).

  Raises:
    ValueError: an unknown solver, schedule or variant, order outside 1..3, or a bad grid.
  """
  if solver not in SOLVERS + ("ddim",):
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)} or ddim")
  if variant not in ("bh1", "bh2"):
    raise ValueError(f"unknown UniPC variant {variant!r}; choose bh1 or bh2")
  k = {"dpmpp_2m": 2, "ddim": 1}.get(solver, order)
  if not 1 <= k <= 3:
    raise ValueError(f"order must be 1, 2 or 3; got {order}")
  use_corrector = (solver == "unipc") if corrector is None else bool(corrector)
  ac = discrete_alphas_cumprod(diffusion_steps, noise_schedule)
  if timesteps is None:
    grid = solver_timesteps(steps, schedule or DEFAULT_SCHEDULE[solver], ac)
  else:
    grid = np.asarray(timesteps, np.int64)
    if grid[-1] < 0 or np.any(np.diff(grid) >= 0) or grid[0] >= diffusion_steps:
      raise ValueError(f"timesteps must be strictly decreasing integers in 0..{diffusion_steps - 1}")
  n = len(grid)
  lam, alpha, sigma = half_log_snr(ac[grid]), np.sqrt(ac[grid]), np.sqrt(1.0 - ac[grid])
  rows = {name: np.zeros(n) for name in ("corr_w", "corr_x", "corr_new", "pred_x")}
  corr_m, pred_m = np.zeros((n, k)), np.zeros((n, k))
  rows["corr_w"][:] = 1.0
  for i in range(n):
    if use_corrector and 0 < i < n - 1:  # UniC-p at t_i: base t_{i-1}, p - 1 older points
      p = min(k, i)
      cx, cm, cnew = _transition(lam, alpha, sigma, i - 1, i, range(i - 2, i - 1 - p, -1),
                                 True, variant, k, False)
      rows["corr_w"][i], rows["corr_x"][i], corr_m[i], rows["corr_new"][i] = 0.0, cx, cm, cnew
    p = min(k, i + 1)                    # UniP-p / 2M from t_i to t_{i+1} (or clean)
    cx, pred_m[i], _ = _transition(lam, alpha, sigma, i, i + 1, range(i - 1, i - p, -1), False,
                                   variant, k, solver == "dpmpp_2m")
    rows["pred_x"][i] = cx
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return SolverPlan(timesteps=jnp.asarray(grid, jnp.int32), alphas=f32(alpha), sigmas=f32(sigma),
                    corr_m=f32(corr_m), pred_m=f32(pred_m),
                    **{name: f32(v) for name, v in rows.items()})


def solve(plan: SolverPlan, model_fn: ModelFn, x_T: jax.Array, *,
          clip_denoised: bool = True) -> jax.Array:
  """Runs a `SolverPlan` from x_T at t = T-1 to clean data: one `lax.scan` of N model calls.

  Args:
    plan: from `make_plan` (a pytree of arrays; close over it or pass it through jit).
    model_fn: (x_t [N, H, W, C], original-grid timesteps [N] int32) -> [N, H, W, 2C] (ε then
      the learned-variance output, which is ignored) or [N, H, W, C]; conditioning closed over.
    x_T: [N, H, W, C] initial noise.
    clip_denoised: clamp every x_θ to [-1, 1] (upstream's `clip_denoised`; DPM-Solver++'s
      thresholding of the data prediction, Lu et al. 2022b §3.2, in its static form).

  Returns:
    [N, H, W, C] float32 x_0 = x_θ at t = 0 of the solved trajectory.
  """
  c = x_T.shape[-1]
  batch = x_T.shape[0]
  x0 = x_T.astype(jnp.float32)
  hist0 = jnp.zeros((plan.pred_m.shape[1],) + x0.shape, jnp.float32)

  def step(carry, row):
    x, x_prev, hist = carry
    t, alpha, sigma, cw, cx, cm, cnew, px, pm = row
    eps = model_fn(x, jnp.full((batch,), t, jnp.int32))[..., :c].astype(jnp.float32)
    m = (x - sigma * eps) / alpha
    if clip_denoised:
      m = jnp.clip(m, -1.0, 1.0)
    mix = lambda coefs, h: jnp.tensordot(coefs, h, axes=1)
    xc = cw * x + cx * x_prev + mix(cm, hist) + cnew * m
    hist = jnp.concatenate([m[None], hist[:-1]], axis=0)
    return (px * xc + mix(pm, hist), xc, hist), None

  rows = (plan.timesteps, plan.alphas, plan.sigmas, plan.corr_w, plan.corr_x, plan.corr_m,
          plan.corr_new, plan.pred_x, plan.pred_m)
  (x, _, _), _ = jax.lax.scan(step, (x0, x0, hist0), rows)
  return x
