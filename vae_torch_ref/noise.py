"""Not in the chapter: hand the reference a given eps instead of its own torch.randn_like draw.

JAX cannot reproduce torch's random stream, so a cross-framework comparison draws eps once (from a
JAX key) and injects it into both: JAX models take `eps=`; the reference's `reparameterize` calls
torch.randn_like, which `inject_eps` replaces for the duration of a `with` block, so the chapter's
own forward / batch_loss code runs unchanged.
"""
import contextlib

import torch


@contextlib.contextmanager
def inject_eps(eps: torch.Tensor, expected_draws: int = 1):
    """Within the block, torch.randn_like(t) returns `eps` (shape and dtype must match t); on exit,
    checks that exactly `expected_draws` draws were made."""
    real = torch.randn_like
    draws = []

    def fake(t, *args, **kwargs):
        if tuple(t.shape) != tuple(eps.shape) or t.dtype != eps.dtype:
            raise ValueError(f"randn_like{tuple(t.shape)} {t.dtype} but injected eps is "
                             f"{tuple(eps.shape)} {eps.dtype}")
        draws.append(1)
        return eps.clone()

    torch.randn_like = fake
    try:
        yield
    finally:
        torch.randn_like = real
    if len(draws) != expected_draws:
        raise AssertionError(f"torch drew eps {len(draws)} times, expected {expected_draws}")
