"""NT-Xent, SimCLR's normalised-temperature cross-entropy (Chen et al., ICML 2020).

For two batches of embeddings ``a`` and ``b`` (row i of each: two views of image i), the 2B rows of
``[a; b]`` are L2-normalised; each row's positive is its partner (i <-> i + B) and its negatives
are the other 2B - 2 rows. US3L's SimCLR-momentum variant takes ``b`` from the EMA teacher
(detached), so ``a`` learns from its own row and from being the teacher rows' negative.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean over the 2B rows of ``-log softmax(sim / T)[positive]``, self-similarity excluded.

    Args:
        a: ``(B, D)`` embeddings of one view.
        b: ``(B, D)`` embeddings of the other view (detach it when it is a teacher's).
        temperature: T > 0 (SimCLR 0.5 on CIFAR, US3L's SimCLR-momentum 0.5).

    Example:
        >>> z = torch.eye(4)
        >>> float(nt_xent(z, z, 0.1)) < 1e-3  # each row's partner is its only similar row
        True
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] < 2:
        raise ValueError(f"a and b must both be (B, D) with B >= 2; got {tuple(a.shape)} and {tuple(b.shape)}")
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    self_pairs, partners = _pairs(z.device, a.shape[0])
    logits = (z @ z.T / temperature).masked_fill(self_pairs, float("-inf"))
    return F.cross_entropy(logits, partners)


@lru_cache(maxsize=16)
def _pairs(device: torch.device, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2B, 2B) self-similarity mask and each row's partner index (i <-> i + B), made once per device and
    batch on that device: a host tensor copied at every call would be a host-to-device transfer per step."""
    with torch.inference_mode(False):  # ordinary tensors, whatever mode the first call ran under
        rows = torch.arange(2 * batch, device=device)
        return torch.eye(2 * batch, dtype=torch.bool, device=device), rows.roll(batch)
