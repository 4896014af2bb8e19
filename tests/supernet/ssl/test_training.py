"""Every method trains through the real loop: on a fixed batch its full-width loss falls, with two
crops and with SSLight multi-crop, the sandwich on; the loop hands DINO its schedules and updates
DINO's center before the teacher moves; SwAV's prototypes stay frozen for the first epoch and its
queue fills from its epoch; MoCo v3's frozen patch projection survives training and a resume; the
gated pass takes VICReg (Krishna et al.)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from supernet.data.sampling import ViewDataset
from supernet.data.views import build_views
from supernet.train import load_train_settings
from supernet.training.loop import scalars, train_step
from supernet.training.setup import Run, build_run, save_checkpoint, view_options

pytestmark = pytest.mark.usefixtures("single_thread")  # small networks: no OpenMP spin-waiting

# 100 epochs of 4 steps (64 images): the cosine lr stays near its peak over the few steps taken here.
TINY = ["recipe=none", "model=tiny", "data.max_images=64", "data.holdout_size=200", "data.resolution=16",
        "batch_size=16", "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=64", "ssl.pred_hidden_dim=64",
        "ssl.proj_dim=32", "epochs=100", "optim.warmup_epochs=0", "gates.enabled=false", "sandwich.num_subnets=3",
        "sandwich.stage_min_widths=[0.5]", "sandwich.stage_ends=[1.0]"]
TWO_CROP, SSLIGHT = ["views=two_crop"], ["views=sslight", "views.num_local=2"]

# Per method: its settings for a tiny network, and how far the mean of the last 3 of 10 steps must
# fall below the first 3's, in the loss's own units: at most half the smallest fall seen with seeds
# 0, 1 and 2 (SimCLR 0.6, SimSiam 0.2, DINO 1.6, VICReg 6.7; SwAV 0.8 and MoCo v3 0.9, the smallest
# of the tiny network with both samplers and vit_test with two crops).
# DINO's head needs BN at these widths: without it the bottleneck's norm is ~1e-3 at DINO's
# initialisation (std 0.02), so normalising it multiplies the first gradient a thousandfold.
# VICReg's unnormalised expander needs a smaller SGD rate than the others (the paper uses LARS).
METHODS = {
    "simclr": (["ssl=simclr", "optim.lr=0.5"], 0.2),
    "simsiam": (["ssl=simsiam", "optim.lr=0.5"], 0.1),
    "dino": (["ssl=dino", "optim.lr=0.5", "ssl.num_prototypes=128", "ssl.head_batch_norm=true"], 0.3),
    "vicreg": (["ssl=vicreg", "optim.lr=0.05"], 1.0),
    "swav": (["ssl=swav", "optim.lr=0.5", "ssl.num_prototypes=32"], 0.4),
    "mocov3": (["ssl=mocov3", "optim.lr=0.5"], 0.45),
}


def _run(tmp_path: Path, overrides: list[str]) -> tuple[Run, list[torch.Tensor]]:
    """A training run and one fixed batch of its views (the seeded augmentations of 16 images)."""
    cfg = load_train_settings([*TINY, *overrides, f"out_dir={tmp_path}"])
    run = build_run(cfg)
    views, _ = build_views(cfg.views.name, cfg.data.resolution, view_options(cfg))
    dataset = ViewDataset(run.data.train, views, seed=cfg.seed)
    return run, default_collate([dataset[i] for i in range(cfg.batch_size)])


def _steps(run: Run, batch: list[torch.Tensor], count: int) -> list[dict[str, float]]:
    records = []
    for _ in range(count):
        records.append(scalars(train_step(run, batch)))
        run.step += 1
    return records


@pytest.mark.parametrize("views", [TWO_CROP, SSLIGHT], ids=["two_crop", "sslight"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_full_width_loss_falls_on_a_fixed_batch(tmp_path: Path, method: str, views: list[str]) -> None:
    overrides, margin = METHODS[method]
    run, batch = _run(tmp_path, [*overrides, *views])
    assert len(batch) == (2 if views is TWO_CROP else 4)
    records = _steps(run, batch, 10)  # the loop stops with an error if the features collapse
    losses = [sum(value for name, value in record.items() if name.startswith("max/")) for record in records]
    assert all(np.isfinite(losses))
    assert all(record["num_subnets"] == 3.0 for record in records)  # the sandwich trained each step
    assert all(np.isfinite(record["min/distill"]) for record in records)  # sub-networks regress the teacher
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - margin, losses


def test_loop_passes_dino_its_teacher_temperature_and_centers_before_the_teacher_moves(tmp_path: Path) -> None:
    # 4 steps per epoch, warm-up over 3 epochs; momentum 0 makes the teacher jump to the student at
    # the EMA update, so a center computed after it would differ from one computed before
    overrides, _ = METHODS["dino"]
    run, batch = _run(tmp_path, [*overrides, "ssl.warmup_teacher_temperature_epochs=3", "ssl.base_momentum=0.0",
                                 "ssl.momentum_schedule=constant", "ssl.freeze_prototypes_epochs=0"])
    assert run.steps_per_epoch == 4
    method = run.method
    records = []
    for _ in range(9):
        center = method.center.clone()
        with torch.no_grad():
            scores = torch.cat([method.teacher_prototypes(t) for t in method.teacher_targets(batch)])
        records.append(scalars(train_step(run, batch)))
        run.step += 1
        torch.testing.assert_close(method.center, 0.9 * center + 0.1 * scores.mean(0, keepdim=True))
    temperatures = [record["teacher_temperature"] for record in records]
    assert temperatures == pytest.approx([0.04] * 4 + [0.055] * 4 + [0.07])  # one value per epoch
    assert not torch.equal(method.center, torch.zeros_like(method.center))


def test_loop_freezes_swav_prototypes_for_an_epoch_and_fills_its_queue_from_its_epoch(tmp_path: Path) -> None:
    overrides, _ = METHODS["swav"]
    # 4 steps per epoch of 16 images; the queue holds two batches and fills from epoch 1
    run, batch = _run(tmp_path, [*overrides, "ssl.freeze_prototypes_epochs=1", "ssl.queue_length=32",
                                 "ssl.epoch_queue_starts=1"])
    method = run.method
    assert run.steps_per_epoch == 4
    initial = torch.nn.functional.normalize(method.prototypes.weight.detach(), dim=1)
    records = _steps(run, batch, 4)
    torch.testing.assert_close(method.prototypes.weight, initial)  # three optimizer steps a batch, none moved them
    records += _steps(run, batch, 4)
    assert float((method.prototypes.weight.detach() - initial).abs().max()) > 1e-3
    assert [record["prototypes_frozen"] for record in records] == [1.0] * 4 + [0.0] * 4
    assert [record["queue_in_use"] for record in records] == [0.0] * 6 + [1.0] * 2
    assert int(method.queue_filled) == 32 and all(np.isfinite(record["max/swav"]) for record in records)


def test_mocov3_patch_projection_stays_frozen_through_training_and_a_resume(tmp_path: Path) -> None:
    overrides, _ = METHODS["mocov3"]
    run, batch = _run(tmp_path, [*overrides, *VIT, "ssl.freeze_patch_embed=true"])
    patch, teacher_patch = run.encoder.patch_embed.proj, run.method.teacher_encoder.patch_embed.proj
    before = patch.weight.detach().clone()
    records = _steps(run, batch, 3)
    assert all(np.isfinite(record["max/mocov3"]) and np.isfinite(record["min/distill"]) for record in records)
    assert torch.equal(patch.weight, before) and torch.equal(teacher_patch.weight, before)
    assert not torch.equal(run.encoder.blocks[0].mlp.fc1.weight, run.method.teacher_encoder.blocks[0].mlp.fc1.weight)
    save_checkpoint(run)
    resumed = build_run(load_train_settings([*TINY, *overrides, *VIT, "resume=true", f"out_dir={tmp_path}"]))
    assert resumed.step == 3 and not resumed.encoder.patch_embed.proj.weight.requires_grad
    assert torch.equal(resumed.encoder.patch_embed.proj.weight, before)
    held = {id(p) for group in resumed.optimizer.param_groups for p in group["params"]}
    assert id(resumed.encoder.patch_embed.proj.weight) not in held and id(resumed.encoder.patch_embed.proj.bias) not in held


def test_gated_pass_takes_vicreg_against_the_dense_network(tmp_path: Path) -> None:
    overrides, _ = METHODS["vicreg"]
    run, batch = _run(tmp_path, [*overrides, "gates.enabled=true", "gates.sample_widths=false", "gates.link=dense"])
    record = _steps(run, batch, 1)[0]
    assert {"gated/invariance", "gated/variance", "gated/covariance", "gated/budget"} <= set(record)
    assert "gated/distill" not in record
    assert all(np.isfinite(record[name]) for name in record if name.startswith("gated/"))


# Every ssl= choice, on the CNN `tiny` (the four above already are) and on the ViT `vit_test` (32 px,
# patch 8): settings, the margin (half the smallest fall seen with seeds 0, 1 and 2 on either network),
# and the step the comparison starts at. MoCo's loss first rises while its queue fills with real
# negatives (2 batches at queue_size=32), so its first window starts once the queue is full. MoCo and
# SimCLR-momentum keep Shuffle-BN in 2 groups of 8 (their configs' 8 groups leave 2 samples a group here).
ALL_METHODS = {
    **{name: (overrides, margin, 0) for name, (overrides, margin) in METHODS.items()},
    "byol": (["ssl=byol", "optim.lr=0.5"], 0.25, 0),
    "moco": (["ssl=moco", "optim.lr=0.5", "ssl.queue_size=32", "ssl.bn_splits=2"], 0.1, 4),
    "simclr_momentum": (["ssl=simclr_momentum", "optim.lr=0.5", "ssl.bn_splits=2"], 0.2, 0),
}
VIT = ["model=vit_test", "data.resolution=32"]


@pytest.mark.parametrize("network", ["tiny", "vit_test"])
@pytest.mark.parametrize("method", sorted(ALL_METHODS))
def test_every_method_trains_each_network_family(tmp_path: Path, method: str, network: str) -> None:
    if network == "tiny" and method in METHODS:
        pytest.skip("covered with both view samplers above")
    overrides, margin, start = ALL_METHODS[method]
    run, batch = _run(tmp_path, [*overrides, *TWO_CROP, *(VIT if network == "vit_test" else [])])
    assert run.space.family == ("vit" if network == "vit_test" else "resnet")
    records = _steps(run, batch, start + 10)
    losses = [sum(value for name, value in record.items() if name.startswith("max/")) for record in records]
    assert all(np.isfinite(losses)) and all(np.isfinite(record["min/distill"]) for record in records)
    assert np.mean(losses[-3:]) < np.mean(losses[start:start + 3]) - margin, losses
