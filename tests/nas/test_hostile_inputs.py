"""Hostile input: every bad input ends in one clear line and a non-zero exit, with no traceback and
nothing already written overwritten. The command-line mains run in-process (an escaping exception
would fail the test with its traceback); the training entry point also runs as a real process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from nas import export as export_cli
from nas import search as search_cli
from supernet import train as train_cli

Case = Callable[[Path, Path], list[str]]  # (tmp_path, good checkpoint) -> argv


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _copy_checkpoint(tmp: Path, good: Path, transform: Callable[[bytes], bytes]) -> Path:
    path = tmp / "bad" / "checkpoint.pt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(transform(good.read_bytes()))
    return path


def _other_architecture(tmp: Path, good: Path) -> Path:
    payload = torch.load(good, weights_only=True)
    payload["space"] = "resnet18_cifar"  # tiny's weights under another architecture's name
    path = tmp / "other" / "checkpoint.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(payload, path)
    return path


class _CarriesCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_carrying(tmp: Path, good: Path) -> Path:
    path = tmp / "evil" / "checkpoint.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save({"format": "slimnas-supernet/1", "space": "tiny", "method": _CarriesCode(tmp / "executed")}, path)
    return path


def _config(tmp: Path, data: object) -> Path:
    path = tmp / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _tiny_config(**channels: object) -> dict:
    good = {"conv1": 16, "layer1.0.conv1": 16, "layer1.0.conv2": 16, "layer2.0.downsample.0": 32,
            "layer2.0.conv1": 32, "layer2.0.conv2": 32}
    return {"space": "tiny", "channels": {**good, **channels}, "gate_thresholds": None, "resolution": 16}


SEARCH = ["--trials", "1", "--no-progress"]
SEARCH_CASES: dict[str, tuple[Case, str]] = {
    "unknown budget unit": (lambda t, c: ["--checkpoint", str(c), "--budget", "1GB", *SEARCH], "unknown unit"),
    "negative budget": (lambda t, c: ["--checkpoint", str(c), "--budget=-5MFLOPs", *SEARCH], "-5MFLOPs"),
    "zero budget": (lambda t, c: ["--checkpoint", str(c), "--budget", "0", *SEARCH], "'0'"),
    "garbage budget": (lambda t, c: ["--checkpoint", str(c), "--budget", "1..2GFLOP", *SEARCH], "1..2GFLOP"),
    "budget below the smallest": (lambda t, c: ["--checkpoint", str(c), "--budget", "10kFLOPs", *SEARCH],
                                  "below the smallest sub-network"),
    "missing checkpoint": (lambda t, c: ["--checkpoint", str(t / "nowhere.pt"), "--budget", "3MFLOPs", *SEARCH],
                           "does not exist"),
    "truncated checkpoint": (lambda t, c: ["--checkpoint", str(_copy_checkpoint(t, c, lambda b: b[: len(b) // 3])),
                                           "--budget", "3MFLOPs", *SEARCH], "not a readable supernet checkpoint"),
    "corrupt checkpoint": (lambda t, c: ["--checkpoint", str(_copy_checkpoint(t, c, lambda b: bytes(reversed(b)))),
                                         "--budget", "3MFLOPs", *SEARCH], "not a readable supernet checkpoint"),
    "checkpoint of another architecture": (lambda t, c: ["--checkpoint", str(_other_architecture(t, c)), "--budget",
                                                         "3MFLOPs", *SEARCH], "does not hold a resnet18_cifar supernet"),
    "pickle that carries code": (lambda t, c: ["--checkpoint", str(_code_carrying(t, c)), "--budget", "3MFLOPs", *SEARCH],
                                 "not a readable supernet checkpoint"),
    "unknown override key": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "oracle.nonsense=1", *SEARCH],
                             "nonsense"),
    "missing data path": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "data.name=imagefolder",
                                        f"data.root={t / 'no-images'}", *SEARCH], "no-images"),
    "zero latency repeats": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "latency.repeats=0", *SEARCH],
                             "latency.repeats: 0 is not valid"),
    "zero threads": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "latency.threads=0", *SEARCH],
                     "latency.threads"),
    "bad data set choice": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "data.name=mnist2", *SEARCH],
                            "data.name: Invalid value 'mnist2'"),
    "bad sampler choice": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "--sampler", "cmaes", *SEARCH],
                           "--sampler: invalid choice: 'cmaes'"),
    "bad objective choice": (lambda t, c: ["--checkpoint", str(c), "--objective", "energy", *SEARCH],
                             "--objective: invalid choice: 'energy'"),
    "bad device": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "--device", "tpu", *SEARCH],
                   "--device: 'tpu' is not valid"),
    "negative trial count": (lambda t, c: ["--checkpoint", str(c), "--budget", "3MFLOPs", "--trials", "-1", "--no-progress"],
                             "--trials: -1"),
    "flag with a missing value": (lambda t, c: ["--checkpoint", str(c), "--budget"], "--budget: expected one argument"),
}

EXPORT_CASES: dict[str, tuple[Case, str]] = {
    "config with an unknown layer": (lambda t, c: ["--config", str(_config(t, _tiny_config(**{"layer9.conv": 8}))),
                                                   "--checkpoint", str(c)], "channels['layer9.conv']: unknown layer"),
    "config with an out-of-range width": (lambda t, c: ["--config", str(_config(t, _tiny_config(conv1=20))),
                                                        "--checkpoint", str(c)], "20 is not a width choice"),
    "config with wrong types": (lambda t, c: ["--config", str(_config(t, _tiny_config(conv1="16"))),
                                              "--checkpoint", str(c)], "expected a positive int"),
    "config that is not JSON": (lambda t, c: ["--config", str(_config(t, "{channels: 16")), "--checkpoint", str(c)],
                                "not valid JSON"),
    "config of another space": (lambda t, c: ["--config", str(_config(t, {**_tiny_config(), "space": "resnet18"})),
                                              "--checkpoint", str(c)], "resnet18"),
    "missing best.json": (lambda t, c: ["--from", str(t / "best.json")], "best.json"),
}


def _assert_one_clear_line(code: int, stderr: str, expected: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == 2
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize("name", list(SEARCH_CASES))
def test_search_rejects(name: str, tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_argv, expected = SEARCH_CASES[name]
    out = tmp_path / "out"
    out.mkdir()
    (out / "best.json").write_text('{"kept": true}')
    before, checkpoint_before = _snapshot(out), _snapshot(tiny_checkpoint.parent)
    code = search_cli.main([*make_argv(tmp_path, tiny_checkpoint), "--out", str(out)])
    _assert_one_clear_line(code, capsys.readouterr().err, expected)
    assert _snapshot(out) == before and _snapshot(tiny_checkpoint.parent) == checkpoint_before
    assert not (tmp_path / "executed").exists()  # the pickled code never ran


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_export_rejects(name: str, tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_argv, expected = EXPORT_CASES[name]
    out = tmp_path / "export"
    out.mkdir()
    (out / "subnet.json").write_text('{"kept": true}')
    before = _snapshot(out)
    code = export_cli.main([*make_argv(tmp_path, tiny_checkpoint), "--out", str(out), "oracle.bank_size=100",
                            "oracle.calibration_images=64"])
    _assert_one_clear_line(code, capsys.readouterr().err, expected)
    assert _snapshot(out) == before


def _image_tree(root: Path, *, images: bool, junk: bool) -> Path:
    for label in ("cats", "dogs"):
        folder = root / label
        folder.mkdir(parents=True)
        if images:
            # mixed sizes and modes: grayscale, RGBA, palette, RGB
            for i, (mode, size) in enumerate([("L", (20, 24)), ("RGBA", (40, 30)), ("P", (33, 33)), ("RGB", (64, 48))] * 6):
                Image.new(mode, size, color=i * 9 % 255).save(folder / f"{i}.png")
        if junk:
            (folder / "README.txt").write_text("not an image")
            (folder / "notes.csv").write_text("a,b\n1,2\n")
    return root


TRAIN = ["recipe=none", "model=tiny", "optim.lr=0.5", "batch_size=8", "data.resolution=16", "epochs=1", "max_steps=1", "knn.enabled=false",
         "progress=false", "ssl.proj_hidden_dim=32", "ssl.pred_hidden_dim=32", "ssl.proj_dim=16"]


def _train(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supernet.train", *TRAIN, *overrides], capture_output=True, text=True,
                          timeout=300, cwd=tmp)


@pytest.mark.parametrize(("name", "tree", "expected"), [
    ("missing data path", None, "does not exist"),
    ("empty ImageFolder", dict(images=False, junk=False), "contains no images"),
    ("only non-image files", dict(images=False, junk=True), "contains no images"),
])
def test_train_rejects_bad_data(name: str, tree: dict | None, expected: str, tmp_path: Path) -> None:
    root = tmp_path / "images"
    if tree is not None:
        _image_tree(root, **tree)
    result = _train(tmp_path, "data=imagefolder", f"data.root={root}", "data.holdout_size=4", f"out_dir={tmp_path / 'run'}")
    _assert_one_clear_line(result.returncode, result.stderr, expected)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_train_takes_mixed_sizes_modes_and_junk_files(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "images", images=True, junk=True)
    result = _train(tmp_path, "data=imagefolder", f"data.root={root}", "data.holdout_size=8", f"out_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.pt").exists()


TRAIN_CASES = {  # one bad value for every choice field, bad types and ranges, unknown keys
    "unknown key": ("nonsense=1", "nonsense: Key 'nonsense' not in 'TrainConfig'"),
    "not a number": ("epochs=abc", "epochs: Value 'abc'"),
    "zero epochs": ("epochs=0", "epochs: 0 is not valid; expected a number >= 1"),
    "unknown model group option": ("model=nope", "model=nope: no such option; expected one of: "),
    "unknown space": ("model.space=resnet9000", "model.space: 'resnet9000' is not valid; expected a search space"),
    "optimizer choice": ("optim.name=adam", "optim.name: Invalid value 'adam', expected one of [sgd, lars, larc, adamw]"),
    "ssl method choice": ("ssl.name=barlow_twins", "ssl.name: Invalid value 'barlow_twins', expected one of"),
    "sinkhorn epsilon": ("ssl.sinkhorn_epsilon=0", "ssl.sinkhorn_epsilon: 0.0 is not valid; expected a positive number"),
    "sinkhorn iterations": ("ssl.sinkhorn_iterations=0", "ssl.sinkhorn_iterations: 0 is not valid; expected a number >= 1"),
    "negative queue": ("ssl.queue_length=-1", "ssl.queue_length: -1 is not valid; expected a number >= 0"),
    "queue start epoch": ("ssl.epoch_queue_starts=-2", "ssl.epoch_queue_starts: -2 is not valid; expected a number >= 0"),
    "frozen patch flag": ("ssl.freeze_patch_embed=maybe", "ssl.freeze_patch_embed: Value 'maybe'"),
    "views choice": ("views.name=fivecrop", "views.name: Invalid value 'fivecrop'"),
    "data set choice": ("data.name=mnist2", "data.name: Invalid value 'mnist2'"),
    "device": ("device=tpu", "device: 'tpu' is not valid; expected auto, cpu, cuda or cuda:N"),
    "negative learning rate": ("optim.lr=-1", "optim.lr: -1.0 is not valid; expected a positive number"),
    "gate target out of range": ("gates.target=1.5", "gates.target: 1.5 is not valid; expected a number in (0, 1]"),
    "override without =": ("epochs", "override 'epochs': expected key=value"),
}


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_train_rejects_bad_settings(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override, expected = TRAIN_CASES[name]
    code = train_cli.main([*TRAIN, override, f"out_dir={tmp_path / 'run'}"])
    _assert_one_clear_line(code, capsys.readouterr().err, expected)
    assert not (tmp_path / "run").exists()


def test_train_process_exits_with_the_user_error_code(tmp_path: Path) -> None:
    result = _train(tmp_path, "optim.name=adam", f"out_dir={tmp_path / 'run'}")
    _assert_one_clear_line(result.returncode, result.stderr, "optim.name: Invalid value 'adam'")


def test_train_keeps_an_existing_run(tmp_path: Path, tiny_checkpoint: Path) -> None:
    run_dir = tiny_checkpoint.parent
    before = _snapshot(run_dir)
    result = _train(tmp_path, f"out_dir={run_dir}")  # resume=false onto an existing run
    _assert_one_clear_line(result.returncode, result.stderr, "resume=true")
    assert _snapshot(run_dir) == before
