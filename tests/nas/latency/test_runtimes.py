"""Runtimes (issue 18.1): choosing one (defaults, refusals in one line), and each program computing what the
network computes. CPU: eager, compiled, onnxruntime, bfloat16 where native; CUDA-only runtimes skip here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nas.latency.runtimes as runtimes
from nas.latency.measure import measure_latency
from nas.latency.programs import prepare_program
from nas.latency.runtimes import LatencyRuntimeError, gate_mode, resolve_runtime, runtime_network
from nas.search import main as search_main
from search_spaces import UserError, get_space
from supernet import build_supernet

CUDA = torch.cuda.is_available()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_networks() -> dict[str, nn.Module]:
    """A static and a gated (masked) ``tiny`` sub-network whose gates decide (fc2 weights ~ N(0, 1))."""
    torch.manual_seed(0)
    space = get_space("tiny")
    supernet = build_supernet(space).eval()
    with torch.no_grad():
        for block in supernet.gated_blocks():
            block.gate.fc2.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    static = space.uniform_config(0.5)
    gated = space.uniform_config(0.75, gate_threshold=0.5)
    return {"static": supernet.extract(static).eval(), "gated": supernet.extract(gated).eval()}


# -- choosing a runtime -----------------------------------------------------------------------------------
def test_defaults_are_what_each_device_deploys() -> None:
    assert resolve_runtime("auto", "auto", device="cpu") == ("eager", "float32")
    assert resolve_runtime("auto", "auto", device="cuda") == ("graph", "float16")  # resolved even without a GPU
    assert resolve_runtime("onnxruntime", "auto", device="cpu") == ("onnxruntime", "float32")


@pytest.mark.parametrize(("runtime", "dtype", "device", "expected"), [
    ("graph", "auto", "cpu", "latency.runtime: graph does not run on cpu; on cpu use one of eager, compiled, onnxruntime"),
    ("tensorrt", "auto", "cpu", "latency.runtime: tensorrt does not run on cpu"),
    ("onnxruntime", "auto", "cuda", "latency.runtime: onnxruntime does not run on cuda"),
    ("tflite", "auto", "cpu", "latency.runtime: 'tflite' is not a runtime"),
    ("eager", "float8", "cpu", "latency.dtype: 'float8' is not a precision"),
    ("onnxruntime", "float16", "cpu", "latency.dtype: onnxruntime here runs float32 models"),
])
def test_a_bad_choice_is_one_line(runtime: str, dtype: str, device: str, expected: str) -> None:
    with pytest.raises(LatencyRuntimeError) as error:
        resolve_runtime(runtime, dtype, device=device)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_half_precision_is_refused_on_a_cpu_without_native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "_cpu_supports", lambda dtype: False)
    for dtype in ("float16", "bfloat16"):
        with pytest.raises(LatencyRuntimeError, match=f"latency.dtype: {dtype} on this CPU .* use latency.dtype=float32$"):
            resolve_runtime("eager", dtype, device="cpu")
    monkeypatch.setattr(runtimes, "_cpu_supports", lambda dtype: dtype == "bfloat16")
    assert resolve_runtime("compiled", "bfloat16", device="cpu") == ("compiled", "bfloat16")
    with pytest.raises(LatencyRuntimeError, match="use latency.dtype=float32 or bfloat16$"):
        resolve_runtime("eager", "float16", device="cpu")


def test_a_missing_optional_runtime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import torch_tensorrt now raises ImportError
    with pytest.raises(LatencyRuntimeError, match=r'tensorrt needs torch_tensorrt, which is not installed; pip install '
                                                  r'"slimnas\[tensorrt\]" \(or use latency.runtime=graph\)'):
        resolve_runtime("tensorrt", "auto", device="cuda")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(LatencyRuntimeError, match=r'onnxruntime is not installed; pip install "slimnas\[onnx\]"'):
        resolve_runtime("onnxruntime", "auto", device="cpu")
    assert issubclass(LatencyRuntimeError, UserError)


@pytest.mark.parametrize(("override", "expected"), [
    ("latency.runtime=graph", "error: latency.runtime: graph does not run on cpu"),
    ("latency.runtime=tflite", "latency.runtime"),  # refused by the settings schema, before anything runs
    ("latency.dtype=float8", "latency.dtype"),
])
def test_the_search_refuses_a_bad_choice_in_one_line_before_writing(override: str, expected: str, tiny_checkpoint: Path,
                                                                    search_overrides: list[str], tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    code = search_main(["--checkpoint", str(tiny_checkpoint), "--budget", "3MFLOPs", "--trials", "1", "--device", "cpu",
                        "--out", str(tmp_path / "run"), "--no-progress", *search_overrides, override])
    line = one_error_line(capfd.readouterr().err)
    assert code == 2 and expected in line, line
    assert not (tmp_path / "run").exists()


def test_gates_run_gathered_only_eager_at_batch_1() -> None:
    assert gate_mode("eager", 1) == "gathered"
    assert {gate_mode(runtime, batch) for runtime in runtimes.RUNTIMES for batch in (1, 64)
            if (runtime, batch) != ("eager", 1)} == {"masked"}


# -- what each program computes ----------------------------------------------------------------------------
def outputs(network: nn.Module, inputs: list[torch.Tensor], runtime: str, dtype: str = "float32") -> list[torch.Tensor]:
    """What ``runtime``'s program of ``network`` returns for each input (input 1 first: the buffer is re-bound)."""
    with torch.inference_mode():
        program = prepare_program(runtime_network(network, device=torch.device("cpu"), dtype=dtype),
                                  [x.to(runtimes.as_torch_dtype(dtype)) for x in inputs], runtime=runtime, dtype=dtype,
                                  threads=1)
        try:
            results = {}
            for index in (1, 0):
                program.load(index)
                program.run()
                results[index] = program.result().float().clone()
            return [results[0], results[1]]
        finally:
            program.close()


def references(network: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [network(x) for x in inputs]


@pytest.mark.parametrize("kind", ["static", "gated"])
def test_onnxruntime_computes_what_the_network_computes(kind: str, tiny_networks: dict[str, nn.Module]) -> None:
    pytest.importorskip("onnxruntime")
    network, inputs = tiny_networks[kind], [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    for got, expected in zip(outputs(network, inputs, "onnxruntime"), references(network, inputs)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_compiled_computes_what_the_network_computes(tiny_networks: dict[str, nn.Module]) -> None:
    """torch.compile of a gated network in masked mode (the harder of the two; a static one is a subset)."""
    network, inputs = tiny_networks["gated"], [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    for got, expected in zip(outputs(network, inputs, "compiled"), references(network, inputs)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_runs_a_cast_copy_and_leaves_the_network_alone(tiny_networks: dict[str, nn.Module]) -> None:
    if not runtimes._cpu_supports("bfloat16"):
        pytest.skip("this CPU has no native bfloat16 kernels")
    network, inputs = tiny_networks["static"], [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    for got, expected in zip(outputs(network, inputs, "eager", "bfloat16"), references(network, inputs)):
        torch.testing.assert_close(got, expected, rtol=0.1, atol=0.1)  # bfloat16 keeps 8 bits of mantissa
    latency = measure_latency(network, inputs[0], warmup=1, repeats=2, threads=1, dtype="bfloat16")
    assert latency.dtype == "bfloat16" and all(p.dtype == torch.float32 for p in network.parameters())


def test_a_gathered_network_is_refused_by_every_runtime_but_eager(tiny_networks: dict[str, nn.Module]) -> None:
    network = tiny_networks["gated"]
    network.set_gate_mode("gathered")
    try:
        for runtime in ("compiled", "graph", "onnxruntime", "tensorrt"):
            with pytest.raises(ValueError, match="must run masked"):
                prepare_program(network, [torch.randn(1, 3, 16, 16)], runtime=runtime, dtype="float32", threads=1)
    finally:
        network.set_gate_mode("masked")


def test_every_figure_records_what_produced_it(tiny_networks: dict[str, nn.Module]) -> None:
    pytest.importorskip("onnxruntime")
    gated = tiny_networks["gated"]
    latency = measure_latency(gated, torch.randn(4, 3, 16, 16), warmup=1, repeats=2, threads=1, runtime="onnxruntime")
    record = latency.to_dict()
    assert {key: record[key] for key in ("runtime", "dtype", "batch_size", "method", "gate_mode")} == {
        "runtime": "onnxruntime", "dtype": "float32", "batch_size": 4, "method": "perf_counter", "gate_mode": "masked"}
    assert record["device"].startswith("cpu ") and record["prepare_seconds"] > 0
    assert set(record["versions"]) >= {"torch", "python", "onnxruntime"}
    assert "onnxruntime float32" in str(latency) and "gates masked" in str(latency)


# -- CUDA only ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="CUDA graphs, half precision on a GPU and TensorRT need a CUDA device")
@pytest.mark.parametrize("runtime", ["eager", "graph", "compiled", "tensorrt"])
def test_cuda_runtimes_compute_what_the_network_computes(runtime: str, tiny_networks: dict[str, nn.Module]) -> None:
    if runtime == "tensorrt":
        pytest.importorskip("torch_tensorrt")
    network = tiny_networks["gated"]
    inputs = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    expected = references(network, inputs)
    device = torch.device("cuda")
    with torch.inference_mode():
        copy = runtime_network(network, device=device, dtype="float16")
        program = prepare_program(copy, [x.to(device, torch.float16).contiguous(memory_format=torch.channels_last)
                                         for x in inputs], runtime=runtime, dtype="float16", threads=None)
        try:
            for index in (1, 0):
                program.load(index)
                program.run()
                torch.testing.assert_close(program.result().float().cpu(), expected[index], rtol=2e-2, atol=2e-2)
        finally:
            program.close()
    latency = measure_latency(network, inputs[0], device="cuda", warmup=2, repeats=5, runtime=runtime, dtype="float16")
    assert latency.method == "cuda_events" and latency.device.startswith("cuda:") and latency.seconds > 0
    assert {"cuda", "cudnn"} <= set(latency.versions)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_cuda_graph_replays_a_full_size_network_at_batch_256() -> None:
    space = get_space("resnet18_cifar")
    network = build_supernet(space).eval().extract(space.max_config()).eval()
    latency = measure_latency(network, torch.randn(256, 3, 32, 32), device="cuda", warmup=3, repeats=5, runtime="graph",
                              dtype="float16")
    assert latency.runtime == "graph" and latency.batch_size == 256 and 0 < latency.seconds < 0.5



@pytest.mark.parametrize("runtime", ["onnxruntime", "compiled"])
def test_a_routed_network_runs_piecewise_as_it_runs_eagerly(runtime: str) -> None:
    """Routers decide per input, so no single program holds a routed network: one program per piece and shape,
    chained by the decisions, computes what the network computes, at batch 1 and in groups at batch 8."""
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    from tests.supernet.nn.test_routing import _routed

    _, _, _, routed = _routed(get_space("tiny"))
    inputs = [torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    batch = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(9))]
    with torch.inference_mode():
        for batches in (inputs, batch):
            program = prepare_program(routed, batches, runtime=runtime, dtype="float32", threads=1)
            try:
                for index, x in enumerate(batches):
                    program.load(index)
                    program.run()
                    torch.testing.assert_close(program.result(), routed(x), rtol=1e-4, atol=1e-4)
            finally:
                program.close()
        routes = {tuple(routed(x).shape) for x in inputs}
    assert routes == {(1, routed.feature_dim)}
