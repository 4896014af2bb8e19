"""SwAV: prototypes normalised before every step and frozen for an epoch, codes over every rank's
batch, the queue, the loss against lightly's on the method's own scores, and the sub-networks' target."""

from __future__ import annotations

import pytest
import torch

from supernet.losses import sinkhorn
from supernet.nn.models import build_supernet
from supernet.ssl import SwAV
from supernet.ssl.base import Collectives
from supernet.training.optim import build_optimizer, parameter_groups

pytestmark = pytest.mark.usefixtures("single_thread")  # small networks: no OpenMP spin-waiting

lightly_loss = pytest.importorskip("lightly.loss")


def _swav(**settings: object) -> SwAV:
    torch.manual_seed(0)
    options = {"proj_hidden_dim": 32, "proj_dim": 8, "pred_hidden_dim": 16, "num_prototypes": 12}
    return SwAV(build_supernet("tiny"), **{**options, **settings})  # type: ignore[arg-type]


def _views(count: int, batch: int = 6, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(count)]


def _scores(method: SwAV, embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
    return [z.detach() @ method.prototypes.weight.detach().T for z in embeddings]


def test_prototypes_are_normalised_before_every_step() -> None:
    method = _swav(freeze_prototypes_epochs=0.0)
    optimizer = build_optimizer("sgd", parameter_groups(method, weight_decay=0.0, decay_encoder=True), lr=5.0, momentum=0.9)
    views = _views(2)
    for _ in range(2):
        with torch.no_grad():
            method.prototypes.weight.mul_(3.0)
        terms, embeddings = method.full_width_loss(views, method.teacher_targets(views), {})
        torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(12))
        torch.testing.assert_close(embeddings[0].norm(dim=1), torch.ones(6))
        optimizer.zero_grad()
        terms["swav"].backward()
        optimizer.step()
        assert float((method.prototypes.weight.detach().norm(dim=1) - 1).abs().max()) > 1e-3  # the step moved them off the sphere


def test_prototypes_frozen_for_the_first_epoch_then_learning() -> None:
    method = _swav(freeze_prototypes_epochs=1.0)
    optimizer = build_optimizer("sgd", parameter_groups(method, weight_decay=0.1, decay_encoder=True), lr=0.5, momentum=0.9)
    views = _views(2)
    for epoch, frozen in ((0.0, True), (0.75, True), (1.0, False)):
        assert method.set_epoch(epoch)["prototypes_frozen"] == float(frozen)
        terms, _ = method.full_width_loss(views, method.teacher_targets(views), {})
        before = method.prototypes.weight.detach().clone()  # normalised by the loss call
        optimizer.zero_grad()
        terms["swav"].backward()
        assert (method.prototypes.weight.grad is None) == frozen
        assert method.projector.mlp[0].weight.grad is not None  # the head learns all along
        optimizer.step()
        assert torch.equal(method.prototypes.weight, before) == frozen  # not even weight decay while frozen


def test_codes_balance_over_every_ranks_batch() -> None:
    method = _swav()
    embeddings = method.project(_views(1))[0].detach()
    other = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(5)), dim=1)
    whole = sinkhorn(torch.cat([embeddings, other]) @ method.prototypes.weight.detach().T)
    method.collectives = Collectives(rank=0, world_size=2, gather_rows=lambda rows: torch.cat([rows, other]))
    torch.testing.assert_close(method.assign(embeddings, 0), whole[:6])
    method.collectives = Collectives(rank=1, world_size=2, gather_rows=lambda rows: torch.cat([other, rows]))
    torch.testing.assert_close(method.assign(embeddings, 0), sinkhorn(torch.cat([other, embeddings]) @ method.prototypes.weight.detach().T)[6:])
    alone = sinkhorn(embeddings @ method.prototypes.weight.detach().T)
    assert not torch.allclose(whole[:6], alone, atol=1e-3)  # gathering changes the codes


@pytest.mark.parametrize("num_local", [0, 2])
def test_full_width_loss_equals_lightlys_on_the_same_scores(num_local: int) -> None:
    # SwAV's equal weighting of every (code, prediction) pair: (G - 1) / (G + L - 1) and L / (G + L - 1)
    method = _swav(global_global_weight=1 / (1 + num_local), global_local_weight=num_local / (1 + num_local))
    method.set_epoch(2.0)
    views = _views(2 + num_local)
    terms, embeddings = method.full_width_loss(views, method.teacher_targets(views), {})
    scores = _scores(method, embeddings)
    theirs = lightly_loss.SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(scores[:2], scores[2:])
    assert float(terms["swav"].detach()) == pytest.approx(float(theirs), rel=1e-5)


def test_queue_fills_from_its_epoch_and_joins_sinkhorn_once_full() -> None:
    method = _swav(queue_length=12, epoch_queue_starts=2)
    views = [_views(2, seed=s) for s in range(5)]
    history = []
    for step, epoch in enumerate((1.5, 2.0, 2.5, 3.0, 3.5)):
        in_use = method.set_epoch(epoch)["queue_in_use"]
        queued = method.queue.clone()
        terms, embeddings = method.full_width_loss(views[step], method.teacher_targets(views[step]), {})
        if in_use:  # the queue's scores join Sinkhorn, their codes are dropped
            scores = _scores(method, embeddings)
            queue_scores = [queued[i] @ method.prototypes.weight.detach().T for i in range(2)]
            theirs = lightly_loss.SwaVLoss(temperature=0.1)(scores[:2], [], queue_scores)
            assert float(terms["swav"].detach()) == pytest.approx(float(theirs), rel=1e-5)
        method.after_step([])
        history.append((in_use, int(method.queue_filled)))
        if step == 3:  # a ring: the fourth batch overwrote the oldest rows, the second batch's
            assert torch.equal(method.queue[:, :6], torch.stack([z.detach() for z in embeddings[:2]]))
    # epoch 1.5: no queue yet; 2.0 and 2.5 fill it (6 rows a step); from 3.0 on it is used
    assert history == [(0.0, 0), (0.0, 6), (0.0, 12), (1.0, 12), (1.0, 12)]
    restored = _swav(queue_length=12, epoch_queue_starts=2)
    restored.load_state_dict(method.state_dict())
    torch.testing.assert_close(restored.queue, method.queue)
    assert int(restored.queue_filled) == 12 and int(restored.queue_pointer) == int(method.queue_pointer)
    # the step reads the fill from a host-side count; a restored method takes it from the checkpoint
    assert restored.set_epoch(3.5)["queue_in_use"] == 1.0


def test_queue_of_other_ranks_rows_keeps_the_newest() -> None:
    method = _swav(queue_length=5)
    first, second = torch.arange(2 * 3 * 8.0).view(2, 3, 8), -torch.arange(2 * 4 * 8.0).view(2, 4, 8) - 1
    method.enqueue(first)  # rows 0..2
    method.enqueue(second)  # rows 3, 4, then 0, 1
    torch.testing.assert_close(method.queue[:, [2, 3, 4, 0, 1]], torch.cat([first[:, 2:], second], dim=1))
    method.enqueue(torch.ones(2, 9, 8))  # more rows than the queue: the last 5
    torch.testing.assert_close(method.queue, torch.ones(2, 5, 8))


def test_sub_networks_regress_the_students_own_embedding_at_momentum_zero() -> None:
    method = _swav()
    views = _views(2)
    method.update_teacher(0.0)  # what the loop does after every step with base_momentum 0
    targets = method.teacher_targets(views)
    embeddings = method.project(views)
    for target, embedding in zip(targets, embeddings):
        torch.testing.assert_close(target, embedding.detach())
    sub = method.encoder.space.uniform_config(0.5)
    method.encoder.set_active(sub)
    terms, _ = method.subnet_loss(views, targets, {})
    assert set(terms) == {"distill"} and -1.0 <= float(terms["distill"].detach()) <= 1.0
