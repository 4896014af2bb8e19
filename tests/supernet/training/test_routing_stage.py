"""The width routers' training stage: label-free, after the supernet, on a frozen supernet; kept in the checkpoint;
retrained only when its settings or the supernet change; bad settings in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supernet.route import main as route_main
from supernet.settings import SettingsError
from supernet.train import load_train_settings
from supernet.training.loop import train
from supernet.training.setup import SetupError

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = [
    "recipe=none", "model=tiny", "optim.lr=0.5", "data.max_images=128", "data.holdout_size=64", "data.resolution=16",
    "batch_size=32", "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=32", "ssl.pred_hidden_dim=32",
    "ssl.proj_dim=16", "epochs=1", "routing.hidden_channels=8",
]


def payload(out_dir: Path) -> dict:
    return torch.load(out_dir / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("routed_run")
    # one thread, as the tests that compare with it train (the module fixture is set up before single_thread):
    # convolutions summed over another thread count round differently, and the supernets would differ
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_train_settings([*FAST, "routing.enabled=true", f"out_dir={out_dir}"]))
    finally:
        torch.set_num_threads(previous)
    return out_dir


def test_the_routers_train_after_the_supernet_and_leave_it_as_it_was(routed_run: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    train(load_train_settings([*FAST, f"out_dir={plain}"]))
    with_routers, without = payload(routed_run), payload(plain)
    assert "routers" not in without
    assert with_routers["routers"]["step"] == with_routers["step"]
    assert with_routers["routers"]["settings"]["levels"] == [0.25, 0.5, 1.0]
    for name, tensor in without["method"].items():  # the router stage changed neither weights nor statistics
        assert torch.equal(with_routers["method"][name], tensor), name
    records = [json.loads(line) for line in (routed_run / "metrics.jsonl").read_text().splitlines()]
    routing = [r for r in records if r["kind"] == "routing"]
    assert routing and routing[-1]["step"] == routing[-1]["of"] == 4  # one epoch of 128 images at batch 32
    assert all(0.0 <= r["agree/0.25"] <= 1.0 and 0.0 <= r["agree/0.5"] <= 1.0 for r in routing)


def test_a_resumed_run_keeps_its_routers_and_other_settings_retrain_them(routed_run: Path) -> None:
    before = payload(routed_run)["routers"]["state"]
    train(load_train_settings([*FAST, "routing.enabled=true", "resume=true", f"out_dir={routed_run}"]))
    kept = payload(routed_run)["routers"]["state"]
    assert all(torch.equal(before[name], kept[name]) for name in before)
    assert route_main(["--checkpoint", str(routed_run / "checkpoint.pt"), "routing.levels=[0.5,1.0]"]) == 0
    retrained = payload(routed_run)["routers"]
    assert retrained["settings"]["levels"] == [0.5, 1.0]
    assert retrained["state"]["routers.layer2_0.fc2.weight"].shape == (1, 8)


def test_routing_on_a_vit_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"^routing.enabled: the vit space vit_test has no width routers"):
        train(load_train_settings([*FAST, "model=vit_test", "routing.enabled=true", f"out_dir={tmp_path}"]))


@pytest.mark.parametrize(("override", "expected"), [
    ("routing.levels=[0.5,0.25,1.0]", "routing.levels: [0.5, 0.25, 1.0] is not valid; expected two or more ascending"),
    ("routing.levels=[0.25,0.5]", "routing.levels: [0.25, 0.5] is not valid"),
    ("routing.epochs=0", "routing.epochs: 0 is not valid; expected a number >= 1"),
    ("routing.lr=0", "routing.lr: 0.0 is not valid; expected a positive number"),
])
def test_bad_routing_settings_are_one_line(override: str, expected: str) -> None:
    with pytest.raises(SettingsError, match="^" + re.escape(expected)):
        load_train_settings([*FAST, override])


def test_the_route_command_refuses_other_settings_and_missing_checkpoints(routed_run: Path, tmp_path: Path) -> None:
    for argv, expected in (
        (["--checkpoint", str(routed_run / "checkpoint.pt"), "epochs=3"], "error: override 'epochs=3': only routing.*"),
        (["--checkpoint", str(tmp_path / "checkpoint.pt")], "error: checkpoint: "),
        (["--checkpoint", str(routed_run / "config.yaml")], "error: --checkpoint: "),
    ):
        run = subprocess.run([sys.executable, "-m", "supernet.route", *argv], capture_output=True, text=True)
        assert run.returncode == 2, run.stderr
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(expected), run.stderr
