"""``python -m supernet.summary``: the size and cost of a search space, as a table or JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nas.cost import count_flops, count_params
from search_spaces import get_space
from supernet import build_supernet
from supernet.summary import main

pytestmark = pytest.mark.usefixtures("single_thread")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see the single_thread fixture
    return subprocess.run(
        [sys.executable, "-m", "supernet.summary", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_json_summary_of_tiny() -> None:
    result = _run("tiny", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {"space", "num_subnets", "max", "min"} <= set(summary)
    assert summary["space"] == "tiny" and summary["resolution"] == 32
    assert summary["num_subnets"] == get_space("tiny").num_subnets == 784
    for key in ("max", "min"):
        assert set(summary[key]) == {"flops", "params"}
        assert all(isinstance(v, int) and v > 0 for v in summary[key].values())
    assert summary["max"]["flops"] > summary["min"]["flops"]
    assert summary["max"]["params"] > summary["min"]["params"]
    # the numbers are fvcore's count of the extracted max network, and uniform x1.0 is the max
    space = get_space("tiny")
    reference = build_supernet(space, with_gates=False).extract(space.max_config())
    assert summary["max"] == {"flops": count_flops(reference, 32), "params": count_params(reference)}
    assert summary["uniform"]["1.0"] == summary["max"]
    assert summary["gate_params"] > 0


def test_unknown_space_is_one_line_without_traceback() -> None:
    result = _run("resnet19", "--json")
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "resnet19" in lines[0] and "tiny" in lines[0]  # names the bad value and the valid ones


def test_resolution_option_and_too_small_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny", "--resolution", "16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resolution"] == 16
    space = get_space("tiny")
    reference = build_supernet(space, with_gates=False).extract(space.min_config())
    assert summary["min"]["flops"] == count_flops(reference, 16) < count_flops(reference, 32)
    assert main(["tiny", "--resolution", "4"]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--resolution" in err


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny"]) == 0
    out = capsys.readouterr().out
    assert "search space tiny" in out and "fvcore" in out and "MFLOPs" in out
    assert "tied: conv1, layer1.0.conv2" in out
