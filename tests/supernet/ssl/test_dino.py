"""DINO: head and prototypes, SSLight-weighted multi-crop loss, center after the step, schedules."""

from __future__ import annotations

import pytest
import torch

from supernet.losses import dino_loss
from supernet.nn.models import build_supernet
from supernet.ssl import DINO
from supernet.ssl.base import Collectives

pytestmark = pytest.mark.usefixtures("single_thread")  # small networks: no OpenMP spin-waiting


def _dino(**settings: object) -> DINO:
    torch.manual_seed(0)
    options = {"proj_hidden_dim": 32, "proj_dim": 8, "pred_hidden_dim": 16, "num_prototypes": 12, "head_batch_norm": True,
               "warmup_teacher_temperature": 0.04, "teacher_temperature": 0.07, "warmup_teacher_temperature_epochs": 3}
    return DINO(build_supernet("tiny"), **{**options, **settings})  # type: ignore[arg-type]


def _views(count: int, batch: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(count)]


def test_head_gives_unit_embeddings_and_cosine_scores() -> None:
    method = _dino()
    z = method.project(_views(1))[0]
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    scores = method.prototypes(z)
    assert scores.shape == (5, 12) and float(scores.detach().abs().max()) <= 1.0 + 1e-6
    with torch.no_grad():
        method.prototypes.weight.mul_(7.0)  # weight norm fixed at 1: the prototypes' scale does not matter
    torch.testing.assert_close(method.prototypes(z), scores)


def test_multi_crop_loss_weighs_global_and_local_pairs_as_sslight() -> None:
    method = _dino(global_global_weight=0.4, global_local_weight=0.6, num_global=2)
    method.set_epoch(1.0)
    with torch.no_grad():
        method.center.copy_(torch.randn(1, 12))
    views = _views(4)  # 2 global, 2 local views (same size here; the pairing is what is tested)
    targets = method.teacher_targets(views)
    terms, projections = method.full_width_loss(views, targets, {})
    student = [method.prototypes(z) for z in projections]
    teacher = [method.teacher_prototypes(t) for t in targets]

    def pair(i: int, j: int) -> torch.Tensor:
        return dino_loss(student[i], teacher[j], method.center, teacher_temperature=0.055, student_temperature=0.1)

    global_mean = (pair(0, 1) + pair(1, 0)) / 2
    local_mean = (pair(2, 0) + pair(2, 1) + pair(3, 0) + pair(3, 1)) / 4
    torch.testing.assert_close(terms["dino"], 0.4 * global_mean + 0.6 * local_mean)


def test_set_epoch_warms_the_teacher_temperature_and_freezes_the_prototypes_for_an_epoch() -> None:
    method = _dino()
    values = {epoch: method.set_epoch(epoch) for epoch in (0.0, 0.5, 1.0, 2.0, 3.5)}
    assert [values[e]["teacher_temperature"] for e in values] == pytest.approx([0.04, 0.04, 0.055, 0.07, 0.07])
    assert [values[e]["prototypes_frozen"] for e in values] == [1.0, 1.0, 0.0, 0.0, 0.0]
    views = _views(2)
    for epoch, frozen in ((0.5, True), (1.0, False)):
        method.zero_grad()
        method.set_epoch(epoch)
        terms, _ = method.full_width_loss(views, method.teacher_targets(views), {})
        terms["dino"].backward()
        assert (method.prototypes.weight.grad is None) == frozen
        assert method.projector.mlp[0].weight.grad is not None  # the rest of the head learns all along


def test_center_moves_toward_the_teacher_scores_of_every_rank() -> None:
    method = _dino()
    views = _views(2)
    targets = method.teacher_targets(views)
    scores = torch.cat([method.teacher_prototypes(t) for t in targets])
    method.after_step(targets)
    torch.testing.assert_close(method.center, 0.1 * scores.mean(0, keepdim=True))
    before = method.center.clone()
    other_rank = torch.full((1, 12), 0.5)  # a second rank's mean, as all_gather_rows would append it
    method.collectives = Collectives(rank=0, world_size=2, gather_rows=lambda rows: torch.cat([rows, other_rank]))
    method.after_step(targets)
    batch_center = (scores.mean(0, keepdim=True) + other_rank) / 2
    torch.testing.assert_close(method.center, 0.9 * before + 0.1 * batch_center)


def test_prototypes_and_center_travel_with_the_teacher_and_checkpoint() -> None:
    method, restored = _dino(), _dino()
    with torch.no_grad():
        method.prototypes.weight.add_(1.0)
    method.update_teacher(0.0)
    torch.testing.assert_close(method.teacher_prototypes.weight, method.prototypes.weight)
    assert not method.teacher_prototypes.weight.requires_grad
    method.after_step(method.teacher_targets(_views(2)))
    restored.load_state_dict(method.state_dict())
    torch.testing.assert_close(restored.center, method.center)
