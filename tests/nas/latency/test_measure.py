from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from nas.latency.measure import Anchor, Latency, cuda_available, measure_latencies, measure_latency


def conv_net(channels: int) -> nn.Sequential:
    """Two 3x3 convs; the second costs channels**2, so 4x the channels is 16x its FLOPs."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
    )


class Recorder(nn.Module):
    """Remembers which batch it saw (by its first value) and whether it ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []
        self.training_flags: list[bool] = []
        self.inference_flags: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(float(x.flatten()[0]))
        self.training_flags.append(self.training)
        self.inference_flags.append(torch.is_inference_mode_enabled())
        return x


class SleepsForInput(nn.Module):
    """An input-dependent network: sleeps as many seconds as the batch's first value."""

    input_dependent = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(x.flatten()[0]))
        return x


class Machine:
    """A machine whose speed changes: every network slows down threefold after ``calls`` forwards in all."""

    def __init__(self, calls: int) -> None:
        self.calls, self.seen = calls, 0

    def slowdown(self) -> float:
        self.seen += 1
        return 1.0 if self.seen <= self.calls else 3.0


class Sleeps(nn.Module):
    def __init__(self, seconds: float, machine: Machine) -> None:
        super().__init__()
        self.seconds, self.machine = seconds, machine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds * self.machine.slowdown())
        return x


def test_cpu_measurement_is_recorded() -> None:
    latency = measure_latency(conv_net(8), torch.randn(4, 3, 16, 16), warmup=1, repeats=5, threads=1)
    assert latency.seconds > 0
    assert latency.batch_size == 4
    assert latency.repeats == 5
    assert latency.method == "perf_counter"
    assert latency.device.startswith("cpu") and "(1 thread)" in latency.device
    assert json.loads(json.dumps(latency.to_dict())) == latency.to_dict()
    assert "batch 4" in str(latency)


def test_more_compute_measures_slower() -> None:
    inputs = torch.randn(8, 3, 32, 32)
    small = measure_latency(conv_net(8), inputs, warmup=2, repeats=9, threads=1)
    large = measure_latency(conv_net(32), inputs, warmup=2, repeats=9, threads=1)  # 16x the second conv
    assert large.seconds > 2 * small.seconds


def test_thread_count_restored_and_training_mode_restored() -> None:
    before = torch.get_num_threads()
    model = conv_net(4).train()
    measure_latency(model, torch.randn(1, 3, 8, 8), warmup=0, repeats=2, threads=1)
    assert torch.get_num_threads() == before
    assert model.training


def test_thread_count_restored_after_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        measure_latency(nn.Conv2d(5, 5, 1), torch.randn(1, 3, 8, 8), warmup=0, repeats=1, threads=1)
    assert torch.get_num_threads() == before


def test_runs_in_eval_and_inference_mode_cycling_inputs() -> None:
    model = Recorder().train()
    batches = [torch.full((2, 3), float(i)) for i in range(3)]
    latency = measure_latency(model, batches, warmup=1, repeats=6)
    assert model.seen == [0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0]  # 1 warm-up, then 6 timed, cycled
    assert not any(model.training_flags)
    assert all(model.inference_flags)
    assert latency.batch_size == 2


def test_an_input_dependent_network_costs_the_mean_over_its_inputs() -> None:
    # Two cheap inputs and one expensive one: serving them costs their mean (the median would price the cheap
    # one alone); each input's own figure is the median of its repeats.
    batches = [torch.full((1, 1), 0.001), torch.full((1, 1), 0.001), torch.full((1, 1), 0.05)]
    latency = measure_latency(SleepsForInput(), batches, warmup=0, repeats=6)
    assert 0.015 <= latency.seconds < 0.03


def test_anchored_timing_cancels_a_machine_that_slows_down_midway() -> None:
    machine = Machine(calls=2 * 5 + 2 * 10)  # warm-ups of both, then half of the 20 rounds at full speed
    anchor = Anchor(Sleeps(0.01, machine), name="sleeps 10 ms", resolution=1, known={"eager float32 batch 1": 0.01})
    network = Sleeps(0.02, machine)
    anchored = measure_latencies([network], torch.zeros(1, 3, 1, 1), warmup=5, repeats=20, anchor=anchor)[0]
    assert anchored.anchor == "sleeps 10 ms" and anchored.anchor_seconds == 0.01
    assert anchored.ratio == pytest.approx(2.0, rel=0.2)  # each round's ratio is 2 whatever the machine's speed
    assert anchored.seconds == pytest.approx(anchored.ratio * 0.01)
    machine.seen, machine.calls = 0, 10 + 10  # its warm-up, then half its rounds at full speed
    plain = measure_latencies([Sleeps(0.02, machine)], torch.zeros(1, 3, 1, 1), warmup=10, repeats=20)[0]
    assert plain.seconds > 0.03  # half its rounds ran slowed, and the median lands among them or between


def test_a_fast_network_is_timed_for_at_least_timed_seconds() -> None:
    """repeats is a floor: rounds go on until they have taken timed_seconds, so a 5 ms network timed for 0.2 s runs
    about 40 rounds where repeats asks for 3, and a slow one still runs its 3."""
    recorder = Recorder()
    fast = measure_latencies([nn.Sequential(Sleeps(0.005, Machine(10**6)), recorder)], torch.zeros(1, 3, 1, 1),
                             warmup=0, repeats=3, timed_seconds=0.2)[0]
    assert 30 <= fast.repeats <= 41 and len(recorder.seen) == fast.repeats  # sleep oversleeps: fewer, never more
    assert fast.seconds == pytest.approx(0.005, rel=0.5)
    slow = measure_latency(Sleeps(0.05, Machine(10**6)), torch.zeros(1, 3, 1, 1), warmup=0, repeats=3, timed_seconds=0.1)
    assert slow.repeats == 3
    assert measure_latency(Sleeps(0.001, Machine(10**6)), torch.zeros(1, 3, 1, 1), warmup=0, repeats=4).repeats == 4


@pytest.mark.parametrize(
    ("inputs", "kwargs", "match"),
    [
        ([], {}, "empty"),
        (torch.zeros(1, 3), {"timed_seconds": -1.0}, "timed_seconds"),
        ([torch.zeros(1, 3), torch.zeros(2, 3)], {}, "batch size"),
        (torch.zeros(1, 3), {"repeats": 0}, "repeats"),
        (torch.zeros(1, 3), {"warmup": -1}, "warmup"),
        (torch.zeros(1, 3), {"threads": 0}, "threads"),
        (torch.zeros(1, 3), {"device": "meta"}, "not supported"),
    ],
)
def test_rejects_bad_arguments(inputs: object, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        measure_latency(nn.Identity(), inputs, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(cuda_available(), reason="checks the message when CUDA is absent")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure_latency(nn.Identity(), torch.zeros(1, 3), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events() -> None:
    inputs = torch.randn(8, 3, 32, 32)
    small = measure_latency(conv_net(8), inputs, device="cuda", warmup=3, repeats=10)
    large = measure_latency(conv_net(256), inputs, device="cuda", warmup=3, repeats=10)
    assert isinstance(small, Latency)
    assert small.method == "cuda_events"
    assert small.device.startswith("cuda:0 ")
    assert small.batch_size == 8
    assert 0 < small.seconds < 1.0
    assert large.seconds > small.seconds


class MovedOnTo(nn.Sequential):
    """A network that, sent ``.to()`` a device, gets new tensors, as a CPU network sent to a GPU does (on one CPU
    ``.to("cpu")`` keeps the same tensors, which would hide where the move happens)."""

    def to(self, *args, **kwargs):  # type: ignore[override]
        return self._apply(lambda tensor: tensor.clone())


def test_a_timed_network_can_still_be_recalibrated_and_trained() -> None:
    """Issue 21 item 10: moved inside ``torch.inference_mode()`` the caller's parameters became inference tensors,
    which BatchNorm recalibration and training then refuse to update."""
    from supernet.nn.bn import recalibrate_bn

    torch.manual_seed(0)
    model = MovedOnTo(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    measure_latency(model, torch.randn(2, 3, 6, 6), warmup=1, repeats=2)
    assert not any(tensor.is_inference() for tensor in [*model.parameters(), *model.buffers()])
    recalibrate_bn(model, torch.randn(16, 3, 6, 6), num_images=16, batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[0].weight.detach().clone()
    model.train()
    model(torch.randn(4, 3, 6, 6)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, before)
