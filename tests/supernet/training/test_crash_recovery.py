"""kill -9, SIGTERM or Ctrl-C during training, then resume=true: the run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must end at."""
    folder = tmp_path_factory.mktemp("straight")
    assert _train(folder / "run", cwd=folder).returncode == 0
    return folder / "run"


@pytest.mark.parametrize(("sent", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_resume_loses_nothing(
        tmp_path: Path, straight_run: Path, sent: signal.Signals, exit_code: int) -> None:
    """Issue 21 item 13: a scheduler's SIGTERM (or Ctrl-C) used to end the run where it was, losing the steps since
    the last checkpoint. Now the current step ends, a checkpoint is written, one line says so, and the exit code is
    128 + the signal's number. With no periodic checkpoints, whatever resumes comes from that checkpoint."""
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "supernet.train", *ARGS, "checkpoint_every_steps=0",
                                f"out_dir={stopped}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)
    deadline = time.monotonic() + 300
    while max(_logged_steps(stopped), default=0) < 2:
        assert process.poll() is None, "training ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == exit_code, stderr[-2000:]
    saved_step = load_checkpoint(stopped / "checkpoint.pt")["step"]
    assert 2 <= saved_step < 12 and saved_step == max(_logged_steps(stopped))  # no step lost, none half done
    lines = stderr.strip().splitlines()
    assert lines[-1] == (f"stopped by {sent.name} after step {saved_step}/12: checkpoint written to "
                         f"{stopped / 'checkpoint.pt'}; resume=true continues from it")
    assert "Traceback" not in stderr
    if sent != signal.SIGTERM:
        return  # the same checkpoint either way: resumed once, for SIGTERM

    result = _train(stopped, "resume=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = torch.load(straight_run / "checkpoint.pt", weights_only=True)
    resumed = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == expected["step"] == 12
    for name, tensor in expected["method"].items():
        torch.testing.assert_close(resumed["method"][name], tensor, rtol=0, atol=0, msg=name)
