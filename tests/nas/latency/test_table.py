"""Latency tables (``nas.latency_table``): what they hold, what they predict, the CLI, refusals, the search."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import nas.latency.measure
import nas.latency.plan
from nas.latency.build import build_table
from nas.latency.entries import (
    Entry,
    block_entry_widths,
    build_entry_module,
    count_entries,
    input_sizes,
    plan_entries,
)
from nas.latency.measure import Latency
from nas.latency.table import (
    FORMAT,
    FORMAT_VERSION,
    LatencyTable,
    LatencyTableError,
    Overhead,
    kept_channels,
)
from nas.latency.timers import RuntimeTimer
from nas.latency_table import main as table_main
from nas.search import main as search_main
from nas.study.run import search
from search_spaces import SubnetConfig, UserError, get_space
from supernet import build_supernet
from supernet.nn.flops import per_input_effective_flops, static_flops

RESOLUTION = 16  # the tiny checkpoint's (tests/nas/conftest.py)
FIXED, PROPORTIONAL = 1e-4, 0.1  # the synthetic tables' overhead


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    return lines[0]


def synthetic_table(space: str = "tiny", *, batch_size: int = 1, entries_range: tuple[float, float] = (0.0, 1.0)) -> dict:
    """A valid table whose entries are distinct known times (entry i: (i + 1) us); nothing measured."""
    entries: dict[str, dict[str, dict[str, float]]] = {}
    for index, entry in enumerate(plan_entries(get_space(space), batch_size=batch_size)):
        entries.setdefault(entry.section, {}).setdefault(entry.module, {})[entry.key] = (index + 1) * 1e-6
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "space": space, "resolution": RESOLUTION,
        "batch_size": batch_size, "runtime": "eager", "dtype": "float32", "gathered": batch_size == 1,
        "device": "cpu Synthetic (1 thread)", "threads": 1, "warmup": 0,
        "repeats": 1, "versions": {"torch": torch.__version__}, "created": "2026-12-01T00:00:00+00:00",
        "overhead": {"fixed_seconds": FIXED, "proportional": PROPORTIONAL, "entries_range_seconds": list(entries_range),
                     "measured": []},
        "entries": entries,
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def measured_tiny() -> dict:
    """A tiny table measured on this machine at the checkpoint's resolution (one timed forward per entry)."""
    return build_table("tiny", resolution=RESOLUTION, device="cpu", batch_size=1, threads=1, warmup=0, repeats=1)


# -- what a table holds ---------------------------------------------------------------------------------
def test_entry_counts_follow_the_ties() -> None:
    # tiny: stem 32 (4 choices); layer1.0: input and output tied with the stem (4) x inner 32 (4);
    # layer2.0: input 4 x inner 64 (7) x output 64 (7); head: 7. Gates: input x gated width. Gathered
    # (batch 1 only): every multiple of 8 up to the gated layer's maximum: 0..32 (5) and 0..64 (9).
    counts = count_entries(get_space("tiny"), batch_size=1)
    assert counts == {"stem": 4, "blocks": 4 * 4 + 4 * 7 * 7, "gates": 4 * 4 + 4 * 7, "gathered": 4 * 5 + 4 * 7 * 9,
                      "head": 7, "total": 539}
    assert count_entries(get_space("tiny"), batch_size=8) == {**counts, "gathered": 0, "total": 539 - 272}


def test_a_family_without_table_modules_is_refused_in_one_line() -> None:
    other = dataclasses.replace(get_space("tiny"), family="vit")
    with pytest.raises(UserError, match="latency tables cover the resnet and mobilenet_v2 families, not vit"):
        plan_entries(other, batch_size=1)


@pytest.mark.parametrize("space_name", ["tiny", "mobilenet_v2_cifar", "resnet50_cifar@0.25"])
def test_entry_modules_have_the_extracted_network_shapes(space_name: str) -> None:
    """The table times modules of exactly the shapes ``extract`` gives (basic, inverted residual, bottleneck)."""
    space = get_space(space_name)
    supernet = build_supernet(space)
    sizes = input_sizes(space, space.default_resolution)
    rng = np.random.default_rng(0)
    for cfg in (space.sample(rng), space.sample(rng), space.min_config(), space.max_config()):
        static, gated = supernet.extract(cfg), supernet.extract(cfg.with_gates({b.name: 0.5 for b in space.gated_blocks}))
        for spec in space.blocks:
            block, _ = build_entry_module(space, Entry("blocks", spec.name, block_entry_widths(spec, cfg.channels)),
                                          sizes, batch_size=1, resolution=space.default_resolution)
            assert shapes(block) == shapes(static.get_submodule(spec.name)), spec.name
            if spec.gated:
                widths = (("in", cfg.channels[spec.in_layer]), ("inner", cfg.channels[spec.gated_layer]))
                gate, shape = build_entry_module(space, Entry("gates", spec.name, widths), sizes, batch_size=1,
                                                 resolution=space.default_resolution)
                assert shapes(gate.gate) == shapes(gated.get_submodule(spec.name).gate), spec.name
                assert shape[1] == cfg.channels[spec.in_layer]


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items() if "num_batches" not in name}


def test_a_gathered_entry_runs_the_kept_channels_only() -> None:
    """The gathered entry computes what the masked block computes with the same mask, and runs gathered."""
    space = get_space("tiny")
    sizes = input_sizes(space, 32)
    entry = Entry("gathered", "layer2.0", (("in", 24), ("kept", 40), ("out", 48)))
    block, shape = build_entry_module(space, entry, sizes, batch_size=1, resolution=32)
    x = torch.randn(shape)
    assert block.gate_active and block.gather and not block.training
    assert int(block.gate(x, 0.5).sum()) == 40 and block.gate(x, 0.5).shape == (1, 64)
    with torch.no_grad():
        gathered = block(x)
        block.gather = False
        masked = block(x)
    assert sizes["layer2.0"] == (32, 32) and gathered.shape == masked.shape == (1, 48, 16, 16)  # stride 2
    torch.testing.assert_close(gathered, masked, rtol=1e-4, atol=1e-5)
    assert int(block.last_mask.sum()) == 40  # the masked run kept 40 channels


def test_kept_channels_account_for_the_effective_flops() -> None:
    """static FLOPs - sum over gated blocks of (dropped channels x FLOPs per channel) = effective FLOPs, per input."""
    space = get_space("tiny")
    supernet = build_supernet(space).eval()
    with torch.no_grad():
        for block in supernet.gated_blocks():
            block.gate.fc2.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    cfg = space.uniform_config(0.75, gate_threshold=0.5)
    network = supernet.extract(cfg).eval()
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kept = kept_channels(network, images, batch_size=5)
    assert set(kept) == {"layer1.0", "layer2.0"} and all(counts.shape == (12,) for counts in kept.values())
    saved = sum((cfg.channels[spec.gated_layer] - kept[spec.name]) * network.get_submodule(spec.name).inner_channel_flops
                for spec in space.gated_blocks)
    expected = per_input_effective_flops(network, images).numpy()
    assert np.allclose(static_flops(network, 32) - saved, expected)
    assert 0 < kept["layer2.0"].min() and kept["layer2.0"].max() < cfg.channels["layer2.0.conv1"]  # the gates decide
    assert network.gate_mode == "masked" and not network.training


# -- what a table predicts --------------------------------------------------------------------------------
def tiny_static_sum(entries: dict, channels: dict[str, int]) -> float:
    """The tiny network's parts written out by hand: stem, two blocks, the global pool."""
    c = channels
    return (entries["stem"]["conv1"][f"out={c['conv1']}"]
            + entries["blocks"]["layer1.0"][f"in={c['conv1']} inner={c['layer1.0.conv1']} out={c['layer1.0.conv2']}"]
            + entries["blocks"]["layer2.0"][f"in={c['layer1.0.conv2']} inner={c['layer2.0.conv1']} "
                                            f"out={c['layer2.0.conv2']}"]
            + entries["head"]["avgpool"][f"in={c['layer2.0.conv2']}"])


def test_a_prediction_is_the_sum_of_its_entries_plus_the_overhead() -> None:
    data = synthetic_table()
    table = LatencyTable.from_dict(data)
    space, rng = get_space("tiny"), np.random.default_rng(0)
    for _ in range(10):
        cfg = space.sample(rng)
        cfg = SubnetConfig(cfg.space, dict(cfg.channels), None, RESOLUTION)
        total = tiny_static_sum(data["entries"], dict(cfg.channels))
        assert table.predict(cfg) == pytest.approx(total + FIXED + PROPORTIONAL * total, rel=1e-12)


def test_the_overhead_is_not_extrapolated_beyond_the_measured_networks() -> None:
    data = synthetic_table(entries_range=(0.0, 1e-5))  # every tiny config's entries sum to more than 10 us
    cfg = SubnetConfig("tiny", dict(get_space("tiny").max_config().channels), None, RESOLUTION)
    total = tiny_static_sum(data["entries"], dict(cfg.channels))
    assert LatencyTable.from_dict(data).predict(cfg) == pytest.approx(total + FIXED + PROPORTIONAL * 1e-5, rel=1e-12)


def test_the_overhead_line_ignores_a_network_timed_while_the_machine_was_busy() -> None:
    sums = [1e-3 * (1 + i) for i in range(8)]
    measured = [{"network_seconds": 2e-4 + 1.1 * s, "entries_seconds": s} for s in sums]
    measured[5]["network_seconds"] *= 3  # an outlier: least squares would tilt the line
    overhead = Overhead.fit(measured)
    assert overhead.fixed_seconds == pytest.approx(2e-4) and overhead.proportional == pytest.approx(0.1)
    assert overhead.entries_range == (sums[0], sums[-1]) and overhead.at(1.0) == pytest.approx(2e-4 + 0.1 * sums[-1])
    flat = Overhead.fit([{"network_seconds": 3e-3, "entries_seconds": 2e-3}] * 3)  # one network shape only
    assert (flat.fixed_seconds, flat.proportional) == (pytest.approx(1e-3), 0.0)


def test_a_gated_prediction_is_the_mean_over_inputs_of_gates_plus_kept_channels() -> None:
    data = synthetic_table()
    e = data["entries"]
    c = dict(get_space("tiny").uniform_config(0.75).channels)  # conv1 24, layer1.0.conv1 24, layer2.0.conv1 48, ...
    cfg = SubnetConfig("tiny", c, {"layer1.0": 0.3, "layer2.0": 0.7}, RESOLUTION)
    kept = {"layer1.0": [0, 13, 24], "layer2.0": [48, 1, 40]}
    per_input = []
    for k1, k2 in zip(kept["layer1.0"], kept["layer2.0"]):
        up1, up2 = math.ceil(k1 / 8) * 8, math.ceil(k2 / 8) * 8  # a count between multiples of 8 costs the next one
        per_input.append(
            e["gates"]["layer1.0"][f"in={c['conv1']} inner={c['layer1.0.conv1']}"]
            + e["gathered"]["layer1.0"][f"in={c['conv1']} kept={up1} out={c['layer1.0.conv2']}"]
            + e["gates"]["layer2.0"][f"in={c['layer1.0.conv2']} inner={c['layer2.0.conv1']}"]
            + e["gathered"]["layer2.0"][f"in={c['layer1.0.conv2']} kept={up2} out={c['layer2.0.conv2']}"])
    fixed_parts = e["stem"]["conv1"][f"out={c['conv1']}"] + e["head"]["avgpool"][f"in={c['layer2.0.conv2']}"]
    total = fixed_parts + sum(per_input) / 3
    table = LatencyTable.from_dict(data)
    assert table.predict(cfg, kept) == pytest.approx(total + FIXED + PROPORTIONAL * total, rel=1e-12)
    with pytest.raises(ValueError, match="kept channels"):
        table.predict(cfg)
    with pytest.raises(ValueError, match="must lie in"):
        table.predict(cfg, {"layer1.0": [0, 13, 25], "layer2.0": [48, 1, 40]})  # 25 > the active 24


def test_a_gated_prediction_at_batch_above_one_is_masked() -> None:
    """At batch > 1 gated networks run masked: every channel computed, plus the gates; no kept channels needed."""
    data = synthetic_table(batch_size=4)
    c = dict(get_space("tiny").uniform_config(0.5).channels)
    cfg = SubnetConfig("tiny", c, {"layer1.0": 0.5, "layer2.0": 0.5}, RESOLUTION)
    gates = (data["entries"]["gates"]["layer1.0"][f"in={c['conv1']} inner={c['layer1.0.conv1']}"]
             + data["entries"]["gates"]["layer2.0"][f"in={c['layer1.0.conv2']} inner={c['layer2.0.conv1']}"])
    total = tiny_static_sum(data["entries"], c) + gates
    assert LatencyTable.from_dict(data).predict(cfg) == pytest.approx(total + FIXED + PROPORTIONAL * total, rel=1e-12)


# -- building one ---------------------------------------------------------------------------------------------
def test_the_command_builds_a_table_with_its_metadata(tmp_path: Path) -> None:
    out = tmp_path / "tables" / "tiny.json"
    result = subprocess.run(
        [sys.executable, "-m", "nas.latency_table", "--space", "tiny", "--resolution", str(RESOLUTION), "--device", "cpu",
         "--batch-size", "1", "--threads", "1", "--warmup", "1", "--repeats", "2", "--out", str(out), "--no-progress"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(out) in result.stdout and "539 entries" in result.stdout
    data = json.loads(out.read_text())
    assert (data["format"], data["format_version"], data["space"], data["resolution"], data["batch_size"]) == (
        FORMAT, FORMAT_VERSION, "tiny", RESOLUTION, 1)
    assert (data["runtime"], data["dtype"], data["gathered"]) == ("eager", "float32", True)
    assert (data["threads"], data["warmup"], data["repeats"], data["statistic"]) == (1, 1, 2, "median")
    assert data["device"].startswith("cpu ") and data["device"].endswith("(1 thread)")
    assert data["versions"]["torch"] == torch.__version__ and "python" in data["versions"]
    assert datetime.datetime.fromisoformat(data["created"]).tzinfo is not None
    assert data["build_seconds"] > 0 and "multiple of 8" in data["kept_widths"]
    assert len(data["overhead"]["measured"]) == 15
    times = [t for section in data["entries"].values() for module in section.values() for t in module.values()]
    assert len(times) == 539 and all(t > 0 for t in times)
    table = LatencyTable.load(out)
    assert table.device == data["device"] and len(table.sha256) == 64


def test_count_builds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert table_main(["--space", "tiny", "--count"]) == 0
    assert "on eager float32: 539 entries (4 stem, 212 blocks, 44 gates, 272 gathered, 7 head)" in capsys.readouterr().out
    # a CUDA-graph table (counted anywhere): captured graphs cannot follow gathered shapes, so gated blocks run masked
    assert table_main(["--space", "tiny", "--device", "cuda", "--runtime", "graph", "--count"]) == 0
    assert "on graph float16: 267 entries (4 stem, 212 blocks, 44 gates, 0 gathered, 7 head)" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_a_cuda_table_without_a_gpu_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert table_main(["--space", "tiny", "--device", "cuda", "--out", str(tmp_path / "t.json")]) == 2
    assert "no CUDA device is available here" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("arguments, expected", [
    (["--space", "resnet7"], "resnet7"),
    (["--space", "tiny", "--repeats", "0"], "--repeats"),
    (["--space", "tiny"], "--out"),
    (["--space", "tiny", "--device", "tpu", "--out", "t.json"], "tpu"),
    (["--space", "tiny", "--device", "onnxruntime", "--count"], "--runtime onnxruntime"),
    (["--space", "tiny", "--runtime", "graph", "--count"], "--runtime: graph does not run on cpu"),
    (["--space", "tiny", "--dtype", "float16", "--runtime", "onnxruntime", "--count"], "--dtype: onnxruntime"),
])
def test_bad_command_lines_are_one_line(arguments: list[str], expected: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert table_main(arguments) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_onnxruntime_missing_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert table_main(["--space", "tiny", "--runtime", "onnxruntime", "--out", str(tmp_path / "t.json")]) == 2
    assert 'pip install "slimnas[onnx]"' in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "t.json").exists()


def test_onnxruntime_times_every_kind_of_entry_its_table_holds() -> None:
    """An onnxruntime table runs gated blocks masked, as the exported model.onnx does: no gathered entries, and a
    gathered module is refused (a caller bug), not timed as something it is not."""
    pytest.importorskip("onnxruntime")
    space = get_space("tiny")
    sizes = input_sizes(space, RESOLUTION)
    timer = RuntimeTimer(device="cpu", runtime="onnxruntime", dtype="float32", warmup=1, repeats=2, threads=1)
    plan = plan_entries(space, batch_size=1, gathered=False)
    assert not any(entry.section == "gathered" for entry in plan)
    first = {}
    for entry in plan:
        first.setdefault(entry.section, entry)
    assert set(first) == {"stem", "blocks", "gates", "head"}
    for entry in first.values():
        module, shape = build_entry_module(space, entry, sizes, batch_size=1, resolution=RESOLUTION)
        seconds = timer(module, torch.randn(shape))
        assert 0 < seconds < 1, entry
    assert timer.device.startswith("cpu ") and "(1 thread)" in timer.device
    assert timer.runtime == "onnxruntime" and "onnxruntime" in timer.versions
    gathered = Entry("gathered", "layer2.0", (("in", 16), ("kept", 24), ("out", 32)))
    module, shape = build_entry_module(space, gathered, sizes, batch_size=1, resolution=RESOLUTION)
    with pytest.raises(ValueError, match="masked"):
        timer(module, torch.randn(shape))


# -- refusing a table ---------------------------------------------------------------------------------------
def first_block_key(data: dict) -> str:
    return next(iter(data["entries"]["blocks"]["layer2.0"]))


BAD_TABLES: dict[str, tuple[Callable[[dict], Any], str]] = {
    "not JSON": (lambda data: "{not json", "not valid JSON"),
    "not a table": (lambda data: {"hello": 1}, "not a latency table"),
    "wrong format version": (lambda data: {**data, "format_version": 99}, "format_version 99 is not supported"),
    "missing field": (lambda data: {k: v for k, v in data.items() if k != "device"}, "missing field 'device'"),
    "missing entry": (lambda data: drop_entry(data), "missing entry blocks['layer2.0']"),
    "negative time": (lambda data: set_entry(data, -1e-3), "is -0.001"),
    "not a number": (lambda data: set_entry(data, "fast"), "'fast'"),
    "bad overhead": (lambda data: {**data, "overhead": {"fixed_seconds": float("nan")}}, "overhead"),
    "unknown space": (lambda data: {**data, "space": "resnet7"}, "resnet7"),
}


def drop_entry(data: dict) -> dict:
    data = copy.deepcopy(data)
    del data["entries"]["blocks"]["layer2.0"][first_block_key(data)]
    return data


def set_entry(data: dict, value: object) -> dict:
    data = copy.deepcopy(data)
    data["entries"]["blocks"]["layer2.0"][first_block_key(data)] = value
    return data


def bad_table(case: str, path: Path) -> Path:
    broken = BAD_TABLES[case][0](synthetic_table())
    path.write_text(broken if isinstance(broken, str) else json.dumps(broken))
    return path


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_the_loader_refuses_a_bad_table_in_one_line(case: str, tmp_path: Path) -> None:
    with pytest.raises(LatencyTableError) as error:
        LatencyTable.load(bad_table(case, tmp_path / "table.json"))
    message = str(error.value)
    assert "\n" not in message and BAD_TABLES[case][1] in message and str(tmp_path / "table.json") in message


def test_a_missing_table_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LatencyTableError, match="cannot be read"):
        LatencyTable.load(tmp_path / "nowhere.json")


def search_arguments(checkpoint: Path, table: Path, out: Path, overrides: list[str], *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--latency-table", str(table), "--latency-budget", "1ms", "--trials", "2",
            "--out", str(out), "--no-progress", *overrides, *extra]


@pytest.mark.parametrize("case", ["not JSON", "wrong format version", "missing entry", "negative time"])
def test_search_refuses_a_bad_table_before_writing(case: str, tiny_checkpoint: Path, search_overrides: list[str],
                                                   tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    table = bad_table(case, tmp_path / "table.json")
    code = search_main(search_arguments(tiny_checkpoint, table, tmp_path / "run", search_overrides))
    assert code == 2 and BAD_TABLES[case][1] in one_error_line(capfd.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mismatch", ["space", "resolution", "batch size"])
def test_search_refuses_a_table_built_for_something_else(mismatch: str, measured_tiny: dict, tiny_checkpoint: Path,
                                                         search_overrides: list[str], tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    data, extra = measured_tiny, []
    if mismatch == "space":
        data = build_table("tiny@0.5", resolution=RESOLUTION, device="cpu", batch_size=1, threads=1, warmup=0, repeats=1)
    elif mismatch == "resolution":
        data = {**measured_tiny, "resolution": 32}
    else:
        extra = ["latency.batch_size=2"]
    table = write(tmp_path / "table.json", data)
    code = search_main(search_arguments(tiny_checkpoint, table, tmp_path / "run", search_overrides, *extra))
    line = one_error_line(capfd.readouterr().err)
    assert code == 2 and "built for" in line and "this search needs tiny at 16 px, batch" in line, line
    expected = {"space": "tiny@0.5 at 16 px, batch 1", "resolution": "tiny at 32 px, batch 1",
                "batch size": "batch 2 (latency.batch_size)"}[mismatch]
    assert expected in line
    assert not (tmp_path / "run").exists()


# -- searching with one ---------------------------------------------------------------------------------------
@pytest.fixture
def never_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the device was timed although a latency table was given")

    monkeypatch.setattr(nas.latency.measure, "measure_latencies", refuse)
    monkeypatch.setattr(nas.latency.plan, "measure_latencies", refuse)


def latency_budget(table: LatencyTable) -> str:
    """A budget halfway between the predicted min and max networks of tiny, in microseconds (so some candidates
    are over it)."""
    space = get_space("tiny")
    low, high = (table.predict(SubnetConfig("tiny", dict(c.channels), None, RESOLUTION))
                 for c in (space.min_config(), space.max_config()))
    assert low < high
    return f"{(low + high) / 2 * 1e6:.1f}us"


def test_search_with_a_table_predicts_and_never_times(never_timed: None, tiny_checkpoint: Path,
                                                      make_request: Callable[..., Any], tmp_path: Path) -> None:
    path = write(tmp_path / "table.json", synthetic_table())  # known, noiseless times: min < max for sure
    table = LatencyTable.load(path)
    request = make_request(tiny_checkpoint, tmp_path / "run", budget=latency_budget(table), trials=6,
                           study_name="tabled")
    summary = search(dataclasses.replace(request, latency_table=path))
    assert len(summary.records) == 6
    fields = set(Latency.__dataclass_fields__)
    for record in summary.records:
        latency, cfg = record["latency"], SubnetConfig.from_dict(record["config"])
        assert fields <= set(latency) and latency["method"] == "table"
        assert (latency["device"], latency["table"], latency["table_sha256"]) == (table.device, str(path), table.sha256)
        assert latency["batch_size"] == 1
        if not cfg.gated:
            assert latency["seconds"] == pytest.approx(table.predict(cfg), rel=1e-12)
        assert (record["accuracy"] is not None) == (latency["seconds"] <= request.latency_budget.value)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "run" / "study.journal")))
    identity = optuna.load_study(study_name="tabled", storage=storage).user_attrs["identity"]
    assert identity["latency_table.sha256"] == table.sha256 and identity["latency_table.device"] == table.device


def test_a_study_is_not_resumed_with_another_devices_table(never_timed: None, tiny_checkpoint: Path,
                                                           search_overrides: list[str], tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path / "first.json", synthetic_table())
    other = write(tmp_path / "other.json", {**synthetic_table(), "device": "cpu Another Machine (1 thread)"})
    budget = latency_budget(LatencyTable.load(first))
    arguments = ["--checkpoint", str(tiny_checkpoint), "--objective", "latency", "--latency-budget", budget,
                 "--trials", "2", "--study-name", "devices", "--out", str(tmp_path / "run"), "--no-progress",
                 *search_overrides]
    assert search_main([*arguments, "--latency-table", str(first)]) == 0
    assert "predicted by the table" in capfd.readouterr().out
    code = search_main([*arguments, "--latency-table", str(other)])
    line = one_error_line(capfd.readouterr().err)
    assert code == 2 and line.startswith("error: device: study 'devices' was scored with 'latency table "), line
    assert "Another Machine" in line
