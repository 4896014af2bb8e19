"""nas.evaluate: kNN and linear-probe accuracy of an export directory, and of the same config from a checkpoint;
the linear, switchable and semi-supervised protocols."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from nas.evaluate import main, print_table
from nas.export import main as export_main
from search_spaces import SubnetConfig, get_space

PROBE = ["probe.epochs=20"]


@pytest.fixture(scope="module")
def search_overrides(search_overrides: list[str]) -> list[str]:
    """nas.evaluate judges a network: on the held-out split (the oracle's own default selects on training images)."""
    return [*search_overrides, "oracle.val_split=heldout"]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, search_overrides: list[str], tmp_path_factory) -> tuple[Path, Path]:
    """(export directory, config file) of a gated tiny sub-network at the checkpoint's 16 px."""
    root = tmp_path_factory.mktemp("evaluate")
    space = get_space("tiny")
    cfg = SubnetConfig(space.name, dict(space.uniform_config(0.5).channels), None, 16).with_gates(
        {block.name: 0.5 for block in space.gated_blocks})
    config_file = root / "cfg.json"
    config_file.write_text(cfg.to_json())
    assert export_main(["--config", str(config_file), "--checkpoint", str(tiny_checkpoint), "--out", str(root / "export"),
                        "--device", "cpu", *search_overrides]) == 0
    return root / "export", config_file


def run_json(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_export_directory_reports_knn_and_linear_probe(exported, search_overrides, capsys) -> None:
    directory, _ = exported
    result = run_json(["--export", str(directory), *search_overrides, *PROBE], capsys)
    assert 0.0 <= result["knn"] <= 1.0 and 0.0 <= result["linear_probe"] <= 1.0
    record = json.loads((directory / "subnet.json").read_text())
    assert result["config"] == record["config"]
    # same weights, same data: the kNN the export measured with the oracle, and the same costs
    assert result["knn"] == pytest.approx(record["metrics"]["accuracy"])
    for key in ("flops", "effective_flops", "params"):
        assert result[key] == pytest.approx(record["metrics"][key])
    assert result["protocol"]["train_images"] == 200 and result["protocol"]["linear_probe"]["epochs"] == 20
    # 10 digit classes: features of even an untrained network carry more than chance
    assert result["linear_probe"] > 0.15


def test_config_and_checkpoint_give_the_export_numbers(exported, tiny_checkpoint, search_overrides, capsys) -> None:
    directory, config_file = exported
    from_export = run_json(["--export", str(directory), *search_overrides, *PROBE], capsys)
    from_config = run_json(["--config", str(config_file), "--checkpoint", str(tiny_checkpoint), *search_overrides,
                            *PROBE], capsys)
    assert from_config["config"] == from_export["config"]
    for key in ("knn", "linear_probe", "flops", "effective_flops", "params"):
        assert from_config[key] == pytest.approx(from_export[key]), key


def test_table_output(exported, search_overrides, capsys) -> None:
    directory, _ = exported
    assert main(["--export", str(directory), "--device", "cpu", *search_overrides, *PROBE]) == 0
    out = capsys.readouterr().out
    assert "kNN top-1 (k=20, T=0.07)" in out and "linear probe top-1" in out and "one multiply-add = one flop" in out
    assert "trained" in out and "untrained" in out and "raw pixels" in out


def test_every_score_stands_beside_the_untrained_network_and_raw_pixels(exported, search_overrides, capsys) -> None:
    directory, _ = exported
    result = run_json(["--export", str(directory), *search_overrides, *PROBE], capsys)
    untrained, raw = result["baselines"]["untrained"], result["baselines"]["raw_pixels"]
    assert set(untrained) == set(raw) == {"knn", "linear_probe"}
    assert all(0.0 <= score <= 1.0 for score in (*untrained.values(), *raw.values()))
    # 16-px digits: 768 raw dimensions, small enough for the raw-pixel probe
    assert raw["linear_probe"] is not None and raw["linear_probe"] > 0.5
    assert "initial weights" in result["protocol"]["untrained"]


@pytest.mark.parametrize("case", ["missing_dir", "checkpoint_with_export", "bad_override", "truncated_weights",
                                  "switchable_with_export", "linear_without_subnetwork", "bad_protocol",
                                  "semi_epochs_per_fraction"])
def test_user_errors_exit_2(case, exported, tiny_checkpoint, tmp_path, capsys) -> None:
    directory, _ = exported
    argv = {
        "missing_dir": ["--export", str(tmp_path / "absent")],
        "checkpoint_with_export": ["--export", str(directory), "--checkpoint", str(tiny_checkpoint)],
        "bad_override": ["--export", str(directory), "probe.epoch=3"],
        "switchable_with_export": ["--export", str(directory), "--protocol", "switchable"],
        "linear_without_subnetwork": ["--protocol", "linear"],
        "bad_protocol": ["--export", str(directory), "probe.protocol=supervised"],
        "semi_epochs_per_fraction": ["--export", str(directory), "--protocol", "semi", "probe.semi.epochs=[1]"],
    }.get(case)
    if case == "truncated_weights":
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "subnet.json").write_bytes((directory / "subnet.json").read_bytes())
        (broken / "weights.pt").write_bytes((directory / "weights.pt").read_bytes()[:500])
        argv = ["--export", str(broken)]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


# -- the protocols that train a head ---------------------------------------------------------------
def cli_json(argv: list[str]) -> dict:
    """``main(argv + --json)``'s result, for module-scoped fixtures (capsys is per test)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--json", "--device", "cpu"]) == 0
    return json.loads(out.getvalue())


LINEAR = ["--protocol", "linear", "probe.linear.epochs=1", "probe.linear.batch_size=64"]


@pytest.fixture(scope="module")
def linear_result(exported, search_overrides) -> dict:
    return cli_json(["--export", str(exported[0]), *search_overrides, *LINEAR])


def test_linear_protocol_reports_its_settings_splits_and_baselines(linear_result, exported) -> None:
    protocol, scores = linear_result["protocol"], linear_result["scores"]
    assert protocol["name"] == "linear" and "SimCLR" in protocol["source"]
    settings = protocol["hyperparameters"]
    assert settings["epochs"] == 1 and settings["batch_size"] == 64 and settings["momentum"] == 0.9
    assert settings["lr"] == pytest.approx(0.1 * 64 / 256) and settings["weight_decay"] == 0.0
    assert settings["augment"] is True and settings["crop_scale"] == [0.08, 1.0] and settings["head_norm"] is True
    assert "cannot be cached" in protocol["features"]
    # the whole training split of the tiny run (256 images) trains the head; its 200-image holdout scores it
    assert (protocol["train_images"], protocol["test_images"], protocol["test_split"], protocol["num_classes"]) == (
        256, 200, "holdout", 10)
    assert len(scores) == 1 and scores[0]["name"] == "linear" and scores[0]["labelled_images"] == 256
    assert all(0.0 <= scores[0][key] <= 1.0 for key in ("top1", "untrained", "raw_pixels"))
    assert "initial weights" in protocol["untrained"]
    record = json.loads((exported[0] / "subnet.json").read_text())
    assert linear_result["config"] == record["config"]
    assert linear_result["flops"] == pytest.approx(record["metrics"]["flops"])


def test_linear_protocol_table_prints_protocol_splits_and_baseline(linear_result, capsys) -> None:
    print_table(linear_result)
    out = capsys.readouterr().out
    assert "protocol linear: standard linear evaluation" in out and "hyper-parameters: epochs=1, batch_size=64" in out
    assert "splits: 256 labelled training images, 200 holdout test images, 10 classes" in out
    assert "trained" in out and "untrained" in out and "raw pixels" in out and "linear top-1 (256 labelled)" in out


def test_config_and_checkpoint_give_the_export_linear_numbers(linear_result, exported, tiny_checkpoint,
                                                              search_overrides) -> None:
    from_config = cli_json(["--config", str(exported[1]), "--checkpoint", str(tiny_checkpoint), *search_overrides,
                            *LINEAR])
    assert from_config["protocol"]["train_images"] == 256
    for key in ("top1", "untrained", "raw_pixels"):
        assert from_config["scores"][0][key] == pytest.approx(linear_result["scores"][0][key]), key


def test_semi_protocol_from_the_settings_prints_each_label_fraction(exported, search_overrides, capsys) -> None:
    argv = ["--export", str(exported[0]), "--device", "cpu", *search_overrides, "probe.protocol=semi",
            "probe.semi.epochs=[1,1]", "probe.train_images=200"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "protocol semi: SSLight's semi-supervised evaluation" in out and "backbone_lr=" in out
    assert "splits: 200 labelled training images, 200 holdout test images, 10 classes" in out
    # 1 %: max(1, round(0.01 * 200 / 10)) = 1 image per class; 10 %: 2 per class
    assert "1% labels top-1 (10 labelled)" in out and "10% labels top-1 (20 labelled)" in out
    assert "untrained" in out


def test_switchable_protocol_scores_each_width_of_the_checkpoint(tiny_checkpoint, search_overrides, capsys) -> None:
    result = cli_json(["--checkpoint", str(tiny_checkpoint), "--protocol", "switchable", *search_overrides,
                       "probe.switchable.widths=[0.5,1.0]", "probe.switchable.epochs=1",
                       "probe.switchable.batch_size=64"])
    protocol, scores = result["protocol"], result["scores"]
    assert protocol["name"] == "switchable" and protocol["hyperparameters"]["distill"] is True
    assert [row["name"] for row in scores] == ["width 1.0", "width 0.5"] and list(result["configs"]) == ["1.0", "0.5"]
    assert scores[0]["flops"] > scores[1]["flops"] > 0 and scores[0]["params"] > scores[1]["params"]
    assert all(0.0 <= row[key] <= 1.0 for row in scores for key in ("top1", "untrained"))
    assert (protocol["train_images"], protocol["test_images"]) == (256, 200)
    print_table(result)
    out = capsys.readouterr().out
    assert "protocol switchable: SlimCLR" in out and "width 0.5 top-1 (256 labelled)" in out and "untrained" in out
