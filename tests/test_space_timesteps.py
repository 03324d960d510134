"""`timestep_respacing` picks upstream's steps: every case of ../shared/upstream/space_timesteps.npz."""

import numpy as np

from diff2lip_jax.diffusion.schedule import space_timesteps


def test_space_timesteps_equals_upstream_for_every_case(upstream_dir):
  with np.load(upstream_dir / "space_timesteps.npz") as z:
    cases, steps, offsets = z["cases"], z["steps"], z["offsets"]
  assert len(cases) == 1012
  wrong = [str(c) for k, c in enumerate(cases)
           if space_timesteps(1000, str(c)) != sorted(steps[offsets[k]:offsets[k + 1]].tolist())]
  assert not wrong, f"{len(wrong)} cases differ, e.g. {wrong[:5]}"
  assert space_timesteps(1000, "21")[10] == 499  # the example of issue 10 (500 before)
