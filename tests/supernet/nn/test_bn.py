"""BatchNorm recalibration: running statistics become the calibration data's statistics."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from search_spaces import get_space
from supernet import build_supernet, recalibrate_bn
from supernet.nn.ops import DynamicBatchNorm2d

pytestmark = pytest.mark.usefixtures("single_thread")


def _batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _tiny_subnets(randomize_bn: Callable, count: int = 1, *, gates: bool = False) -> list[nn.Module]:
    """``count`` identical extracted ``tiny`` sub-networks (independent copies of the same weights)."""
    space = get_space("tiny")
    net = randomize_bn(build_supernet(space, with_gates=gates))
    cfg = space.uniform_config(0.5, gate_threshold=0.5 if gates else None)
    return [net.extract(cfg) for _ in range(count)]


def _tiny_subnet(randomize_bn: Callable, *, gates: bool = False) -> nn.Module:
    return _tiny_subnets(randomize_bn, gates=gates)[0]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(24, 3, 16, 16) * 2 + 0.5


def test_first_bn_gets_the_statistics_of_the_stem_output(randomize_bn: Callable, images: torch.Tensor) -> None:
    sub = _tiny_subnet(randomize_bn)
    recalibrate_bn(sub, images, num_images=len(images), batch_size=len(images))
    stem = F.conv2d(images, sub.conv1.weight, padding=1)  # (N, C, H, W); the stem has no bias
    torch.testing.assert_close(sub.bn1.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    # PyTorch keeps the unbiased variance over all N*H*W values of a channel
    torch.testing.assert_close(sub.bn1.running_var, stem.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert int(sub.bn1.num_batches_tracked) == 1
    assert not sub.training


def test_several_batches_average_with_equal_weight(randomize_bn: Callable, images: torch.Tensor) -> None:
    """momentum=None: the running mean is the plain average of the batch means, i.e. the data mean."""
    sub = _tiny_subnet(randomize_bn)
    recalibrate_bn(sub, images, num_images=len(images), batch_size=6)
    stem = F.conv2d(images, sub.conv1.weight, padding=1)
    torch.testing.assert_close(sub.bn1.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert int(sub.bn1.num_batches_tracked) == 4


@pytest.mark.parametrize("gates", [False, True])
def test_every_bn_gets_the_statistics_of_its_input(randomize_bn: Callable, images: torch.Tensor, gates: bool) -> None:
    """Each BN's running stats equal the mean/var of what reached it in the calibration pass."""
    sub, probe = _tiny_subnets(randomize_bn, 2, gates=gates)
    probe.eval()
    inputs: dict[str, torch.Tensor] = {}
    for name, bn in _batch_norms(probe).items():
        bn.train()
        bn.register_forward_hook(lambda module, args, output, name=name: inputs.__setitem__(name, args[0]))
    with torch.no_grad():
        probe(images)
    recalibrate_bn(sub, images, num_images=len(images), batch_size=len(images))
    bns = _batch_norms(sub)
    assert set(inputs) == set(bns) and (not gates or any(".gate." in name for name in bns))
    for name, bn in bns.items():
        x = inputs[name]
        torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(bn.running_var, x.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5, msg=name)


def test_recalibration_is_deterministic_for_a_seed(randomize_bn: Callable, images: torch.Tensor) -> None:
    subs = iter(_tiny_subnets(randomize_bn, 4))

    def stats(seed: int) -> torch.Tensor:
        sub = next(subs)
        recalibrate_bn(sub, images, num_images=8, batch_size=4, seed=seed)
        return torch.cat([torch.cat([bn.running_mean, bn.running_var]) for bn in _batch_norms(sub).values()])

    assert torch.equal(stats(0), stats(0))
    assert not torch.allclose(stats(0), stats(1))  # another seed draws other images


def test_dataset_and_tensor_inputs_agree(randomize_bn: Callable, images: torch.Tensor) -> None:
    labels = torch.arange(len(images))
    first, second = _tiny_subnets(randomize_bn, 2)
    from_tensor = recalibrate_bn(first, images, num_images=10, batch_size=4, seed=3)
    from_dataset = recalibrate_bn(second, TensorDataset(images, labels), num_images=10, batch_size=4, seed=3)
    for (name, a), b in zip(_batch_norms(from_tensor).items(), _batch_norms(from_dataset).values(), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=0, msg=name)


def test_loader_input_uses_the_first_images(randomize_bn: Callable, images: torch.Tensor) -> None:
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=5, shuffle=False)
    sub = recalibrate_bn(_tiny_subnet(randomize_bn), loader, num_images=5)
    stem = F.conv2d(images[:5], sub.conv1.weight, padding=1)
    torch.testing.assert_close(sub.bn1.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert int(sub.bn1.num_batches_tracked) == 1


def test_supernet_at_active_config_updates_the_active_prefix(randomize_bn: Callable, images: torch.Tensor) -> None:
    space = get_space("tiny")
    net = randomize_bn(build_supernet(space, with_gates=False))
    cfg = space.uniform_config(0.5)
    net.set_active(cfg)
    sub = net.extract(cfg)
    recalibrate_bn(net, images, num_images=16, batch_size=8, seed=4)
    recalibrate_bn(sub, images, num_images=16, batch_size=8, seed=4)
    sub_bns = _batch_norms(sub)
    for name, bn in _batch_norms(net).items():
        width = sub_bns[name].num_features
        assert width < bn.num_features, name
        torch.testing.assert_close(bn.running_mean[:width], sub_bns[name].running_mean, msg=name)
        torch.testing.assert_close(bn.running_var[:width], sub_bns[name].running_var, msg=name)
        # statistics of the inactive channels are reset, not left from another width
        assert torch.equal(bn.running_mean[width:], torch.zeros(bn.num_features - width)), name
        assert torch.equal(bn.running_var[width:], torch.ones(bn.num_features - width)), name
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), sub(x))


def test_recalibration_changes_the_output(randomize_bn: Callable, images: torch.Tensor) -> None:
    sub = _tiny_subnet(randomize_bn).eval()
    with torch.no_grad():
        before = sub(images[:2])
        recalibrate_bn(sub, images, num_images=len(images))
        after = sub(images[:2])
    assert not torch.allclose(before, after)


def test_momentum_is_restored_even_on_error(randomize_bn: Callable, images: torch.Tensor) -> None:
    sub = _tiny_subnet(randomize_bn)
    momenta = {name: 0.01 * (i + 1) for i, name in enumerate(_batch_norms(sub))}
    for name, bn in _batch_norms(sub).items():
        bn.momentum = momenta[name]
    sub.train()
    recalibrate_bn(sub, images, num_images=8)
    assert {name: bn.momentum for name, bn in _batch_norms(sub).items()} == momenta
    assert not sub.training and not any(bn.training for bn in _batch_norms(sub).values())
    with pytest.raises(TypeError, match="recalibrate_bn"):
        recalibrate_bn(sub, [{"image": images}], num_images=8)
    assert {name: bn.momentum for name, bn in _batch_norms(sub).items()} == momenta


def test_bad_arguments(randomize_bn: Callable, images: torch.Tensor) -> None:
    sub = _tiny_subnet(randomize_bn)
    with pytest.raises(ValueError, match="num_images"):
        recalibrate_bn(sub, images, num_images=0)
    with pytest.raises(ValueError, match="no images"):
        recalibrate_bn(sub, [], num_images=8)


def test_dynamic_bn_matches_torch_batchnorm_in_training() -> None:
    """The slicing BN updates running statistics exactly like nn.BatchNorm2d, on its active prefix."""
    dynamic, reference = DynamicBatchNorm2d(16, momentum=None), nn.BatchNorm2d(8, momentum=None)
    x = torch.randn(4, 8, 5, 5)
    for _ in range(3):
        torch.testing.assert_close(dynamic(x), reference(x))
    torch.testing.assert_close(dynamic.running_mean[:8], reference.running_mean)
    torch.testing.assert_close(dynamic.running_var[:8], reference.running_var)
    assert int(dynamic.num_batches_tracked) == int(reference.num_batches_tracked) == 3
