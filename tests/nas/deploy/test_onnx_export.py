"""nas.export --onnx: model.onnx computes, in onnxruntime, what the supernet computes at the config."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import nas.deploy.export as export_module
import nas.deploy.onnx_model as onnx_module
from nas.deploy.onnx_model import (
    KnnProbe,
    OnnxExport,
    check_onnx,
    export_onnx,
    knn_probe,
    run_onnx,
)
from nas.deploy.program import ExportCheckError, load_exported
from nas.export import main
from search_spaces import SubnetConfig
from supernet.evaluation.knn import knn_accuracy
from supernet.nn.models import SuperNet

onnxruntime = pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed (pip install slimnas[onnx])")


def run_export(cfg: SubnetConfig, root: Path, checkpoint: Path, overrides: list[str], *extra: str) -> int:
    config_file = root / "subnet_config.json"
    config_file.write_text(cfg.to_json())
    return main(["--config", str(config_file), "--checkpoint", str(checkpoint), "--out", str(root / "export"),
                 "--device", "cpu", *extra, *overrides])


@pytest.fixture(scope="module")
def exported(configs, tiny_checkpoint: Path, search_overrides: list[str], tmp_path_factory) -> dict[str, Path]:
    """One ``--onnx`` export directory per config, written by the command-line entry point."""
    directories = {}
    for name, cfg in configs.items():
        root = tmp_path_factory.mktemp(f"onnx_{name}")
        assert run_export(cfg, root, tiny_checkpoint, search_overrides, "--onnx") == 0
        directories[name] = root / "export"
    return directories


def reference_network(oracle_and_supernet, cfg: SubnetConfig) -> SuperNet:
    """The supernet itself at set_active(cfg), BatchNorm recalibrated as the oracle does it."""
    oracle, supernet = oracle_and_supernet
    reference = copy.deepcopy(supernet)
    reference.set_active(cfg)
    reference.set_gate_mode("masked")
    return oracle.recalibrate(reference).eval()


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["gates_off", "gates_on"])
def test_onnx_equals_supernet_at_any_batch_size(name, exported, configs, oracle_and_supernet) -> None:
    oracle, _ = oracle_and_supernet
    images = oracle.data.val[8:15].clone()  # 7 images: neither the check images nor the exported example's batch
    with torch.no_grad():
        expected = reference_network(oracle_and_supernet, configs[name])(images)
    model = session(exported[name] / "model.onnx")
    assert [input.name for input in model.get_inputs()] == ["images"]
    assert isinstance(model.get_inputs()[0].shape[0], str)  # a symbolic batch dimension
    batched = torch.from_numpy(model.run(["features"], {"images": images.numpy()})[0])
    single = torch.from_numpy(model.run(["features"], {"images": images[:1].numpy()})[0])
    assert batched.shape == expected.shape == (7, expected.shape[1])
    torch.testing.assert_close(batched, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(single, expected[:1], atol=1e-4, rtol=0)
    if configs[name].gated:  # masked gates really drop channels for these images, and the ONNX model too
        dense = reference_network(oracle_and_supernet, configs[name].with_gates(None))
        with torch.no_grad():
            assert (dense(images) - batched).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["gates_off", "gates_on"])
def test_onnx_record_in_subnet_json(name, exported, configs, oracle_and_supernet) -> None:
    oracle, _ = oracle_and_supernet
    directory = exported[name]
    record = json.loads((directory / "subnet.json").read_text())
    onnx = record["onnx"]
    assert record["files"]["onnx"] == onnx["file"] == "model.onnx"
    assert set(record["files"].values()) == {path.name for path in directory.iterdir()}  # no staging left
    assert onnx["exporter"] == "torch.onnx (dynamo)" and onnx["dynamo"] and onnx["fallback"] is None
    assert onnx["dynamic_batch"] and onnx["opset"] >= 18
    assert onnx["onnxruntime"] == onnxruntime.__version__ and onnx["provider"] == "CPUExecutionProvider"
    assert onnx["gate_mode"] == record["gate_mode"] == ("masked" if configs[name].gated else None)
    assert onnx["check_images"] == record["check"]["images"] == 8
    # all of the oracle's validation images (at most 256): half the tiny run's 256 training images
    assert onnx["agreement_images"] == len(oracle.data.val) == 128
    assert 0.0 <= onnx["max_abs_diff"] <= onnx["tolerance"] == 1e-4
    assert onnx["batch1_max_abs_diff"] <= onnx["max_abs_diff"]
    assert onnx["top1_agreement"] == 1.0 and onnx["validation_within_tolerance"] >= onnx["min_agreement"] == 0.99
    assert onnx["finite"]
    readme = (directory / "README.txt").read_text()
    assert "onnxruntime.InferenceSession(\"model.onnx\"" in readme and "opset" in readme


@pytest.mark.parametrize("name", ["gates_off", "gates_on"])
def test_onnx_model_reproduces_the_reported_knn_accuracy(name, exported, oracle_and_supernet) -> None:
    """The oracle's kNN on the ONNX model's own features scores what subnet.json reports."""
    oracle, _ = oracle_and_supernet
    record = json.loads((exported[name] / "subnet.json").read_text())
    model = session(exported[name] / "model.onnx")
    bank = run_onnx(model, oracle.data.bank[:], batch_size=64)
    val = run_onnx(model, oracle.data.val[:], batch_size=64)
    accuracy = knn_accuracy(bank, oracle.data.bank_labels, val, oracle.data.val_labels,
                            num_classes=oracle.data.num_classes, k=oracle.k, temperature=oracle.temperature)
    assert accuracy == pytest.approx(record["metrics"]["accuracy"], abs=1.5 / len(oracle.data.val))  # one image


@pytest.fixture(scope="module")
def check_inputs(exported, configs, oracle_and_supernet) -> tuple[OnnxExport, SuperNet, torch.Tensor, KnnProbe]:
    oracle, _ = oracle_and_supernet
    reference = reference_network(oracle_and_supernet, configs["gates_off"])
    export = OnnxExport(path=exported["gates_off"] / "model.onnx", exporter="dynamo", opset=20, dynamic_batch=True,
                        fallback=None)
    return export, reference, oracle.data.val[:8], knn_probe(reference, oracle, device=torch.device("cpu"))


def test_check_passes_the_true_model_and_fails_shuffled_or_nan_features(check_inputs) -> None:
    export, reference, images, probe = check_inputs
    assert check_onnx(export, reference, images, probe).top1_agreement == 1.0

    def shuffled(session, images, *, batch_size):  # every image gets another image's features
        return run_onnx(session, images, batch_size=batch_size).roll(1, dims=0)

    def nan(session, images, *, batch_size):
        features = run_onnx(session, images, batch_size=batch_size)
        features[-1, 0] = float("nan")
        return features

    # the agreement alone fails the check, even with no tolerance on the features
    with pytest.raises(ExportCheckError, match=r"kNN top-1 agreement \d+\.\d+%"):
        check_onnx(export, reference, images, probe, tolerance=float("inf"), runner=shuffled)
    with pytest.raises(ExportCheckError, match="non-finite outputs"):
        check_onnx(export, reference, images, probe, runner=nan)


def test_export_onnx_falls_back_and_says_so(exported, configs, oracle_and_supernet, monkeypatch, tmp_path) -> None:
    """Without a dynamic batch from the dynamo exporter the TorchScript exporter keeps one."""
    oracle, _ = oracle_and_supernet
    network, _ = load_exported(exported["gates_on"])
    network.set_gate_mode("masked")
    original = torch.onnx.export

    def no_dynamic_dynamo(*args, dynamo: bool = True, dynamic_shapes=None, **kwargs):
        if dynamo and dynamic_shapes is not None:
            raise RuntimeError("cannot keep the batch symbolic\nsecond line")
        return original(*args, dynamo=dynamo, dynamic_shapes=dynamic_shapes, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamic_dynamo)
    result = export_onnx(network, oracle.data.val[:8], tmp_path / "model.onnx")
    assert (result.exporter, result.dynamic_batch) == ("torchscript", True)
    assert result.fallback == "dynamo: cannot keep the batch symbolic"
    images = oracle.data.val[:3]
    with torch.no_grad():
        expected = network(images)
    torch.testing.assert_close(run_onnx(session(result.path), images, batch_size=3), expected, atol=1e-4, rtol=0)


def test_broken_onnx_model_fails_with_one_line_and_writes_nothing(configs, tiny_checkpoint, search_overrides,
                                                                  tmp_path, monkeypatch, capsys) -> None:
    def export_a_different_network(network, example, path):  # e.g. a BatchNorm the exporter got wrong
        shifted = copy.deepcopy(network)
        with torch.no_grad():
            shifted.bn1.running_mean.add_(0.5)
        return onnx_module.export_onnx(shifted, example, path)

    monkeypatch.setattr(export_module, "export_onnx", export_a_different_network)
    assert run_export(configs["gates_on"], tmp_path, tiny_checkpoint, search_overrides, "--onnx") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ONNX check failed: "), err
    assert "nothing was written" in err[0]
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("missing", ["onnxruntime", "onnxscript"])
def test_missing_onnx_packages_end_in_one_line_before_any_work(missing, configs, tmp_path, monkeypatch,
                                                               capsys) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    absent = tmp_path / "absent.pt"  # never read: the packages are checked first
    assert run_export(configs["gates_off"], tmp_path, absent, [], "--onnx") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --onnx: {missing} not installed"), err
    assert 'pip install "slimnas[onnx]"' in err[0]
    assert not (tmp_path / "export").exists()


def test_without_onnx_nothing_of_it_is_written(exported, configs, tiny_checkpoint, search_overrides,
                                               tmp_path) -> None:
    """Re-exporting without --onnx into an --onnx export leaves no model.onnx that subnet.json does not list."""
    shutil.copytree(exported["gates_off"], tmp_path / "export")
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert run_export(configs["gates_off"], tmp_path, tiny_checkpoint, search_overrides) == 0
    record = json.loads((tmp_path / "export" / "subnet.json").read_text())
    assert "onnx" not in record and "onnx" not in record["files"]
    assert {path.name for path in (tmp_path / "export").iterdir()} == set(record["files"].values())
    assert "onnx" not in (tmp_path / "export" / "README.txt").read_text()
