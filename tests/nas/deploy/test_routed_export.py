"""nas.export of a routed config: its pieces, routing table and runner compute the routed forward (torch.export
and onnxruntime), which equals the supernet at each input's route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.deploy.routed import load_runner
from nas.export import main
from nas.study.oracle import build_oracle
from search_spaces import SubnetConfig
from supernet.io.checkpoint import load_supernet
from tests.nas.conftest import TINY_RESOLUTION, oracle_settings, routed_config_that_splits

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed (pip install slimnas[onnx])")
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def routed_export(routed_checkpoint: Path, search_overrides: list[str], tmp_path_factory) -> tuple[Path, SubnetConfig]:
    supernet, payload = load_supernet(routed_checkpoint)
    oracle = build_oracle(supernet.eval(), payload, *oracle_settings(search_overrides), "cpu")
    widths = SubnetConfig("tiny", dict(supernet.space.uniform_config(0.75).channels), None, TINY_RESOLUTION)
    cfg = routed_config_that_splits(oracle, supernet, widths)
    root = tmp_path_factory.mktemp("routed_export")
    (root / "config.json").write_text(cfg.to_json())
    code = main(["--config", str(root / "config.json"), "--checkpoint", str(routed_checkpoint), "--out",
                 str(root / "export"), "--device", "cpu", "--onnx", *search_overrides])
    assert code == 0
    return root / "export", cfg


def test_the_export_says_what_it_is_and_checked_it(routed_export: tuple[Path, SubnetConfig]) -> None:
    directory, cfg = routed_export
    record = json.loads((directory / "subnet.json").read_text())
    assert SubnetConfig.from_dict(record["config"]) == cfg
    assert record["routing"]["router_blocks"] == ["layer2.0"] and record["routing"]["levels"] == [0.25, 0.5, 1.0]
    check = record["check"]
    assert len(check["routes"]) > 1, "the check images should take more than one route"
    assert check["torch_vs_network"] <= 1e-4 and check["onnxruntime_vs_network"] <= 1e-4
    assert check["torch_routes_agree"] and check["onnxruntime_routes_agree"]
    assert check["network_vs_supernet"] <= 1e-4
    pieces = {path.name for path in (directory / "pieces").iterdir()}
    assert {"prefix.pt2", "prefix.onnx"} <= pieces
    assert {f"{key}.pt2" for key in record["routing"]["branch_of"].values()} <= pieces
    assert not (directory / "model.pt2").exists()


def test_the_runner_equals_the_routed_network_with_plain_pytorch_and_onnxruntime(
        routed_export: tuple[Path, SubnetConfig], routed_checkpoint: Path, search_overrides: list[str]) -> None:
    directory, cfg = routed_export
    supernet, payload = load_supernet(routed_checkpoint)
    oracle = build_oracle(supernet.eval(), payload, *oracle_settings(search_overrides), "cpu")
    network = oracle.routed_network(cfg)
    images = oracle.data.val[:32]
    with torch.no_grad():
        expected, levels = network(images), network.last_levels
    runner = load_runner(directory)
    for backend in ("torch", "onnxruntime"):
        features, taken = runner.RoutedModel(directory, backend=backend)(images)
        torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(taken, levels)


def test_the_runner_needs_only_torch(routed_export: tuple[Path, SubnetConfig], tmp_path: Path) -> None:
    directory, _ = routed_export
    script = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from routed_model import RoutedModel; "
              "f, l = RoutedModel(sys.argv[1])(torch.zeros(3, 3, 16, 16)); print(tuple(f.shape), tuple(l.shape)); "
              "assert 'supernet' not in sys.modules and 'nas' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", script, str(directory)], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}, check=True)
    assert out.stdout.strip().endswith("(3, 1)")


def test_nas_evaluate_says_in_one_line_that_it_does_not_evaluate_routed_exports(
        routed_export: tuple[Path, SubnetConfig]) -> None:
    directory, _ = routed_export
    run = subprocess.run([sys.executable, "-m", "nas.evaluate", "--export", str(directory)], capture_output=True, text=True)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --export: ") and "routed" in lines[0]


def test_the_runner_follows_a_network_whose_first_router_decides_for_every_group(tmp_path: Path) -> None:
    """Only the first of ``small``'s two routers runs: the table says so (null threshold, no second router's
    pieces) and the exported runner keeps its level for the second group, at batch 1 and on a mixed batch."""
    from nas.deploy.routed import TABLE, export_routed_pieces, routing_table, write_runner
    from search_spaces import get_space
    from supernet import build_supernet
    from supernet.nn.routing import RoutedNetwork, RouterSet
    from tests.conftest import randomize_batchnorm, small_resolution

    torch.manual_seed(0)
    space = get_space("small")
    supernet = randomize_batchnorm(build_supernet(space, with_gates=False)).eval()
    routers = RouterSet(space, hidden_channels=8)
    with torch.no_grad():
        for router in routers.routers.values():
            router.fc2.weight.normal_()
    size = small_resolution(space)
    images = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(1))
    cfg = space.uniform_config(1.0).with_routes({"layer2.0": 0.5})
    network = RoutedNetwork.build(supernet, routers, cfg).recalibrate(images, batch_size=16)
    head = network.head(0, network.prefix_width)
    with torch.no_grad():  # logits centred on their medians over these images: at 0.5 the routes split
        head.fc2.bias.sub_(head(network.prefix(images)).median(dim=0).values)
    export_routed_pieces(network, images, tmp_path)
    table = routing_table(network)
    (tmp_path / TABLE).write_text(json.dumps(table))
    write_runner(tmp_path)
    assert table["thresholds"][1] is None and table["logit_thresholds"][1] is None
    assert list(table["router_inputs"]) == ["layer2.0"]
    assert not any(path.name.startswith("router_layer3_0") for path in (tmp_path / "pieces").iterdir())
    with torch.no_grad():
        expected, levels = network(images), network.last_levels
    assert len({tuple(row) for row in levels.tolist()}) > 1 and bool((levels[:, 0] == levels[:, 1]).all())
    model = load_runner(tmp_path).RoutedModel(tmp_path)
    features, taken = model(images)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(taken, levels)
    one, one_levels = model(images[:1])
    torch.testing.assert_close(one, expected[:1], rtol=1e-4, atol=1e-4)
    assert torch.equal(one_levels, levels[:1])
