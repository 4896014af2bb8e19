"""What every method shares: the cross-view pairing and SSLight's global/local weighting."""

from __future__ import annotations

import pytest
import torch

from supernet.nn.models import build_supernet
from supernet.ssl import BYOL


def _byol(**views: float) -> BYOL:
    return BYOL(build_supernet("tiny"), proj_hidden_dim=16, proj_dim=4, pred_hidden_dim=16, num_global=2, **views)


def test_global_and_local_terms_are_averaged_apart_then_mixed() -> None:
    method = _byol(global_global_weight=0.4, global_local_weight=0.6)
    # Outputs and targets are numbers; the pair loss records which pairs it sees and returns a value
    # that identifies the pair, so the mix can be computed by hand.
    outputs = [torch.tensor(float(i)) for i in range(5)]  # 2 global views, then 3 local views
    targets = [torch.tensor(10.0), torch.tensor(20.0)]  # the teacher's global views only
    seen = []

    def pair_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append((int(output), int(target)))
        return output + target

    loss = method.cross_view(outputs, targets, pair_loss)
    # a view is never paired with its own target; local views pair with both global targets
    assert seen == [(0, 20), (1, 10), (2, 10), (2, 20), (3, 10), (3, 20), (4, 10), (4, 20)]
    global_mean = (20 + 11) / 2
    local_mean = (12 + 22 + 13 + 23 + 14 + 24) / 6
    assert float(loss) == pytest.approx(0.4 * global_mean + 0.6 * local_mean)


def test_without_local_views_the_loss_is_the_global_mean() -> None:
    method = _byol(global_global_weight=0.4, global_local_weight=0.6)
    outputs, targets = [torch.tensor(1.0), torch.tensor(2.0)], [torch.tensor(10.0), torch.tensor(20.0)]
    assert float(method.cross_view(outputs, targets, lambda o, t: o * t)) == pytest.approx((20 + 20) / 2)


def test_vector_valued_pair_losses_are_averaged_term_by_term() -> None:
    """VICReg returns its three terms from one pair loss; each is mixed like a scalar loss would be."""
    method = _byol(global_global_weight=0.4, global_local_weight=0.6)
    outputs = [torch.tensor(float(i)) for i in range(3)]  # 2 global views, then 1 local view
    targets = [torch.tensor(10.0), torch.tensor(20.0)]
    loss = method.cross_view(outputs, targets, lambda o, t: torch.stack([o + t, o * t]))
    scalar = [method.cross_view(outputs, targets, lambda o, t, k=k: torch.stack([o + t, o * t])[k]) for k in range(2)]
    assert loss.shape == (2,)
    torch.testing.assert_close(loss, torch.stack(scalar))
    assert float(loss[1]) == pytest.approx(0.4 * (0 * 20 + 1 * 10) / 2 + 0.6 * (2 * 10 + 2 * 20) / 2)


def test_us3l_subnet_loss_is_the_aux_heads_negative_cosine_to_the_teachers_other_view() -> None:
    """US3L (workers/ssl.py): a sub-network's auxiliary-head output for view i regresses the teacher's
    full-width output for view j != i with -cos, averaged over the batch and the ordered pairs."""
    torch.manual_seed(0)
    method = _byol(global_global_weight=1.0, global_local_weight=0.0)
    method.encoder.set_active(method.encoder.space.uniform_config(0.5))
    views = [torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)]
    targets = [torch.randn(6, 4), torch.randn(6, 4)]
    terms, projections = method.subnet_loss(views, targets, {})
    assert set(terms) == {"distill"} and len(projections) == 2
    with torch.no_grad():  # BN in training mode normalises the same batch the same way twice
        outputs = [method.aux_predictor(method.projector(method.encoder(view))) for view in views]
    expected = 0.0
    for i, j in ((0, 1), (1, 0)):
        for p, t in zip(outputs[i].tolist(), targets[j].tolist()):
            dot = sum(a * b for a, b in zip(p, t))
            norms = sum(a * a for a in p) ** 0.5 * sum(b * b for b in t) ** 0.5
            expected += -dot / norms / (6 * 2)
    assert float(terms["distill"].detach()) == pytest.approx(expected, rel=1e-5)
    terms["distill"].backward()  # the targets are constants; the aux head and the encoder learn, BYOL's predictor not
    assert method.aux_predictor[0].weight.grad is not None and method.predictor[0].weight.grad is None
    assert next(method.encoder.parameters()).grad is not None
