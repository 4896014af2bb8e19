"""nas.export: the exported program computes what the supernet computes, without the project."""

from __future__ import annotations

import copy
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

import nas.deploy.program as program_module
from nas.deploy.program import ExportCheckError, check_program, load_exported
from nas.deploy.sources import source_from_best, source_from_config, source_from_trial
from nas.export import build_parser, main, request_from_args
from nas.study.storage import journal_storage
from search_spaces import SubnetConfig
from supernet.nn.flops import FLOP_CONVENTION, count_flops

RESOLUTION = 16  # the tiny checkpoint's training resolution


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def exported(configs, checkpoint: Path, search_overrides: list[str], tmp_path_factory) -> dict[str, Path]:
    """One export directory per config, written by the command-line entry point."""
    directories = {}
    for name, cfg in configs.items():
        root = tmp_path_factory.mktemp(f"export_{name}")
        config_file = root / "subnet_config.json"
        config_file.write_text(cfg.to_json())
        out = root / "export"
        assert main(["--config", str(config_file), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu",
                     *search_overrides]) == 0
        directories[name] = out
    return directories


def reference_outputs(oracle_and_supernet, cfg: SubnetConfig, images: torch.Tensor) -> torch.Tensor:
    """The supernet itself at set_active(cfg), BatchNorm recalibrated as the oracle does it."""
    oracle, supernet = oracle_and_supernet
    reference = copy.deepcopy(supernet)
    reference.set_active(cfg)
    oracle.recalibrate(reference)
    with torch.no_grad():
        return reference(images)


ISOLATED = r"""
import json, sys
jobs, packages = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.path.extend(packages)  # site-packages without its .pth hooks: no editable install of the project
for name in ("supernet", "nas", "search_spaces"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable in the isolated process")
import torch
for program, images, outputs in jobs:
    model = torch.export.load(program).module()
    x = torch.load(images, weights_only=True)
    with torch.no_grad():
        torch.save({"batch": model(x), "single": model(x[:1])}, outputs)
"""


@pytest.fixture(scope="module")
def isolated_outputs(exported, oracle_and_supernet, tmp_path_factory) -> tuple[torch.Tensor, dict[str, dict]]:
    """Outputs of every exported program on 5 validation images, computed by a fresh ``python -I -S``
    process (cwd outside the project) in which the project cannot be imported."""
    oracle, _ = oracle_and_supernet
    work = tmp_path_factory.mktemp("isolated")
    images = oracle.data.val[:5].clone()
    torch.save(images, work / "images.pt")
    jobs = [(str(directory / "model.pt2"), str(work / "images.pt"), str(work / f"{name}.pt"))
            for name, directory in exported.items()]
    packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
    result = subprocess.run([sys.executable, "-I", "-S", "-c", ISOLATED, json.dumps(jobs), json.dumps(packages)],
                            cwd=work, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return images, {name: torch.load(work / f"{name}.pt", weights_only=True) for name in exported}


@pytest.mark.parametrize("name", ["gates_off", "gates_on"])
def test_program_equals_supernet_in_a_process_without_the_project(name, isolated_outputs, exported, configs,
                                                                  oracle_and_supernet) -> None:
    images, outputs = isolated_outputs
    cfg = configs[name]
    expected = reference_outputs(oracle_and_supernet, cfg, images)
    assert outputs[name]["batch"].shape == (5, expected.shape[1])
    torch.testing.assert_close(outputs[name]["batch"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs[name]["single"], expected[:1], atol=1e-5, rtol=0)  # the batch dimension is dynamic
    if cfg.gated:  # the gates really drop channels for these images, and not all of them
        network, _ = load_exported(exported[name])
        with torch.no_grad():
            network(images)
        kept = [float(block.last_mask.mean()) for block in network.gated_blocks()]
        assert all(0.0 < fraction < 1.0 for fraction in kept), kept


@pytest.mark.parametrize("name", ["gates_off", "gates_on"])
def test_subnet_json_and_weights(name, exported, configs, oracle_and_supernet) -> None:
    oracle, _ = oracle_and_supernet
    cfg = configs[name]
    record = json.loads((exported[name] / "subnet.json").read_text())
    assert SubnetConfig.from_dict(record["config"]) == cfg
    assert record["flop_convention"] == FLOP_CONVENTION == "fvcore FLOPs: one multiply-add = one flop"
    assert record["input"]["shape"] == [1, 3, RESOLUTION, RESOLUTION] and record["input"]["dynamic_batch"]
    assert record["input"]["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert record["gate_mode"] == ("masked" if cfg.gated else None)
    metrics = record["metrics"]
    network = oracle.subnet(cfg)
    assert metrics["flops"] == count_flops(network, RESOLUTION)
    assert metrics["params"] == sum(p.numel() for p in network.parameters())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(oracle.score(network))
    if cfg.gated:
        assert metrics["effective_flops"] < metrics["flops"]  # gates drop channels, so they save FLOPs
    else:
        assert metrics["effective_flops"] == metrics["flops"]
    check = record["check"]
    assert max(check["program_vs_network"], check["network_vs_supernet"], check["program_vs_supernet"]) <= 1e-4
    weights = torch.load(exported[name] / "weights.pt", weights_only=True)
    expected = network.state_dict()
    assert weights.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(weights[key], tensor, atol=0, rtol=0)
    assert set(record["files"].values()) == {path.name for path in exported[name].iterdir()}
    assert "torch.export.load(\"model.pt2\").module()" in (exported[name] / "README.txt").read_text()


def test_check_detects_a_different_network(exported, oracle_and_supernet) -> None:
    oracle, _ = oracle_and_supernet
    directory = exported["gates_off"]
    network, _ = load_exported(directory)
    images = oracle.data.val[:4]
    check = check_program(directory / "model.pt2", network, network, images)
    assert check["program_vs_network"] <= 1e-5
    shifted = copy.deepcopy(network)
    with torch.no_grad():
        shifted.bn1.running_mean.add_(0.5)
    with pytest.raises(ExportCheckError, match="export check failed"):
        check_program(directory / "model.pt2", network, shifted, images)


def test_failed_check_leaves_an_existing_export_untouched(exported, configs, checkpoint, search_overrides, tmp_path,
                                                          monkeypatch, capsys) -> None:
    out = tmp_path / "export"
    out.mkdir()
    for path in exported["gates_off"].iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    config_file = tmp_path / "cfg.json"
    config_file.write_text(configs["gates_on"].to_json())
    monkeypatch.setattr(program_module, "TOLERANCE", -1.0)  # any difference, even 0, now fails the check
    code = main(["--config", str(config_file), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu",
                 *search_overrides])
    assert code == 1
    assert "export check failed" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no staging folder left either


def test_sources_best_json_and_trial(configs, checkpoint: Path, tmp_path: Path) -> None:
    cfg = configs["gates_on"]
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"trial": 3, "space": cfg.space, "config": cfg.to_dict(), "accuracy": 0.5,
                                "checkpoint": str(checkpoint)}))
    source = source_from_best(best)
    assert source.config == cfg and source.checkpoint == checkpoint
    request = request_from_args(build_parser().parse_args(["--from", str(best)]))
    assert request.checkpoint == checkpoint
    other = tmp_path / "other.pt"
    request = request_from_args(build_parser().parse_args(["--from", str(best), "--checkpoint", str(other)]))
    assert request.checkpoint == other  # --checkpoint wins over the search's

    journal = tmp_path / "study.journal"
    study = optuna.create_study(storage=journal_storage(journal), study_name="s", directions=["maximize", "minimize"])
    study.set_user_attr("identity", {"checkpoint": str(checkpoint)})
    for number, config in enumerate((configs["gates_off"], cfg)):
        study.add_trial(optuna.trial.create_trial(values=[0.5, 1.0], user_attrs={"result": {"config": config.to_dict()}}))
    source = source_from_trial(1, str(journal), None)  # the only study: no --study-name needed
    assert source.config == cfg and source.checkpoint == checkpoint
    assert source_from_trial(0, str(journal), "s").config == configs["gates_off"]
    # --config takes a bare config or a search's record of one (best.json), the checkpoint given apart
    assert source_from_config(best).config == cfg and source_from_config(best).checkpoint is None
    bare = tmp_path / "cfg.json"
    bare.write_text(cfg.to_json())
    assert source_from_config(bare).config == cfg


def bad_config_files(tmp_path: Path, cfg: SubnetConfig) -> dict[str, Path]:
    good = cfg.to_dict()
    cases = {
        "unknown_layer": {**good, "channels": {**good["channels"], "layer9.0.conv1": 16}},
        "width_out_of_range": {**good, "channels": {**good["channels"], "conv1": 999}},
        "wrong_type": {**good, "channels": {**good["channels"], "conv1": "32"}},
        "missing_field": {k: v for k, v in good.items() if k != "resolution"},
        "threshold_out_of_range": {**good, "gate_thresholds": {"layer1.0": 5.0, "layer2.0": 0.5}},
    }
    files = {}
    for name, data in cases.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    files["not_json"] = tmp_path / "not_json.json"
    files["not_json"].write_text("{channels: ")
    return files


@pytest.mark.parametrize("case", ["unknown_layer", "width_out_of_range", "wrong_type", "missing_field",
                                  "threshold_out_of_range", "not_json", "missing_file", "missing_best", "unknown_trial",
                                  "missing_checkpoint", "corrupt_checkpoint"])
def test_user_errors_end_in_one_line_and_exit_2(case, configs, checkpoint, tmp_path, capsys) -> None:
    files = bad_config_files(tmp_path, configs["gates_off"])
    good = tmp_path / "good.json"
    good.write_text(configs["gates_off"].to_json())
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    journal = tmp_path / "study.journal"
    study = optuna.create_study(storage=journal_storage(journal), study_name="s", directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1.0], user_attrs={"result": {"config": configs["gates_off"].to_dict()}}))
    source = {
        "missing_file": ["--config", str(tmp_path / "absent.json")],
        "missing_best": ["--from", str(tmp_path / "absent" / "best.json")],
        "unknown_trial": ["--trial", "7", "--storage", str(journal)],
        "missing_checkpoint": ["--config", str(good), "--checkpoint", str(tmp_path / "absent.pt")],
        "corrupt_checkpoint": ["--config", str(good), "--checkpoint", str(corrupt)],
    }.get(case, ["--config", str(files.get(case, good))])
    if "--checkpoint" not in source:
        source += ["--checkpoint", str(checkpoint)]
    out = tmp_path / "out"
    assert main([*source, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()


def test_cli_bad_config_has_no_traceback(configs, checkpoint, tmp_path) -> None:
    bad = bad_config_files(tmp_path, configs["gates_off"])["width_out_of_range"]
    result = subprocess.run(
        [sys.executable, "-m", "nas.export", "--config", str(bad), "--checkpoint", str(checkpoint), "--out",
         str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: channels['conv1']: 999 is not a width choice"), lines
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
