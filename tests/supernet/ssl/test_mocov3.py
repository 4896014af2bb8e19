"""MoCo v3: heads as moco-v3's builder.py, the symmetric loss over gathered keys, the frozen patch
projection of a ViT (student, teacher, optimizer, checkpoint), SlimCLR's online distillation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from supernet.losses import mocov3_loss
from supernet.nn.models import build_supernet
from supernet.nn.ops import DynamicBatchNorm1d
from supernet.ssl import MoCoV3
from supernet.ssl.base import Collectives
from supernet.training.optim import build_optimizer, parameter_groups

pytestmark = pytest.mark.usefixtures("single_thread")  # small networks: no OpenMP spin-waiting


def _mocov3(space: str = "tiny", **settings: object) -> MoCoV3:
    torch.manual_seed(0)
    options = {"proj_hidden_dim": 32, "proj_dim": 8, "pred_hidden_dim": 16, "proj_layers": 3, "temperature": 0.2}
    return MoCoV3(build_supernet(space), **{**options, **settings})  # type: ignore[arg-type]


def _views(count: int, side: int = 16, batch: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, side, side, generator=generator) for _ in range(count)]


def _layout(head: nn.Module) -> list[str]:
    names = []
    for module in head:  # type: ignore[attr-defined]
        if isinstance(module, nn.Linear):
            names.append("linear" if module.bias is None else "linear+bias")
        elif isinstance(module, DynamicBatchNorm1d):
            names.append("bn" if module.affine else "bn-no-affine")
        elif isinstance(module, nn.ReLU):
            names.append("relu")
    return names


def test_heads_follow_builder_py() -> None:
    cnn, vit = _mocov3("tiny"), _mocov3("vit_test")
    hidden = ["linear", "bn", "relu"]
    assert _layout(cnn.projector) == [*hidden, *hidden, "linear", "bn-no-affine"]  # 3 layers, last BN without affine
    assert _layout(cnn.predictor) == [*hidden, "linear"]  # MoCo_ResNet: no BN after the predictor
    assert _layout(vit.predictor) == [*hidden, "linear", "bn-no-affine"]  # MoCo_ViT
    assert _layout(_mocov3("tiny", proj_layers=2).projector) == [*hidden, "linear", "bn-no-affine"]


@pytest.mark.parametrize("rank", [0, 1])
def test_full_width_loss_is_the_symmetric_sum_over_every_ranks_keys(rank: int) -> None:
    method = _mocov3()
    views = _views(2)
    targets = method.teacher_targets(views)
    others = iter([torch.randn(6, 8, generator=torch.Generator().manual_seed(7 + i)) for i in range(2)])

    def gather(rows: torch.Tensor) -> torch.Tensor:  # the other rank's keys of the same view, in rank order
        other = next(others)
        return torch.cat([rows, other] if rank == 0 else [other, rows])

    method.collectives = Collectives(rank=rank, world_size=2, gather_rows=gather)
    cache: dict = {}
    terms, projections = method.full_width_loss(views, targets, cache)
    q1, q2 = (method.predictor(z).detach() for z in projections)
    k1, k2 = cache["keys"]
    assert k1.shape == (12, 8) and torch.equal(k1[rank * 6:(rank + 1) * 6], targets[0])
    expected = mocov3_loss(q1, k2, temperature=0.2, rank=rank) + mocov3_loss(q2, k1, temperature=0.2, rank=rank)
    assert float(terms["mocov3"].detach()) == pytest.approx(float(expected), rel=1e-5)


def test_vit_patch_projection_is_frozen_at_mocov3s_random_initialisation() -> None:
    method = _mocov3("vit_test")
    projection = method.encoder.patch_embed.proj
    fan_in = projection.weight[0].numel()
    bound = math.sqrt(6 / (fan_in + projection.weight.shape[0]))  # vits.py's xavier-uniform bound
    assert not projection.weight.requires_grad and not projection.bias.requires_grad
    assert float(projection.weight.abs().max()) <= bound * (1 + 1e-6)
    assert float(projection.weight.abs().max()) > 0.9 * bound and float(projection.weight.std()) > 0.5 * bound / math.sqrt(3)
    assert torch.equal(projection.bias, torch.zeros_like(projection.bias))
    torch.testing.assert_close(method.teacher_encoder.patch_embed.proj.weight, projection.weight)
    frozen = {id(projection.weight), id(projection.bias)}
    groups = parameter_groups(method, weight_decay=0.1, decay_encoder=True)
    assert not frozen & {id(p) for group in groups for p in group["params"]}  # the optimizer never holds it
    assert all(p.requires_grad for name, p in method.named_parameters() if not name.startswith(("encoder.patch_embed", "teacher_")))
    before = projection.weight.detach().clone()
    optimizer = build_optimizer("adamw", groups, lr=1e-2, momentum=0.9)
    views = _views(2, side=32)
    for momentum in (0.9, 0.5):
        terms, _ = method.full_width_loss(views, method.teacher_targets(views), {})
        optimizer.zero_grad()
        terms["mocov3"].backward()
        assert projection.weight.grad is None and method.encoder.blocks[0].mlp.fc1.weight.grad is not None
        optimizer.step()
        method.update_teacher(momentum)
    assert torch.equal(projection.weight, before)
    assert torch.equal(method.teacher_encoder.patch_embed.proj.weight, before)  # copied, not EMA-rounded
    restored = _mocov3("vit_test")
    restored.load_state_dict(method.state_dict())
    assert not restored.encoder.patch_embed.proj.weight.requires_grad
    assert torch.equal(restored.encoder.patch_embed.proj.weight, before)


def test_cnns_have_nothing_to_freeze() -> None:
    assert all(p.requires_grad for name, p in _mocov3("tiny").named_parameters() if not name.startswith("teacher_"))
    unfrozen = _mocov3("vit_test", freeze_patch_embed=False)
    assert unfrozen.encoder.patch_embed.proj.weight.requires_grad


def test_online_distillation_is_half_mocov3_half_kd_of_the_logits() -> None:
    """SlimCLR (s_mocov3.py, seed_loss): 0.5 * the sub-network's MoCo v3 loss + 0.5 * KD at T = 1 of
    its cosines toward the full network's, against the same keys, both summed over the two pairs."""
    method = _mocov3(online_distillation=True)
    method.eval()  # BN in eval mode: the same forward twice gives the same outputs
    views = _views(2)
    targets = [torch.randn(6, 8), torch.randn(6, 8)]
    cache: dict = {}
    method.full_width_loss(views, targets, cache)
    method.encoder.set_active(method.encoder.space.uniform_config(0.5))
    terms, _ = method.subnet_loss(views, targets, cache)
    with torch.no_grad():
        sub = [method.predictor(z) for z in method.project(views)]
        method.encoder.set_max()
        full = [method.predictor(z) for z in method.project(views)]

    def cosines(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(q, dim=1) @ nn.functional.normalize(k, dim=1).T

    contrastive = kd = 0.0
    for i, j in ((0, 1), (1, 0)):
        contrastive += float(mocov3_loss(sub[i], targets[j], temperature=0.2))
        p_full = torch.softmax(cosines(full[i], targets[j]), dim=1)
        kd += float((p_full * (p_full.log() - torch.log_softmax(cosines(sub[i], targets[j]), dim=1))).sum(1).mean())
    assert float(terms["infonce"].detach()) == pytest.approx(0.5 * contrastive, rel=1e-4)
    assert float(terms["kd"].detach()) == pytest.approx(0.5 * kd, rel=1e-4)
