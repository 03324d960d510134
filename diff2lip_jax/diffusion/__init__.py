"""Gaussian diffusion: schedules and respacing, losses, scan-based samplers and ODE solvers."""

from diff2lip_jax.diffusion.gaussian import (
    p_mean_variance, predict_eps_from_xstart, predict_xstart_from_eps, q_sample, training_losses,
    vb_terms_bpd)
from diff2lip_jax.diffusion.samplers import sample_loop
from diff2lip_jax.diffusion.solvers import SOLVERS, SolverPlan, make_plan, solve
from diff2lip_jax.diffusion.schedule import (
    Diffusion, get_named_beta_schedule, make_diffusion, space_timesteps)
