from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from supernet.losses import (
    byol_loss,
    contrastive_logits,
    density_bound_loss,
    density_bounds,
    flops_budget_loss,
    info_nce,
    logit_distillation,
    loss_weights,
    negative_cosine,
    nt_xent,
)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- regression -----------------------------------------------------------------------------------


def test_byol_loss_closed_form_values(generator: torch.Generator) -> None:
    x = torch.randn(5, 16, generator=generator)
    assert byol_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(x, -x).item() == pytest.approx(4.0, abs=1e-6)
    orthogonal = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert byol_loss(*orthogonal).item() == pytest.approx(2.0, abs=1e-6)


def test_byol_loss_is_scale_invariant_and_equals_normalised_mse(generator: torch.Generator) -> None:
    prediction = torch.randn(8, 32, generator=generator)
    target = torch.randn(8, 32, generator=generator)
    scales = torch.rand(8, 1, generator=generator) * 10 + 0.1
    reference = (F.normalize(prediction, dim=1) - F.normalize(target, dim=1)).pow(2).sum(dim=1).mean()
    assert torch.allclose(byol_loss(prediction, target), reference, atol=1e-5)
    assert torch.allclose(byol_loss(prediction * scales, target * 7.0), reference, atol=1e-5)


def test_negative_cosine_matches_torch_and_byol(generator: torch.Generator) -> None:
    prediction = torch.randn(6, 10, generator=generator)
    target = torch.randn(6, 10, generator=generator)
    expected = -F.cosine_similarity(prediction, target, dim=1).mean()
    assert torch.allclose(negative_cosine(prediction, target), expected, atol=1e-6)
    assert torch.allclose(byol_loss(prediction, target), 2 + 2 * negative_cosine(prediction, target), atol=1e-6)
    assert negative_cosine(prediction, prediction).item() == pytest.approx(-1.0, abs=1e-6)


def test_regression_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        byol_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# --- InfoNCE --------------------------------------------------------------------------------------


def test_contrastive_logits_layout_with_queue(generator: torch.Generator) -> None:
    query = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    key = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    queue = F.normalize(torch.randn(6, 8, generator=generator), dim=1)
    logits = contrastive_logits(query, key, queue, temperature=0.2)
    assert logits.shape == (4, 7)
    for b in range(4):
        assert logits[b, 0].item() == pytest.approx((query[b] @ key[b]).item() / 0.2, abs=1e-5)
        for j in range(6):
            assert logits[b, 1 + j].item() == pytest.approx((query[b] @ queue[j]).item() / 0.2, abs=1e-5)


def test_contrastive_logits_in_batch_has_positives_on_diagonal(generator: torch.Generator) -> None:
    query = torch.randn(5, 8, generator=generator)
    logits = contrastive_logits(query, 3.0 * query, None, temperature=0.5)
    assert logits.shape == (5, 5)
    assert torch.allclose(torch.diagonal(logits), torch.full((5,), 2.0), atol=1e-5)  # cos 1 / 0.5
    assert info_nce(logits, torch.arange(5)) < info_nce(logits)  # diagonal positives, not column 0


def test_info_nce_equals_hand_computed_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    expected = -0.5 * (
        (2.0 - math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)))
        + (0.0 - math.log(math.exp(0.0) + math.exp(1.0) + math.exp(3.0)))
    )
    assert info_nce(logits).item() == pytest.approx(expected, abs=1e-6)
    index = torch.tensor([1, 2])
    assert torch.allclose(info_nce(logits, index), F.cross_entropy(logits, index))


def test_info_nce_is_lower_when_positive_is_aligned(generator: torch.Generator) -> None:
    query = torch.randn(8, 16, generator=generator)
    queue = torch.randn(32, 16, generator=generator)
    aligned = info_nce(contrastive_logits(query, query + 0.01 * torch.randn(8, 16, generator=generator), queue, 0.2))
    unrelated = info_nce(contrastive_logits(query, torch.randn(8, 16, generator=generator), queue, 0.2))
    assert aligned < unrelated


def test_info_nce_rejects_bad_positive_index() -> None:
    with pytest.raises(ValueError, match="positive_index"):
        info_nce(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


# --- distillation ---------------------------------------------------------------------------------


def test_logit_distillation_zero_for_equal_and_positive_otherwise(generator: torch.Generator) -> None:
    teacher = torch.randn(4, 10, generator=generator)
    assert logit_distillation(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_distillation(teacher + 1.0, teacher).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    assert logit_distillation(torch.randn(4, 10, generator=generator), teacher).item() > 0


def test_logit_distillation_matches_hand_computation() -> None:
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    temperature = 5.0
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        t_exp = [math.exp(v / temperature) for v in t_row]
        s_exp = [math.exp(v / temperature) for v in s_row]
        p = [v / sum(t_exp) for v in t_exp]
        q = [v / sum(s_exp) for v in s_exp]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = total / 2 * temperature**2
    assert logit_distillation(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_logit_distillation_gradient_reaches_only_student(generator: torch.Generator) -> None:
    student = torch.randn(3, 5, generator=generator, requires_grad=True)
    teacher = torch.randn(3, 5, generator=generator, requires_grad=True)
    logit_distillation(student, teacher.detach()).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


# --- budget ---------------------------------------------------------------------------------------


def test_flops_budget_loss_zero_at_target_and_closed_form() -> None:
    gated = torch.tensor([40.0, 60.0])
    assert flops_budget_loss(gated, 100.0, target=0.5).item() == pytest.approx(0.0, abs=1e-12)
    assert flops_budget_loss(gated, torch.tensor(100.0), target=0.3).item() == pytest.approx(5.0 * 0.2**2, rel=1e-6)
    assert flops_budget_loss(gated, 100.0, target=0.3, weight=1.0).item() == pytest.approx(0.2**2, rel=1e-6)


@pytest.mark.parametrize("start, target", [(0.8, 0.3), (0.1, 0.6)])
def test_flops_budget_gradient_moves_ratio_toward_target(start: float, target: float) -> None:
    gated = torch.full((4,), start * 100.0, requires_grad=True)
    flops_budget_loss(gated, 100.0, target=target).backward()
    assert torch.all(torch.sign(gated.grad) == math.copysign(1.0, start - target))

    ratio = torch.tensor(start, requires_grad=True)  # stands in for what the gates control
    optimizer = torch.optim.SGD([ratio], lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        flops_budget_loss(ratio * torch.full((4,), 100.0), 100.0, target=target).backward()
        optimizer.step()
    assert abs(ratio.item() - target) < 1e-3 * abs(start - target)


def test_flops_budget_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="target"):
        flops_budget_loss(torch.ones(2), 1.0, target=1.5)
    with pytest.raises(ValueError, match="full_flops"):
        flops_budget_loss(torch.ones(2), 0.0, target=0.5)


def test_density_bounds_start_tight_at_sqrt_target_and_relax_per_epoch() -> None:
    # Krishna et al.: [p sqrt(t), 1 - p + p sqrt(t)], p = exp(-0.02 * epoch), epoch counted in whole epochs
    assert density_bounds(0.25, 0.0) == pytest.approx((0.5, 0.5))
    assert density_bounds(0.25, 0.99) == density_bounds(0.25, 0.0)  # refreshed once per epoch
    p = math.exp(-0.02 * 50)
    assert density_bounds(0.25, 50.5) == pytest.approx((0.5 * p, 1 - p + 0.5 * p))
    lower, upper = density_bounds(0.3, 1000)
    assert lower == pytest.approx(0.0, abs=1e-8) and upper == pytest.approx(1.0, abs=1e-8)
    widths = [density_bounds(0.5, epoch) for epoch in range(0, 200, 10)]
    assert all(a[0] >= b[0] and a[1] <= b[1] for a, b in zip(widths, widths[1:]))  # they only ever widen


def test_density_bound_loss_is_the_layer_mean_of_squared_hinges() -> None:
    densities = torch.tensor([0.2, 0.5, 0.9, 0.6])
    # below 0.4: (0.4 - 0.2)^2 = 0.04; above 0.7: (0.9 - 0.7)^2 = 0.04; each term averaged over 4 layers
    loss = density_bound_loss(densities, 0.4, 0.7)
    assert float(loss) == pytest.approx(0.04 / 4 + 0.04 / 4)
    assert float(density_bound_loss(densities, 0.4, 0.7, weight=3.0)) == pytest.approx(3 * float(loss))
    assert float(density_bound_loss(torch.tensor([0.5, 0.6]), 0.4, 0.7)) == 0.0
    with pytest.raises(ValueError):
        density_bound_loss(densities, 0.8, 0.7)


def test_slimclr_weights_match_its_released_recipe() -> None:
    # SlimCLR scripts/mocov2.sh: widths [1, .75, .5, .25], option 5 -> [2.5, 1, 1, 1]
    assert loss_weights("slimclr", [1.0, 0.75, 0.5, 0.25]) == pytest.approx([2.5, 1.0, 1.0, 1.0])
    # sizes are relative to the full network, whatever unit they come in
    assert loss_weights("slimclr", [400.0, 100.0, 200.0]) == pytest.approx([1.75, 1.0, 1.0])
    assert loss_weights("slimclr", [1.0]) == [1.0]


def test_us3l_weighs_every_network_equally() -> None:
    assert loss_weights("equal", [1.0, 0.25, 0.6]) == [1.0, 1.0, 1.0]


def test_loss_weights_need_the_full_network_first() -> None:
    with pytest.raises(ValueError, match="full network first"):
        loss_weights("slimclr", [0.5, 1.0])
    with pytest.raises(ValueError, match="not one of"):
        loss_weights("size", [1.0])




def test_nt_xent_matches_a_hand_computation() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    temperature = 0.5
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1).tolist()
    total = 0.0
    for i in range(4):
        partner = (i + 2) % 4
        sims = {j: sum(x * y for x, y in zip(z[i], z[j])) / temperature for j in range(4) if j != i}
        total += -sims[partner] + math.log(sum(math.exp(s) for s in sims.values()))
    assert float(nt_xent(a, b, temperature)) == pytest.approx(total / 4, rel=1e-6)


def test_nt_xent_learns_from_the_teacher_side_only_through_the_student(generator: torch.Generator) -> None:
    student = torch.randn(6, 8, generator=generator, requires_grad=True)
    teacher = torch.randn(6, 8, generator=generator, requires_grad=True)
    nt_xent(student, teacher.detach()).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
    with pytest.raises(ValueError, match="B >= 2"):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
