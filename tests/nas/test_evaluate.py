"""nas.evaluate: kNN and linear-probe accuracy of an export directory, and of the same config from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.evaluate import main
from nas.export import main as export_main
from search_spaces import SubnetConfig, get_space

PROBE = ["probe.epochs=20"]


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


@pytest.mark.parametrize("case", ["missing_dir", "checkpoint_with_export", "bad_override", "truncated_weights"])
def test_user_errors_exit_2(case, exported, tiny_checkpoint, tmp_path, capsys) -> None:
    directory, _ = exported
    argv = {
        "missing_dir": ["--export", str(tmp_path / "absent")],
        "checkpoint_with_export": ["--export", str(directory), "--checkpoint", str(tiny_checkpoint)],
        "bad_override": ["--export", str(directory), "probe.epoch=3"],
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
