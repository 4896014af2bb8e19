"""One fixed sub-network trained on its own (``model.subnet``): the stand-alone twin the oracle's ranking is
checked against (issue 23). Same method and data as the supernet, the network of those widths only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search_spaces import SubnetConfig, get_space
from supernet.io.checkpoint import CheckpointError, load_supernet
from supernet.nn.models import build_supernet
from supernet.train import load_train_settings, main
from supernet.training.loop import train
from supernet.training.setup import SetupError

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = [
    "recipe=none", "model=tiny", "optim.lr=0.5", "data.max_images=128", "data.holdout_size=100", "data.resolution=16",
    "batch_size=32", "progress=false", "ssl.proj_hidden_dim=32", "ssl.pred_hidden_dim=32", "ssl.proj_dim=16",
    "sandwich.enabled=false", "gates.enabled=false", "epochs=1",
]


@pytest.fixture(scope="module")
def per_layer_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    space = get_space("tiny")
    cfg = space.sample(np.random.default_rng(3))
    assert cfg != space.max_config() and len(set(cfg.channels.values())) > 1  # per-layer, not the full width
    path = tmp_path_factory.mktemp("subnet") / "best.json"
    path.write_text(json.dumps({"trial": 7, "config": cfg.to_dict()}))  # as nas.search writes best.json
    return path


@pytest.fixture(scope="module")
def trained(per_layer_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("twin")
    train(load_train_settings([*FAST, f"model.subnet={per_layer_config}", "max_steps=2", "knn.enabled=true",
                               "knn.bank_size=64", "knn.calibration_images=32", f"out_dir={out}"]))
    return out


def test_the_run_trains_exactly_the_sub_network(trained: Path, per_layer_config: Path) -> None:
    cfg = json.loads(per_layer_config.read_text())["config"]
    network, payload = load_supernet(trained / "checkpoint.pt")
    assert payload["subnet"] == cfg and payload["step"] == 2
    assert network.space.name.startswith("tiny@subnet-") and dict(network.space.max_config().channels) == cfg["channels"]
    # the same parameters as that sub-network sliced out of a supernet of the space: nothing more, nothing less
    reference = build_supernet(get_space("tiny"), with_gates=False).extract(SubnetConfig.from_dict(cfg))
    assert {name: tuple(t.shape) for name, t in network.state_dict().items()} == {
        name: tuple(t.shape) for name, t in reference.state_dict().items()}
    record = json.loads((trained / "metrics.jsonl").read_text().splitlines()[0])
    assert record["kind"] == "baseline" and set(record["knn"]) == {"max", "mid", "min"}


def test_a_resumed_run_keeps_its_sub_network(trained: Path, per_layer_config: Path, tmp_path: Path) -> None:
    other = get_space("tiny").min_config()
    path = tmp_path / "other.json"
    path.write_text(other.to_json())
    with pytest.raises(CheckpointError, match="model.subnet: the checkpoint was trained as the sub-network of widths"):
        train(load_train_settings([*FAST, f"model.subnet={path}", f"out_dir={trained}", "resume=true", "max_steps=3",
                                   "knn.enabled=false"]))
    with pytest.raises(CheckpointError, match="trained as the sub-network .* this run asks for the supernet"):
        train(load_train_settings([*FAST, f"out_dir={trained}", "resume=true", "max_steps=3", "knn.enabled=false"]))


def test_bad_sub_network_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.json"
    small.write_text(get_space("small").min_config().to_json())
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    cases = {tmp_path / "missing.json": "does not exist", small: "is a sub-network of 'small', this run's model.space "
             "is 'tiny'; set model.space=small", garbled: "is not a sub-network config"}
    for path, expected in cases.items():
        with pytest.raises(SetupError, match=expected):
            train(load_train_settings([*FAST, f"model.subnet={path}", f"out_dir={tmp_path / 'run'}"]))
        assert main([*FAST, f"model.subnet={path}", f"out_dir={tmp_path / 'run'}"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: model.subnet: ") and expected in err[0], err
