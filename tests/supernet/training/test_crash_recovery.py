"""kill -9 during training, then resume=true: the run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from supernet.io.checkpoint import CheckpointError, load_checkpoint, previous_path

ARGS = [
    "recipe=none", "model=tiny", "optim.lr=0.5", "data.max_images=64", "data.holdout_size=200", "data.resolution=16", "batch_size=16",
    "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=64", "ssl.pred_hidden_dim=64", "ssl.proj_dim=32",
    "epochs=3", "log_every_steps=1", "checkpoint_every_steps=3",
]


def _train(out_dir: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supernet.train", *ARGS, f"out_dir={out_dir}", *extra],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def _logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip().endswith("}")]


def test_kill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert _train(straight, cwd=tmp_path).returncode == 0

    process = subprocess.Popen([sys.executable, "-m", "supernet.train", *ARGS, f"out_dir={crashed}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while max(_logged_steps(crashed), default=0) < 5:  # past the step-3 checkpoint, inside epoch 2 (4 steps each)
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved_step = load_checkpoint(crashed / "checkpoint.pt")["step"]
    assert 3 <= saved_step < 12, "the kill must land between checkpoints, before the end"

    result = _train(crashed, "resume=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed {crashed / 'checkpoint.pt'} at step {saved_step}/12" in result.stdout
    expected = torch.load(straight / "checkpoint.pt", weights_only=True)
    resumed = torch.load(crashed / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == expected["step"] == 12
    for name, tensor in expected["method"].items():
        torch.testing.assert_close(resumed["method"][name], tensor, rtol=0, atol=0, msg=name)


def test_corrupt_checkpoint_is_one_clear_error_and_the_previous_survives(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    assert _train(out_dir, "epochs=1", cwd=tmp_path).returncode == 0  # checkpoints at step 3 and 4
    checkpoint, previous = out_dir / "checkpoint.pt", previous_path(out_dir / "checkpoint.pt")
    assert load_checkpoint(previous)["step"] == 3 and load_checkpoint(checkpoint)["step"] == 4
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk

    result = _train(out_dir, "epochs=1", "resume=true", cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1
    assert "is not a readable supernet checkpoint" in lines[0] and str(previous) in lines[0]
    assert load_checkpoint(previous)["step"] == 3  # untouched
    assert checkpoint.read_bytes() == data[: len(data) // 2]  # nothing overwrote the evidence


def test_checkpoint_that_carries_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "slimnas-supernet/1", "method": Payload()}, path)
    try:
        load_checkpoint(path)
    except CheckpointError as error:
        assert "not a readable supernet checkpoint" in str(error)
    else:
        raise AssertionError("a pickle carrying code was loaded")
    assert not marker.exists()
