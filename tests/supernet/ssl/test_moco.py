"""MoCo v2's queue: FIFO over a ring buffer, wrapping around, keys normalised, checkpointed as a buffer."""

from __future__ import annotations

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
