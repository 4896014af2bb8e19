"""Resuming a run whose training device is not the host: the saved RNG states must reach torch as CPU
ByteTensors (issue 21 item 1: a checkpoint mapped onto a GPU made ``torch.set_rng_state`` raise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from supernet.io.checkpoint import load_checkpoint
from supernet.train import load_train_settings
from supernet.training import setup
from supernet.training.loop import train
from supernet.training.setup import build_run, host_rng_state

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = [
    "recipe=none", "model=tiny", "data.max_images=64", "data.holdout_size=200", "data.resolution=16", "batch_size=16",
    "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=32", "ssl.pred_hidden_dim=32", "ssl.proj_dim=16",
    "gates.enabled=false", "sandwich.enabled=false", "epochs=1", "data.pipeline=device",
]


def test_resume_when_the_checkpoint_would_land_off_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors loaded "to the run's device" arrive on ``meta`` here, as they would arrive on a GPU: unusable as
    RNG states. Only a load to the host gives real tensors; resuming must take that path and restore the state."""
    train(load_train_settings([*FAST, f"out_dir={tmp_path}", "max_steps=2"]))
    saved = load_checkpoint(tmp_path / "checkpoint.pt")

    def load_elsewhere(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
        return load_checkpoint(path, map_location="cpu" if map_location == "cpu" and isinstance(map_location, str)
                               else "meta")

    monkeypatch.setattr(setup, "load_checkpoint", load_elsewhere)
    torch.manual_seed(123)  # anything but the saved state
    run = build_run(load_train_settings([*FAST, f"out_dir={tmp_path}", "resume=true"]))
    assert run.step == 2
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    for name, tensor in run.method.state_dict().items():
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(tensor, saved["method"][name], rtol=0, atol=0, msg=name)


def test_host_rng_state_is_a_cpu_byte_tensor_whatever_it_arrived_as() -> None:
    state = torch.get_rng_state()
    for arrived in (state.to(torch.int64), state.view(1, -1).expand(2, -1)[1], state.clone()):
        restored = host_rng_state(arrived)
        assert restored.device.type == "cpu" and restored.dtype == torch.uint8 and restored.is_contiguous()
        torch.set_rng_state(restored)  # raises for anything but a CPU ByteTensor
        assert torch.equal(torch.get_rng_state(), state)
