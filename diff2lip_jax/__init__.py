"""diff2lip-jax: Diff2Lip (Mukhopadhyay et al., WACV 2024, arXiv 2308.09716) in JAX/Flax.

Audio-conditioned diffusion for lip-synchronisation: a guided-diffusion UNet regenerates the
lower half of 128x128 face crops from a masked frame, a reference frame and a mel window.
"""

__version__ = "0.1.0"
