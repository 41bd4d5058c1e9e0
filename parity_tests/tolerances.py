"""The parity suite's tolerance table: vae_jax/tolerances.py, the one table (`vae-jax import` and
`vae-jax parity` judge a user's weights by it too). Every comparison in parity_tests/ names an entry."""

from vae_jax.tolerances import ADAM_HARD_BOUND, F32, F64, LR, STEPS, TINY, TOLERANCES, Tol, error, tol

__all__ = ["ADAM_HARD_BOUND", "F32", "F64", "LR", "STEPS", "TINY", "TOLERANCES", "Tol", "error", "tol"]
