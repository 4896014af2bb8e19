"""MoCo v2's queue: FIFO over a ring buffer, wrapping around, keys normalised, checkpointed as a buffer."""

from __future__ import annotations

import pytest
import torch

from supernet.nn.models import build_supernet
from supernet.ssl import MoCoV2


def _moco(queue_size: int) -> MoCoV2:
    return MoCoV2(build_supernet("tiny"), proj_hidden_dim=16, proj_dim=4, pred_hidden_dim=16, queue_size=queue_size)


def test_queue_wraps_around_and_keeps_the_newest_keys() -> None:
    moco = _moco(queue_size=5)
    first, second = torch.arange(1, 13).float().view(3, 4), torch.arange(13, 29).float().view(4, 4)
    moco.enqueue(first)  # slots 0..2
    moco.enqueue(second)  # slots 3, 4, then wraps to 0, 1
    normalised = torch.nn.functional.normalize(torch.cat([first, second]), dim=1)
    expected = torch.stack([normalised[5], normalised[6], normalised[2], normalised[3], normalised[4]])
    torch.testing.assert_close(moco.queue, expected)
    assert int(moco.queue_pointer) == 2
    assert torch.allclose(moco.queue.norm(dim=1), torch.ones(5))


def test_queue_and_pointer_travel_with_the_state_dict() -> None:
    moco, restored = _moco(queue_size=6), _moco(queue_size=6)
    moco.enqueue(torch.randn(4, 4))
    restored.load_state_dict(moco.state_dict())
    torch.testing.assert_close(restored.queue, moco.queue)
    assert int(restored.queue_pointer) == 4


def test_online_distillation_is_half_infonce_half_kd_on_raw_cosines() -> None:
    """SlimCLR: 0.5 * InfoNCE(cos / 0.2) + 0.5 * T^2 * KL(softmax(cos_full / 5) || softmax(cos_sub / 5))."""
    torch.manual_seed(0)
    moco = MoCoV2(build_supernet("tiny"), proj_hidden_dim=16, proj_dim=4, pred_hidden_dim=16, queue_size=6,
                  online_distillation=True)
    moco.eval()  # BN in eval mode: the same forward twice gives the same projections
    views = [torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)]
    targets = [torch.randn(3, 4), torch.randn(3, 4)]
    cache: dict = {}
    moco.full_width_loss(views, targets, cache)
    sub = moco.encoder.space.uniform_config(0.5)
    moco.encoder.set_active(sub)
    terms, _ = moco.subnet_loss(views, targets, cache)

    def cosines(z: torch.Tensor, key: torch.Tensor) -> torch.Tensor:  # (B, 1 + K): positive, then the queue
        z, key = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(key, dim=1)
        return torch.cat([(z * key).sum(1, keepdim=True), z @ moco.queue.T], dim=1)

    with torch.no_grad():
        sub_z = moco.project(views)
        moco.encoder.set_max()
        full_z = moco.project(views)
    infonce, kd = [], []
    for i, j in ((0, 1), (1, 0)):
        student, teacher = cosines(sub_z[i], targets[j]), cosines(full_z[i], targets[j])
        infonce.append(torch.nn.functional.cross_entropy(student / 0.2, torch.zeros(3, dtype=torch.long)))
        p_teacher = torch.softmax(teacher / 5, dim=1)
        kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / 5, dim=1))).sum(1).mean()
        kd.append(25 * kl)
    assert float(terms["infonce"].detach()) == pytest.approx(0.5 * float(torch.stack(infonce).mean()), rel=1e-4)
    assert float(terms["kd"].detach()) == pytest.approx(0.5 * float(torch.stack(kd).mean()), rel=1e-4)
