"""SimCLR (both sides of NT-Xent learn) and SimSiam (predictor, stop-gradient, BN'd projector output)."""

from __future__ import annotations

import pytest
import torch

from supernet.losses import negative_cosine, nt_xent
from supernet.nn.models import build_supernet
from supernet.ssl import SimCLR, SimSiam

HEADS = {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 4}

pytestmark = pytest.mark.usefixtures("single_thread")  # small networks: no OpenMP spin-waiting


def _views(count: int = 2, batch: int = 6, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(count)]


def _projector_grads(method: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in method.projector.parameters() if p.grad is not None]


def test_simclr_full_width_is_nt_xent_with_gradient_through_both_views() -> None:
    torch.manual_seed(0)
    method = SimCLR(build_supernet("tiny"), temperature=0.5, **HEADS)
    views = _views()
    terms, projections = method.full_width_loss(views, [], {})
    z0, z1 = projections
    torch.testing.assert_close(terms["ntxent"], nt_xent(z0, z1, 0.5))  # (0, 1) and (1, 0) are the same loss
    terms["ntxent"].backward()
    ours = _projector_grads(method)
    method.zero_grad()
    z0, z1 = method.project(views)
    nt_xent(z0, z1, 0.5).backward()
    for got, expected in zip(ours, _projector_grads(method)):
        torch.testing.assert_close(got, expected)
    method.zero_grad()
    z0, z1 = method.project(views)
    nt_xent(z0, z1.detach(), 0.5).backward()  # SimCLR-momentum's one-sided gradient differs
    assert any(not torch.allclose(got, other) for got, other in zip(ours, _projector_grads(method)))


def test_simsiam_heads_are_the_papers() -> None:
    method = SimSiam(build_supernet("tiny"), proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=4, proj_layers=3)
    linears = [m for m in method.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    output_norm = method.projector[-1]
    assert isinstance(output_norm, torch.nn.BatchNorm1d) and not output_norm.affine
    z = method.project(_views(1, batch=8))[0]  # train mode: every output dimension is standardised
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    predictor = [m for m in method.predictor.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in predictor] == [(16, 4), (4, 16)]  # bottleneck


def test_simsiam_loss_is_symmetric_negative_cosine_against_the_stopped_branch() -> None:
    torch.manual_seed(0)
    method = SimSiam(build_supernet("tiny"), **HEADS)
    views = _views()
    terms, _ = method.full_width_loss(views, [], {})
    z1, z2 = method.project(views)
    p1, p2 = method.predictor(z1), method.predictor(z2)
    expected = 0.5 * negative_cosine(p1, z2.detach()) + 0.5 * negative_cosine(p2, z1.detach())
    assert float(terms["simsiam"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)

    method.zero_grad()
    terms["simsiam"].backward()
    ours = _projector_grads(method)
    method.zero_grad()
    expected.backward()
    for got, reference in zip(ours, _projector_grads(method)):
        torch.testing.assert_close(got, reference)
    method.zero_grad()  # without the stop-gradient the projector's gradient differs: the test can tell
    z1, z2 = method.project(views)
    (0.5 * negative_cosine(method.predictor(z1), z2) + 0.5 * negative_cosine(method.predictor(z2), z1)).backward()
    assert any(not torch.allclose(got, other, atol=1e-6) for got, other in zip(ours, _projector_grads(method)))


@pytest.mark.parametrize("method_class", [SimSiam, SimCLR])
def test_at_momentum_zero_the_subnetworks_target_is_the_full_width_student(method_class: type) -> None:
    """US3L's SimSiam/SimCLR: sub-networks regress the max-width pass's own detached projections."""
    torch.manual_seed(0)
    method = method_class(build_supernet("tiny"), **HEADS)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the student moved; the teacher copy has not yet
    views = _views()
    method.update_teacher(0.0)
    targets = method.teacher_targets(views)
    method.encoder.set_max()
    with torch.no_grad():
        student = method.project(views)
    for target, own in zip(targets, student):
        torch.testing.assert_close(target, own)
