"""GPU latency as deployed (issue 18): one script, one GPU, at most 3 minutes, results as JSON under ``--out``.

Stages, in this order, each with a time budget (a stage that runs out stops where it is and says so):

0. ``cold_start`` (item 2, 12 s): before anything else runs on the GPU, the smallest and the full
   ``resnet18_cifar`` network timed as the budget check used to time them (eager, float32, batch 1,
   5 warm-up forwards, no device warm-up, smallest first, one after the other), then as it does now
   (device warm-up, warm-up of at least 0.2 s, the two interleaved). Confirms or refutes, on the GPU,
   the mechanism found on the CPU.
1. ``flops_order`` (items 1 and 4, 45 s per space): ``--configs`` random static configs of
   ``resnet18_cifar`` and ``mobilenet_v2_cifar`` (seeded), timed on ``graph`` in float16 at batch
   ``--batch-size`` (256) twice, the second pass in reverse order with every program rebuilt. Targets:
   Kendall tau between latency (mean of the passes) and fvcore FLOPs >= 0.8; between the two passes
   >= 0.95. (Their FLOPs are counted first, in CPU worker processes, before anything runs on the GPU.)
2. ``full_batch1`` (item 1, 12 s): the full ``resnet18_cifar`` at batch 1 on eager float32 (the
   issue's 1.93 ms), eager float16, graph float32 and graph float16 (and, with ``--tensorrt``,
   ``tensorrt`` float16), all timed side by side.
3. ``gated_batch1`` (item 3, 25 s): a full-width gated ``resnet18_cifar`` (untrained gates made to
   decide: fc2 ~ N(0, 1), BN recalibrated on synthetic images, threshold 0.5) beside its widths
   without gates at batch 1: eager float32 (gathered: kept channels only, a host sync per block) and
   graph float16 (masked: captured graphs cannot follow data-dependent shapes), side by side; the
   effective FLOPs ratio r beside the latency ratios.

``--dry-run`` runs the same code on the CPU at toy sizes (space ``tiny``, 4 configs, batch 8,
eager float32 standing in for graph float16, 3 repeats), to show the script works before GPU time is
spent on it::

    python benchmarks/bench_gpu_latency.py --out results/gpu            # on the GPU machine (about 2.5 min)
    python benchmarks/bench_gpu_latency.py --dry-run --out /tmp/dry     # anywhere (about 30 s on a CPU)

The JSON (``gpu_latency.json``) is rewritten after every stage, so a run stopped from outside keeps
what it finished. ``--budgets STAGE=SECONDS ...`` replaces the budgets above: the GPU session
(``benchmarks/gpu_session/run.sh``) passes the ones its time plan gives it, with ``--configs``. A dry run
also records what counting the FLOPs of one real config costs, which the plan prices the real count with.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_latency_table import deciding_gates, kendall_tau_b, synthetic_images
from nas.cost import count_flops
from nas.latency.measure import Latency, measure_latencies, measure_variants
from nas.latency.runtimes import LatencyRuntimeError, resolve_runtime
from search_spaces import SubnetConfig, get_space
from supernet import SuperNet, build_supernet, recalibrate_bn
from supernet.io.files import atomic_write_text
from supernet.io.provenance import machine_record
from supernet.nn.flops import effective_flops

TARGET_FLOPS_TAU = 0.8
TARGET_REPEAT_TAU = 0.95
BUDGETS = {"cold_start": 12.0, "flops_order": 45.0, "full_batch1": 12.0, "gated_batch1": 25.0}  # seconds
SPACES = ("resnet18_cifar", "mobilenet_v2_cifar")


@dataclass(frozen=True)
class Setup:
    """What the run measures with: the GPU's or, with ``--dry-run``, the CPU stand-ins."""

    device: str
    graph: tuple[str, str]  # (runtime, dtype) of the deployed program: graph float16
    eager: tuple[str, str]  # eager float32: what the issue measured
    spaces: tuple[str, ...]
    gated_space: str
    configs: int
    batch_size: int
    warmup: int
    warmup_seconds: float
    repeats: int
    budget_scale: float  # stage budgets are multiplied by it
    tensorrt: bool = False  # also time TensorRT engines (building one takes tens of seconds)


@dataclass
class Stage:
    name: str
    budget_seconds: float
    seconds: float = 0.0
    truncated: bool = False  # stopped by its budget
    results: dict[str, Any] = field(default_factory=dict)
    verdicts: list[str] = field(default_factory=list)  # PASS/FAIL lines


@dataclass
class Report:
    benchmark: str
    dry_run: bool
    setup: dict[str, Any]
    machine: dict[str, Any]
    stages: list[Stage] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(line.startswith("FAIL") for stage in self.stages for line in stage.verdicts)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def passed(self) -> bool:
        return time.perf_counter() > self.end


def setup_for(dry_run: bool, configs: int, batch_size: int, tensorrt: bool = False) -> Setup:
    if dry_run:
        return Setup(device="cpu", graph=("eager", "float32"), eager=("eager", "float32"), spaces=("tiny",),
                     gated_space="tiny", configs=min(configs, 4), batch_size=8, warmup=1, warmup_seconds=0.0,
                     repeats=3, budget_scale=4.0)
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run on the GPU machine, or pass --dry-run to check the script")
    return Setup(device="cuda", graph=("graph", "float16"), eager=("eager", "float32"), spaces=SPACES,
                 gated_space="resnet18_cifar", configs=configs, batch_size=batch_size, warmup=5, warmup_seconds=0.05,
                 repeats=20, budget_scale=1.0, tensorrt=tensorrt)


def extracted(supernet: SuperNet, cfg: SubnetConfig) -> SuperNet:
    return supernet.extract(cfg).eval()


def summary(latency: Latency) -> dict[str, Any]:
    return {"ms": latency.seconds * 1e3, "runtime": latency.runtime, "dtype": latency.dtype,
            "batch_size": latency.batch_size, "gate_mode": latency.gate_mode, "warmup": latency.warmup,
            "prepare_s": latency.prepare_seconds}


# -- stages ---------------------------------------------------------------------------------------------------
def cold_start(setup: Setup, stage: Stage) -> None:
    space = get_space(setup.spaces[0])
    torch.manual_seed(0)
    supernet = build_supernet(space, with_gates=False).eval()
    images = synthetic_images(8, space.default_resolution, torch.Generator().manual_seed(0))
    inputs = [images[i : i + 1] for i in range(8)]
    small, full = extracted(supernet, space.min_config()), extracted(supernet, space.max_config())
    runtime, dtype = setup.eager
    old = {name: measure_latencies([network], inputs, device=setup.device, warmup=5, repeats=setup.repeats,
                                   runtime=runtime, dtype=dtype, warm_device=False)[0]
           for name, network in (("smallest", small), ("full", full))}  # the old budget check: sequential, cold
    new = measure_latencies([small, full], inputs, device=setup.device, warmup=5, warmup_seconds=0.2,
                            repeats=setup.repeats, runtime=runtime, dtype=dtype)
    stage.results = {"old_procedure": {name: summary(latency) for name, latency in old.items()},
                     "new_procedure": {"smallest": summary(new[0]), "full": summary(new[1])},
                     "runtime": f"{runtime} {dtype}", "batch_size": 1}
    inverted_old = old["smallest"].seconds > old["full"].seconds
    inverted_new = new[0].seconds > new[1].seconds
    stage.verdicts.append(f"{'INFO'}: old procedure smallest {old['smallest'].seconds * 1e3:.3f} ms vs full "
                          f"{old['full'].seconds * 1e3:.3f} ms ({'inverted' if inverted_old else 'in order'}); new "
                          f"{new[0].seconds * 1e3:.3f} vs {new[1].seconds * 1e3:.3f} ms "
                          f"({'inverted' if inverted_new else 'in order'})")


def sampled_configs(space_name: str, count: int) -> list[SubnetConfig]:
    """The stage's random static configs of ``space_name`` (seed 0)."""
    space = get_space(space_name)
    rng = np.random.default_rng(0)
    return [space.sample(rng) for _ in range(count)]


_SUPERNETS: dict[str, SuperNet] = {}


def _flops_of(job: tuple[str, dict[str, Any]]) -> int:
    """fvcore FLOPs of one config (a worker process builds each space's supernet once)."""
    torch.set_num_threads(1)
    space_name, config = job
    if space_name not in _SUPERNETS:
        _SUPERNETS[space_name] = build_supernet(get_space(space_name), with_gates=False).eval()
    cfg = SubnetConfig.from_dict(config)
    return count_flops(_SUPERNETS[space_name].extract(cfg).eval(), get_space(space_name).default_resolution)


def flops_per_config_seconds() -> float:
    """fvcore's time to count one config of the GPU session's spaces on one core (the dry run records it for the
    session's time plan: its own toy space would say nothing about them): the full and the smallest network of each,
    each supernet built first, as a worker process does once."""
    torch.set_num_threads(1)
    times = []
    for name in SPACES:
        space = get_space(name)
        supernet = build_supernet(space, with_gates=False).eval()
        for cfg in (space.max_config(), space.min_config()):
            began = time.perf_counter()
            count_flops(supernet.extract(cfg).eval(), space.default_resolution)
            times.append(time.perf_counter() - began)
    return sum(times) / len(times)


def count_all_flops(setup: Setup) -> dict[str, list[int]]:
    """FLOPs of every sampled config, counted in worker processes before anything touches the GPU (fvcore traces on
    the CPU at about 0.3 s a network: counted one by one inside the GPU stages they would eat their budget)."""
    jobs = [(name, cfg.to_dict()) for name in setup.spaces for cfg in sampled_configs(name, setup.configs)]
    workers = max(1, min(len(jobs), (os.cpu_count() or 2) - 1, 15))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = list(pool.map(_flops_of, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    return {name: counts[i * setup.configs:(i + 1) * setup.configs] for i, name in enumerate(setup.spaces)}


def flops_order(setup: Setup, space_name: str, flops: list[int], stage: Stage, deadline: Deadline) -> None:
    space = get_space(space_name)
    resolution = space.default_resolution
    torch.manual_seed(0)
    supernet = build_supernet(space, with_gates=False).eval()
    configs = sampled_configs(space_name, setup.configs)
    images = synthetic_images(setup.batch_size, resolution, torch.Generator().manual_seed(1))
    runtime, dtype = setup.graph
    passes: list[dict[int, float]] = [{}, {}]
    for pass_index, order in enumerate((range(len(configs)), reversed(range(len(configs))))):
        for index in order:
            if deadline.passed():
                stage.truncated = True
                break
            latency = measure_latencies([extracted(supernet, configs[index])], images, device=setup.device,
                                        warmup=setup.warmup, warmup_seconds=setup.warmup_seconds, repeats=setup.repeats,
                                        runtime=runtime, dtype=dtype)[0]
            passes[pass_index][index] = latency.seconds
    both = sorted(set(passes[0]) & set(passes[1]))
    latency_ms = {i: (passes[0][i] + passes[1][i]) / 2 * 1e3 for i in both}
    flops_tau = kendall_tau_b([latency_ms[i] for i in both], [flops[i] for i in both]) if len(both) > 1 else float("nan")
    repeat_tau = (kendall_tau_b([passes[0][i] for i in both], [passes[1][i] for i in both]) if len(both) > 1
                  else float("nan"))
    stage.results[space_name] = {
        "runtime": f"{runtime} {dtype}", "batch_size": setup.batch_size, "configs": len(both),
        "kendall_tau_latency_flops": flops_tau, "kendall_tau_pass1_pass2": repeat_tau,
        "latency_ms_range": [min(latency_ms.values(), default=float("nan")), max(latency_ms.values(), default=float("nan"))],
        "networks": [{"config": configs[i].to_dict(), "flops": flops[i], "pass_ms": [passes[0][i] * 1e3, passes[1][i] * 1e3]}
                     for i in both],
    }
    for name, value, target in (("latency vs FLOPs", flops_tau, TARGET_FLOPS_TAU),
                                ("pass 1 vs pass 2", repeat_tau, TARGET_REPEAT_TAU)):
        verdict = "PASS" if value >= target else "FAIL"
        stage.verdicts.append(f"{verdict}: {space_name} {runtime} {dtype} batch {setup.batch_size}, {len(both)} networks: "
                              f"Kendall tau {name} {value:.3f} (target >= {target})")


def full_batch1(setup: Setup, stage: Stage) -> None:
    space = get_space(setup.spaces[0])
    torch.manual_seed(0)
    full = extracted(build_supernet(space, with_gates=False).eval(), space.max_config())
    images = synthetic_images(8, space.default_resolution, torch.Generator().manual_seed(2))
    inputs = [images[i : i + 1] for i in range(8)]
    variants = [setup.eager, (setup.eager[0], setup.graph[1]), (setup.graph[0], setup.eager[1]), setup.graph]
    variants += [pair for pair in (("tensorrt", "float16"),) if available(setup, *pair)]
    variants = list(dict.fromkeys(variants))
    measured = measure_variants([(full, runtime, dtype) for runtime, dtype in variants], inputs, device=setup.device,
                                warmup=setup.warmup, warmup_seconds=setup.warmup_seconds, repeats=setup.repeats)
    baseline = measured[0].seconds
    stage.results = {f"{latency.runtime} {latency.dtype}": {**summary(latency), "over_eager_float32": latency.seconds / baseline}
                     for latency in measured}
    for latency in measured:
        stage.verdicts.append(f"INFO: full {space.name} batch 1 {latency.runtime} {latency.dtype}: "
                              f"{latency.seconds * 1e3:.3f} ms ({latency.seconds / baseline:.2f}x eager float32)")


def gated_batch1(setup: Setup, stage: Stage) -> None:
    space = get_space(setup.gated_space)
    resolution = space.default_resolution
    torch.manual_seed(0)
    supernet = build_supernet(space).eval()
    recalibrate_bn(supernet, synthetic_images(64, resolution, torch.Generator().manual_seed(0)), num_images=64,
                   batch_size=32, seed=0)
    deciding_gates(supernet, torch.Generator().manual_seed(0))
    cfg = space.max_config(gate_threshold=0.5)
    gated, static = extracted(supernet, cfg), extracted(supernet, cfg.with_gates(None))
    images = synthetic_images(8, resolution, torch.Generator().manual_seed(3))
    ratio = effective_flops(gated, [images], resolution=resolution) / count_flops(static, resolution)
    gathered, masked = copy.deepcopy(gated), copy.deepcopy(gated)
    gathered.set_gate_mode("gathered")
    masked.set_gate_mode("masked")
    inputs = [images[i : i + 1] for i in range(8)]
    variants = [(static, *setup.eager), (gathered, *setup.eager), (static, *setup.graph), (masked, *setup.graph)]
    if available(setup, "tensorrt", "float16"):
        variants += [(static, "tensorrt", "float16"), (masked, "tensorrt", "float16")]
    measured = measure_variants(variants, inputs, device=setup.device, warmup=max(setup.warmup, 16),
                                warmup_seconds=setup.warmup_seconds, repeats=max(setup.repeats, 16))
    stage.results = {"effective_flops_ratio": ratio, "threshold": 0.5, "rows": []}
    for static_latency, gated_latency in zip(measured[0::2], measured[1::2]):
        row = {"runtime": f"{gated_latency.runtime} {gated_latency.dtype}", "gate_mode": gated_latency.gate_mode,
               "static_ms": static_latency.seconds * 1e3, "gated_ms": gated_latency.seconds * 1e3,
               "gated_over_static": gated_latency.seconds / static_latency.seconds}
        stage.results["rows"].append(row)
        stage.verdicts.append(f"INFO: gated {space.name} batch 1 on {row['runtime']} ({row['gate_mode']}): "
                              f"{row['gated_ms']:.3f} ms vs {row['static_ms']:.3f} ms without gates "
                              f"({row['gated_over_static']:.2f}x; effective FLOPs ratio r = {ratio:.3f})")


def available(setup: Setup, runtime: str, dtype: str) -> bool:
    if runtime == "tensorrt" and not setup.tensorrt:
        return False
    try:
        resolve_runtime(runtime, dtype, device=setup.device)
    except LatencyRuntimeError:
        return False
    return True


# -- running ------------------------------------------------------------------------------------------------
def run(setup: Setup, out: Path, only: Sequence[str] | None = None, budgets: dict[str, float] | None = None) -> Report:
    """Every stage (or ``only`` these) in order, each held to its budget (``budgets`` replace :data:`BUDGETS`' seconds);
    a stage that raises fails and the others go on."""
    budgets = {**BUDGETS, **(budgets or {})}
    report = Report(benchmark="gpu_latency", dry_run=setup.device == "cpu", setup=asdict(setup),
                    machine={**machine_record(torch.get_num_threads()), **gpu_record(setup.device)})
    started = time.perf_counter()
    flops = count_all_flops(setup) if not only or "flops_order" in only else {}
    report.setup["flops_count_seconds"] = time.perf_counter() - started
    print(f"[flops {report.setup['flops_count_seconds']:.1f} s] fvcore FLOPs of {setup.configs} configs per space "
          f"counted in worker processes", flush=True)
    if report.dry_run:  # what the session's time plan prices the real count with (benchmarks/gpu_session/plan.py)
        report.setup["flops_pool_start_seconds"] = report.setup["flops_count_seconds"]  # the toy configs cost ~nothing
        report.setup["flops_per_config_seconds"] = flops_per_config_seconds()
        print(f"[flops] one {' / '.join(SPACES)} config: {report.setup['flops_per_config_seconds']:.2f} s on one core",
              flush=True)

    def flops_stage(stage: Stage, budget: float) -> None:
        for name in setup.spaces:  # one deadline per space, so a slow first space cannot starve the second
            flops_order(setup, name, flops[name], stage, Deadline(budget / len(setup.spaces)))

    plan = [("cold_start", lambda stage, budget: cold_start(setup, stage)), ("flops_order", flops_stage),
            ("full_batch1", lambda stage, budget: full_batch1(setup, stage)),
            ("gated_batch1", lambda stage, budget: gated_batch1(setup, stage))]
    for name, body in plan:
        if only and name not in only:
            continue
        budget = budgets[name] * (len(setup.spaces) if name == "flops_order" else 1) * setup.budget_scale
        stage = Stage(name, budget)
        started = time.perf_counter()
        try:
            body(stage, budget)
        except Exception as error:  # noqa: BLE001 - one stage failing must not lose the others' results
            stage.verdicts.append(f"FAIL: stage {name} raised {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        stage.seconds = time.perf_counter() - started
        if stage.seconds > budget:
            stage.verdicts.append(f"NOTE: stage {name} took {stage.seconds:.0f} s, over its {budget:.0f} s budget")
        report.stages.append(stage)
        for line in stage.verdicts:
            print(f"[{name} {stage.seconds:.1f} s{', truncated' if stage.truncated else ''}] {line}", flush=True)
        write(report, out)
    return report


def gpu_record(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {"gpu": None}
    properties = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gpu_latency.json", json.dumps({**asdict(report), "passed": report.passed}, indent=2,
                                                          default=str) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_latency.json")
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at toy sizes")
    parser.add_argument("--configs", type=int, default=50, help="random configs per space (stage flops_order)")
    parser.add_argument("--batch-size", type=int, default=256, help="the served batch (stage flops_order)")
    parser.add_argument("--only", nargs="+", choices=tuple(BUDGETS), default=None, help="run only these stages")
    parser.add_argument("--budgets", nargs="+", default=[], metavar="STAGE=SECONDS",
                        help="stage budgets instead of the defaults (flops_order's per space); the GPU session's time "
                        "plan sets them")
    parser.add_argument("--tensorrt", action="store_true", help="also time TensorRT engines in stages full_batch1 and "
                        "gated_batch1 (needs torch_tensorrt; each engine takes tens of seconds to build: budget more time)")
    args = parser.parse_args(argv)
    if args.configs < 2 or args.batch_size < 1:
        parser.error("--configs must be >= 2 (a rank correlation) and --batch-size >= 1")
    try:
        args.budgets = {name: float(seconds) for name, seconds in (item.split("=", 1) for item in args.budgets)}
    except ValueError:
        parser.error(f"--budgets: expected STAGE=SECONDS pairs, got {' '.join(args.budgets)}")
    if set(args.budgets) - set(BUDGETS) or any(seconds <= 0 for seconds in args.budgets.values()):
        parser.error(f"--budgets: stages are {', '.join(BUDGETS)}, each with a positive number of seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    report = run(setup_for(args.dry_run, args.configs, args.batch_size, args.tensorrt), args.out, args.only,
                 budgets=args.budgets)
    print("verdicts:")
    for stage in report.stages:
        failing = [line for line in stage.verdicts if line.startswith("FAIL")]
        judged = any(line.startswith("PASS") for line in stage.verdicts)
        print(f"  {stage.name}: {'FAIL' if failing else 'PASS' if judged else 'RAN'} in {stage.seconds:.0f} s"
              + (f" -- {failing[0]}" if failing else ""))
    verdict = "PASS" if report.passed else "FAIL"
    print(f"{verdict}: {sum(line.startswith('PASS') for s in report.stages for line in s.verdicts)} targets passed, "
          f"{sum(line.startswith('FAIL') for s in report.stages for line in s.verdicts)} failed; "
          f"{time.perf_counter() - started:.0f} s in all; {args.out / 'gpu_latency.json'}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
