"""Training loss pieces with known answers: the expert's face input layout and the sync loss."""

import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax.training import losses


def test_sync_face_input_is_wav2lips_layout():
  """Frame k's colour lands in channels 3k..3k+2, BGR, in [0, 1]; only the lower half is kept."""
  b, f, s = 2, 5, 32
  clips = np.zeros((b, f, s, s, 3), np.float32)
  for k in range(f):
    clips[:, k, s // 2:] = np.array([0.1 * k, 0.5, -0.5])  # lower half: RGB per frame
    clips[:, k, :s // 2] = -1.0                            # upper half: dropped
  out = np.asarray(losses.sync_face_input(jnp.asarray(clips)))
  assert out.shape == (b, 48, 96, 3 * f)
  for k in range(f):
    want = (np.array([-0.5, 0.5, 0.1 * k]) + 1.0) / 2.0  # BGR in [0, 1]
    np.testing.assert_allclose(out[:, 2:-2, :, 3 * k:3 * k + 3], np.broadcast_to(
        want, out[:, 2:-2, :, :3].shape), atol=1e-6)


@pytest.mark.parametrize("same, want", [(True, 0.0), (False, -np.log(1e-7))])
def test_sync_loss_known_answers(same, want):
  """In-sync embeddings (cosine 1) cost ~0; orthogonal ones (cosine 0) cost -log(eps)."""
  e1 = jnp.eye(4)[None, 0].repeat(3, 0)
  e2 = e1 if same else jnp.eye(4)[None, 1].repeat(3, 0)
  embed = lambda faces, mel: (e1, e2)
  loss = losses.sync_loss(embed, jnp.zeros((3, 5, 32, 32, 3)), jnp.zeros((3, 80, 16)))
  assert float(loss) == pytest.approx(want, abs=1e-5)
