"""Losses of the hot loop run without host syncs (issue 21 item 7): no device value read back on the host
(``aten._local_scalar_dense``, what ``bool()``, ``float()`` and ``.item()`` dispatch) and no host tensor made and
copied to the device per call. Inputs live on ``meta``, standing for the GPU: anything the loss makes on the
host, or reads from the device, shows up in the recorded ops."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from supernet.losses import flops_budget_loss, nt_xent


class _Recorder(TorchDispatchMode):
    """Every aten op dispatched inside the block, with the devices it touched."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, set[str]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        devices = {leaf.device.type for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        if isinstance(kwargs.get("device"), torch.device):
            devices.add(kwargs["device"].type)
        self.ops.append((str(func), devices))
        return func(*args, **kwargs)

    def host_work(self) -> list[str]:
        return [name for name, devices in self.ops if "cpu" in devices or "_local_scalar_dense" in name]


@pytest.mark.parametrize("full_flops", [100.0, 100])
def test_budget_loss_reads_nothing_back_and_copies_nothing_over(full_flops: float) -> None:
    gated = torch.empty(8, device="meta", requires_grad=True)
    with _Recorder() as recorder:
        loss = flops_budget_loss(gated, full_flops, 0.5)
        loss.backward()
    assert loss.device.type == "meta" and recorder.host_work() == []


def test_budget_loss_keeps_its_values_and_checks() -> None:
    gated = torch.tensor([30.0, 50.0, 70.0, 90.0])  # mean 60
    for full in (100.0, torch.tensor(100.0), torch.tensor([100.0])):
        assert float(flops_budget_loss(gated, full, 0.5, 5.0)) == pytest.approx(5.0 * 0.1**2, rel=1e-6)
    for bad in (0.0, -1.0, torch.tensor(0.0), torch.tensor([1.0, 2.0])):
        with pytest.raises(ValueError, match="full_flops"):
            flops_budget_loss(gated, bad, 0.5)


def test_nt_xent_makes_its_indices_on_the_device_once() -> None:
    a, b = torch.empty(6, 4, device="meta"), torch.empty(6, 4, device="meta")
    nt_xent(a, b)  # the first call per device and batch may build the cached indices (on that device)
    with _Recorder() as recorder:
        loss = nt_xent(a, b)
    assert loss.device.type == "meta" and recorder.host_work() == []
    assert not any("arange" in name or "eye" in name for name, _ in recorder.ops), "indices rebuilt per call"


def test_nt_xent_equals_the_per_call_construction() -> None:
    generator = torch.Generator().manual_seed(0)
    for batch in (2, 5, 5, 7):
        a, b = torch.randn(batch, 8, generator=generator), torch.randn(batch, 8, generator=generator)
        z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
        logits = (z @ z.T / 0.3).masked_fill(torch.eye(2 * batch, dtype=torch.bool), float("-inf"))
        partners = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
        torch.testing.assert_close(nt_xent(a, b, 0.3), torch.nn.functional.cross_entropy(logits, partners))


def test_nt_xent_indices_made_under_inference_mode_still_train() -> None:
    with torch.inference_mode():
        nt_xent(torch.randn(3, 4), torch.randn(3, 4))  # caches the indices of batch 3
    a = torch.randn(3, 4, requires_grad=True)
    nt_xent(a, torch.randn(3, 4)).backward()
    assert a.grad is not None and bool(a.grad.abs().sum() > 0)
