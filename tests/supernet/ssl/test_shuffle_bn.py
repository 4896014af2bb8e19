"""MoCo's Shuffle-BN: split BatchNorm on one device, and a key that depends only on its random BN group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from supernet.nn.models import build_supernet
from supernet.nn.ops import DynamicBatchNorm1d, DynamicBatchNorm2d
from supernet.ssl import MoCoV2
from supernet.ssl.base import Collectives, shuffled_forward
from supernet.training.distributed import split_batch_norms

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_batch_norm_is_batch_norm_of_each_interleaved_group(channels_last: bool) -> None:
    splits, channels = 4, 6
    split = DynamicBatchNorm2d(channels)
    split.batch_splits = splits
    with torch.no_grad():
        split.weight.uniform_(0.5, 1.5)
        split.bias.uniform_(-0.5, 0.5)
    references = [nn.BatchNorm2d(channels) for _ in range(splits)]
    for reference in references:
        reference.load_state_dict(split.state_dict())
    x = torch.randn(16, channels, 5, 5) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = split(x)
    for group, reference in enumerate(references):
        torch.testing.assert_close(out[group::splits], reference(x[group::splits]), rtol=1e-5, atol=1e-5)
    # the running statistics move toward the mean over groups of each group's statistics
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in references]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in references]).mean(0))


def test_split_batch_norm_1d_slices_and_keeps_gradients() -> None:
    norm = DynamicBatchNorm1d(8)
    norm.batch_splits = 2
    x = torch.randn(10, 5, requires_grad=True)  # 5 of 8 channels active
    out = norm(x)
    reference = F.batch_norm(x[1::2], None, None, norm.weight[:5], norm.bias[:5], training=True)
    torch.testing.assert_close(out[1::2], reference)
    out.square().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None and torch.isfinite(x.grad).all()


def test_a_batch_that_does_not_split_is_refused() -> None:
    norm = DynamicBatchNorm2d(3)
    norm.batch_splits = 4
    with pytest.raises(ValueError, match="multiple of ssl.bn_splits"):
        norm(torch.randn(6, 3, 2, 2))


def _moco(*, shuffle_bn: bool) -> MoCoV2:
    torch.manual_seed(0)
    moco = MoCoV2(build_supernet("tiny", with_gates=False), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16,
                  queue_size=32, shuffle_bn=shuffle_bn)
    if shuffle_bn:
        split_batch_norms(moco, 4)
    return moco.train()


def _keys(moco: MoCoV2, images: torch.Tensor) -> torch.Tensor:
    return moco.teacher_targets([images, images], generator=torch.Generator().manual_seed(7))[0]


def test_a_key_depends_only_on_the_random_group_it_was_normalised_with() -> None:
    """Without Shuffle-BN a key depends on every sample of the batch (the batch's statistics); with it,
    only on the samples of its random BN group, which are not the ones its query was normalised with."""
    batch, splits = 16, 4
    images = torch.randn(batch, 3, 16, 16)
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(7))  # the shuffle _keys draws
    position = torch.argsort(order)
    key_group = [set(order[position[i] % splits :: splits].tolist()) for i in range(batch)]
    query_group = [set(range(i % splits, batch, splits)) for i in range(batch)]

    sample = 0
    outside = next(j for j in range(batch) if j not in key_group[sample])
    inside = next(j for j in key_group[sample] if j != sample)
    changed_outside, changed_inside = images.clone(), images.clone()
    changed_outside[outside] += 1.0
    changed_inside[inside] += 1.0

    shuffled = _moco(shuffle_bn=True)
    keys = _keys(shuffled, images)
    torch.testing.assert_close(_keys(shuffled, changed_outside)[sample], keys[sample], rtol=0, atol=1e-6)
    assert not torch.allclose(_keys(shuffled, changed_inside)[sample], keys[sample], atol=1e-4)

    plain = _moco(shuffle_bn=False)
    assert not torch.allclose(_keys(plain, changed_outside)[sample], _keys(plain, images)[sample], atol=1e-4)

    # the key's group is drawn at random, so it is not the query's: of each sample's 3 BN partners as a
    # key, about a quarter (1 in 4 groups) were also its partners as a query
    shared = sum(len((key_group[i] & query_group[i]) - {i}) for i in range(batch)) / (batch * (batch // splits - 1))
    assert shared < 0.5


def test_shuffled_forward_returns_each_sample_its_own_output() -> None:
    network = nn.Linear(5, 3)
    images = torch.randn(12, 5)
    out = shuffled_forward(network, images, Collectives(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, network(images))


def test_shuffled_forward_over_two_ranks_gives_each_rank_its_rows() -> None:
    """Two ranks simulated in one process: each rank's shard of the batch comes back in its order."""
    network = nn.Linear(5, 3)
    batch = torch.randn(8, 5)  # the global batch; rank r holds rows r, r + 2, ...
    shards = [batch[0::2], batch[1::2]]
    # Each call gathers first the images, then the outputs of every rank; a rank's outputs are what
    # it embeds of the permuted batch, which this simulation computes for the other rank up front.
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    outputs = [network(batch[order][rank::2]) for rank in range(2)]
    for rank in range(2):
        calls = iter([torch.cat(shards), torch.cat(outputs)])
        collectives = Collectives(rank=rank, world_size=2, gather_rows=lambda rows, calls=calls: next(calls))
        out = shuffled_forward(network, shards[rank], collectives, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, network(shards[rank]))
