"""Progressive distillation: the rounds, the nested grids and the target of one student step.

The job itself (`launch.distill`) was run by hand on the debug setup (see issue 13's report):
on the shared 2-core CPU a debug distillation step costs 10-60 s, too slow for the default suite.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax.diffusion import solvers
from diff2lip_jax.training import distill


def test_rounds_and_student_steps():
  assert distill.num_rounds(32, 4) == 3 and distill.num_rounds(8, 2) == 2
  for bad in ((8, 3), (4, 4), (4, 8), (8, 0)):
    with pytest.raises(ValueError, match="power of two"):
      distill.num_rounds(*bad)
  steps = [distill.student_steps_at(s, 32, 10, 3) for s in (0, 9, 10, 29, 30, 99)]
  assert steps == [16, 16, 8, 4, 4, 4]
  assert int(distill.student_steps_at(jnp.int32(15), 32, 10, 3)) == 8


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_trailing_grids_nest(n):
  t = solvers.trailing_timestep(np.arange(1, n + 1), n)
  np.testing.assert_array_equal(t, solvers.trailing_timestep(2 * np.arange(1, n + 1), 2 * n))
  assert t[-1] == 999 and np.all(np.diff(t) > 0)
  traced = jax.jit(lambda k: solvers.trailing_timestep(k, n))(jnp.arange(1, n + 1))
  np.testing.assert_array_equal(traced, t)


def test_one_student_step_with_the_target_lands_on_two_teacher_steps():
  ac = solvers.discrete_alphas_cumprod()
  coef = lambda t: (1.0, 0.0) if t < 0 else (np.sqrt(ac[t]), np.sqrt(1 - ac[t]))
  rng = np.random.default_rng(0)
  for t, t_next in ((999, 499), (499, -1), (249, 124)):
    (a, s), (a2, s2) = coef(t), coef(t_next)
    z_t, z_next = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
    x_hat = np.asarray(distill.target_xstart(z_t, z_next, a, s, a2, s2))
    eps = (z_t - a * x_hat) / s                       # the student's DDIM step with x̃
    np.testing.assert_allclose(a2 * x_hat + s2 * eps, z_next, atol=1e-9)
