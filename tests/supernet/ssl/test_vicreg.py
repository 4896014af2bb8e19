"""VICReg: the method's three terms equal lightly's loss; the gated pass learns only on its side."""

from __future__ import annotations

import pytest
import torch

from supernet.losses import vicreg_loss
from supernet.nn.models import build_supernet
from supernet.ssl import VICReg

pytestmark = pytest.mark.usefixtures("single_thread")  # small networks: no OpenMP spin-waiting


def _vicreg(**settings: object) -> VICReg:
    torch.manual_seed(0)
    return VICReg(build_supernet("tiny"), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, proj_layers=3, **settings)  # type: ignore[arg-type]


def _views(count: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(6, 3, 16, 16, generator=generator) for _ in range(count)]


def test_terms_sum_to_vicreg_of_the_two_views_and_to_lightly() -> None:
    method = _vicreg()
    terms, (z0, z1) = method.full_width_loss(_views(), [], {})
    assert set(terms) == {"invariance", "variance", "covariance"}
    total = sum(terms.values())
    torch.testing.assert_close(total, vicreg_loss(z0, z1))
    import lightly.loss as lightly_loss  # the reference (the test extra installs it)
    assert float(total.detach()) == pytest.approx(float(lightly_loss.VICRegLoss()(z0, z1).detach()), rel=1e-5)


def test_weights_switch_terms_off() -> None:
    method = _vicreg(invariance_weight=0.0, variance_weight=25.0, covariance_weight=0.0)
    terms, _ = method.full_width_loss(_views(), [], {})
    values = {name: float(term.detach()) for name, term in terms.items()}
    assert values["invariance"] == 0.0 and values["covariance"] == 0.0 and values["variance"] > 0


def test_multi_crop_pairs_each_local_view_with_each_global_view() -> None:
    method = _vicreg(global_global_weight=0.4, global_local_weight=0.6)
    terms, z = method.full_width_loss(_views(4), [], {})

    def pair(i: int, j: int) -> torch.Tensor:
        return vicreg_loss(z[i], z[j])

    expected = 0.4 * (pair(0, 1) + pair(1, 0)) / 2 + 0.6 * (pair(2, 0) + pair(2, 1) + pair(3, 0) + pair(3, 1)) / 4
    torch.testing.assert_close(sum(terms.values()), expected)


def test_gated_loss_is_vicreg_against_the_detached_dense_projections() -> None:
    """Krishna et al.: the gated network's VICReg against the dense network's other view."""
    method = _vicreg()
    views = _views()
    dense = [z.detach().requires_grad_() for z in method.project(views)]
    terms, gated = method.gated_loss(views, dense)
    total = sum(terms.values())
    expected = (vicreg_loss(gated[0], dense[1]) + vicreg_loss(gated[1], dense[0])) / 2
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(z.grad is None for z in dense)  # only the gated side learns from this term
    assert method.projector[0].weight.grad is not None


def test_variance_over_views_sum_is_solo_learns_unhalved_term() -> None:
    """solo-learn's variance_loss (Krishna et al.) adds the two views' hinges; VICReg's code halves them."""
    views = _views()
    mean_terms, (z0, z1) = _vicreg(variance_over_views="mean").full_width_loss(views, [], {})
    sum_terms, _ = _vicreg(variance_over_views="sum").full_width_loss(views, [], {})

    def hinge(z: torch.Tensor) -> torch.Tensor:  # solo/losses/vicreg.py: mean(relu(1 - sqrt(var + 1e-4)))
        return torch.relu(1 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()

    torch.testing.assert_close(sum_terms["variance"], 25.0 * (hinge(z0) + hinge(z1)))
    torch.testing.assert_close(mean_terms["variance"], 25.0 * (hinge(z0) + hinge(z1)) / 2)
    torch.testing.assert_close(sum_terms["invariance"], mean_terms["invariance"])
    with pytest.raises(ValueError, match="mean, sum"):
        _vicreg(variance_over_views="median")
