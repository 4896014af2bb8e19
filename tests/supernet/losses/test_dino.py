"""DINO's loss, center and teacher-temperature warm-up, by hand and against lightly's DINOLoss."""

from __future__ import annotations

import math

import pytest
import torch

from supernet.losses import dino_center_update, dino_loss, dino_teacher_temperature


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_dino_loss_matches_a_hand_computation() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.3, 0.1]])
    center = torch.tensor([[0.1, 0.0, -0.1]])
    tau_s, tau_t = 0.1, 0.04
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_t = _softmax([(t - c) / tau_t for t, c in zip(t_row, center[0].tolist())])
        p_s = _softmax([s / tau_s for s in s_row])
        total += -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
    loss = dino_loss(student, teacher, center, teacher_temperature=tau_t, student_temperature=tau_s)
    assert float(loss) == pytest.approx(total / 2, rel=1e-5)


def test_dino_loss_is_the_teacher_entropy_when_student_agrees() -> None:
    teacher = torch.tensor([[0.3, -0.2, 0.1, 0.0]])
    # the student at temperature tau_s reproduces the teacher's sharpened distribution exactly
    student = teacher * (0.1 / 0.05)
    p = torch.softmax(teacher / 0.05, dim=1)
    entropy = float(-(p * p.log()).sum())
    assert float(dino_loss(student, teacher, torch.zeros(1, 4), teacher_temperature=0.05)) == pytest.approx(entropy, rel=1e-5)
    assert float(dino_loss(-student, teacher, torch.zeros(1, 4), teacher_temperature=0.05)) > entropy + 0.1


def test_centering_removes_a_shared_offset_and_the_teacher_takes_no_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 6, generator=generator, requires_grad=True)
    teacher = torch.randn(4, 6, generator=generator, requires_grad=True)
    offset = torch.randn(1, 6, generator=generator)
    plain = dino_loss(student, teacher, torch.zeros(1, 6), teacher_temperature=0.04)
    centred = dino_loss(student, teacher + offset, offset, teacher_temperature=0.04)
    assert float(centred.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    plain.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_center_update_is_an_ema_of_the_batch_mean() -> None:
    center = torch.tensor([[1.0, -2.0]])
    logits = torch.tensor([[3.0, 0.0], [5.0, 4.0], [1.0, 2.0]])  # mean [3, 2]
    updated = dino_center_update(center, logits, momentum=0.9)
    torch.testing.assert_close(updated, torch.tensor([[0.9 * 1 + 0.1 * 3, 0.9 * -2 + 0.1 * 2]]))
    torch.testing.assert_close(center, torch.tensor([[1.0, -2.0]]))  # not modified in place
    # the mean of equally sized shards' means is the global mean (what DDP gathers)
    shards = torch.stack([logits[:2].mean(0), logits[1:].mean(0)])
    torch.testing.assert_close(dino_center_update(center, shards), 0.9 * center + 0.1 * shards.mean(0, keepdim=True))


def test_teacher_temperature_warms_up_once_per_epoch() -> None:
    values = [dino_teacher_temperature(epoch, start=0.04, end=0.07, warmup_epochs=30) for epoch in (0, 0.99, 1, 15, 29, 30, 400)]
    assert values[0] == values[1] == pytest.approx(0.04)  # constant within an epoch
    assert values[2] == pytest.approx(0.04 + 0.03 / 29)
    assert values[3] == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert values[4] == values[5] == values[6] == pytest.approx(0.07)
    assert dino_teacher_temperature(5, start=0.04, end=0.07, warmup_epochs=0) == pytest.approx(0.07)
    assert dino_teacher_temperature(0, start=0.04, end=0.07, warmup_epochs=1) == pytest.approx(0.04)


def test_loss_center_and_schedule_match_lightly() -> None:
    import lightly.loss as lightly_loss  # the reference (the test extra installs it)
    generator = torch.Generator().manual_seed(1)
    dim, batch = 16, 5
    teacher = [torch.randn(batch, dim, generator=generator) for _ in range(2)]
    student = [torch.randn(batch, dim, generator=generator) for _ in range(4)]  # 2 global, then 2 local views
    reference = lightly_loss.DINOLoss(output_dim=dim, warmup_teacher_temp=0.04, teacher_temp=0.07,
                                      warmup_teacher_temp_epochs=30, student_temp=0.1, center_momentum=0.9)
    for epoch in (0, 7, 29, 50):
        expected = dino_teacher_temperature(epoch, start=0.04, end=0.07, warmup_epochs=30)
        if epoch < 30:
            assert float(reference.teacher_temp_schedule[epoch]) == pytest.approx(expected, rel=1e-6)
    center = torch.zeros(1, dim)
    for _ in range(2):  # the second call sees the first call's center
        terms = [dino_loss(s, t, center, teacher_temperature=0.05)
                 for j, t in enumerate(teacher) for i, s in enumerate(student) if i != j]
        ours = torch.stack(terms).mean()  # lightly weighs every (teacher, other view) pair equally
        theirs = reference(teacher, student, teacher_temp=0.05)
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
        center = dino_center_update(center, torch.cat(teacher), 0.9)
        torch.testing.assert_close(reference.center.reshape(1, dim), center)
