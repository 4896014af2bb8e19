"""Does a latency table predict what a sub-network measures? (issue 9, item 3; on CUDA, issue 18, item 5.)

Per space (default ``resnet18_cifar`` and ``mobilenet_v2_cifar``, 32 px): build a latency table on
this machine (``nas.latency.build.build_table``; ``--device``, ``--runtime``, ``--dtype`` and
``--batch-size``, default CPU eager float32 batch 1; the command's default warm-up 3 and median of 10
per entry) or load one (``--table SPACE=PATH``),
then draw ``--configs`` random static configs (``space.sample``, seeded) and ``--gated`` random gated
ones, and for each compare

* predicted: ``LatencyTable.predict(cfg)`` (gated: the mean over ``--gated-inputs`` images of the
  per-input sum, from the channels each gate kept), with
* measured: ``nas.latency.measure.measure_latency`` of ``supernet.extract(cfg)`` on the table's
  device, runtime, precision, batch size and threads, the search's default warm-up 5 and median of 20
  (gated: gathered mode where the table's runtime runs it so, the images cycled, every image seen
  twice in the warm-up so no new conv shape is timed; masked elsewhere); the mean of two passes over
  the configs, the second in reverse order,

on the same machine. The two passes also give the measurement's own repeatability (Kendall tau
and median relative difference between them): the ceiling a prediction can reach on this machine. Gated configs need gates that decide something: as in ``bench_gated.py``, BN
statistics are recalibrated on synthetic images and every gate's fc2 weight is drawn from N(0, 1)
(seeded), bias 0. Reported per space: the median absolute relative error |predicted - measured| /
measured, Kendall's tau-b between predicted and measured (static configs; and all), the table's
entry count and build time. Targets: median |error| <= 10 % and tau >= 0.9 (static configs).

    python benchmarks/bench_latency_table.py --threads 1 --json latency_table.json
    python benchmarks/bench_latency_table.py --device cuda --runtime graph --batch-size 256 --json cuda_tables.json
    python benchmarks/bench_latency_table.py --spaces tiny --configs 10 --gated 2 --repeats 5   # quick check

On an H200 the CUDA-graph tables at batch 256 hold 1,680 (resnet18_cifar) and 2,462
(mobilenet_v2_cifar) entries (no gathered entries: captured graphs run gates masked); expect about a
minute per space.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.latency.build import build_table
from nas.latency.entries import count_entries
from nas.latency.measure import measure_latency
from nas.latency.table import LatencyTable, kept_channels
from nas.latency.timers import table_runtime
from search_spaces import SubnetConfig, get_space, list_spaces
from supernet import SuperNet, build_supernet, recalibrate_bn
from supernet.evaluation import kendall_tau_b
from supernet.io.files import atomic_write_text
from supernet.io.provenance import machine_record

TARGET_MEDIAN_ERROR = 0.10
TARGET_KENDALL_TAU = 0.9
DEFAULT_SPACES = ("resnet18_cifar", "mobilenet_v2_cifar")


@dataclass(frozen=True)
class ConfigResult:
    gated: bool
    predicted_ms: float
    measured_ms: float  # mean of the two passes
    passes_ms: tuple[float, float]
    relative_error: float  # (predicted - measured) / measured
    config: dict[str, object]


@dataclass
class SpaceReport:
    space: str
    resolution: int
    entries: int
    table_build_seconds: float | None  # None: loaded with --table
    table_device: str
    table_recheck: float | None  # median change of the entries the build timed again at its end (steadiness)
    median_abs_error: float  # static configs
    kendall_tau: float  # static configs
    median_abs_error_all: float  # static and gated
    kendall_tau_all: float
    gated_median_abs_error: float | None
    repeatability_tau: float  # pass 1 vs pass 2, static configs: what the machine allows
    repeatability_median_difference: float
    passed: bool
    configs: list[ConfigResult] = field(default_factory=list)


@dataclass
class Report:
    benchmark: str
    device: str
    runtime: str
    dtype: str
    batch_size: int
    threads: int
    warmup: int  # the measured networks'
    repeats: int
    table_warmup: int  # the built tables' entries'
    table_repeats: int
    seed: int
    targets: str
    spaces: list[SpaceReport]
    machine: dict[str, object]

    @property
    def passed(self) -> bool:
        return all(space.passed for space in self.spaces)


def synthetic_images(count: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, R, R) images with structure at several scales plus noise, so gates differ per input."""
    images = []
    for index in range(count):
        cells = 2 ** (1 + index % 4)
        coarse = torch.randn(1, 3, cells, cells, generator=generator)
        image = F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)
        images.append(image + 0.25 * torch.randn(1, 3, resolution, resolution, generator=generator))
    return torch.cat(images)


def deciding_gates(supernet: SuperNet, generator: torch.Generator) -> None:
    """Untrained gates that keep some channels and drop others: fc2 weight ~ N(0, 1), bias 0."""
    with torch.no_grad():
        for block in supernet.gated_blocks():
            assert block.gate is not None
            block.gate.fc2.weight.normal_(0.0, 1.0, generator=generator)
            block.gate.fc2.bias.zero_()


def bench_space(space_name: str, *, table_path: Path | None, save_table: Path | None, configs: int, gated: int,
                gated_inputs: int, threads: int, warmup: int, repeats: int, table_warmup: int, table_repeats: int,
                seed: int, device: str = "cpu", runtime: str = "auto", dtype: str = "auto",
                batch_size: int = 1) -> SpaceReport:
    space = get_space(space_name)
    resolution = space.default_resolution
    if table_path is not None:
        table, build_seconds = LatencyTable.load(table_path), None
        data = json.loads(table_path.read_text())
        table.check_matches(space=space.name, resolution=resolution, batch_size=batch_size)
    else:
        data = build_table(space.name, resolution=resolution, device=device, runtime=runtime, dtype=dtype,
                           batch_size=batch_size, threads=threads, warmup=table_warmup, repeats=table_repeats,
                           progress=False, seed=seed)
        build_seconds = data["build_seconds"]
        if save_table is not None:
            atomic_write_text(save_table, json.dumps(data, indent=1) + "\n")
        table = LatencyTable.from_dict(data, source=save_table)

    torch.manual_seed(seed)
    supernet = build_supernet(space).eval()
    recalibrate_bn(supernet, synthetic_images(64, resolution, torch.Generator().manual_seed(seed)), num_images=64,
                   batch_size=32, seed=seed)
    deciding_gates(supernet, torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    samples = [space.sample(rng, gates=index >= configs) for index in range(configs + gated)]
    samples = [SubnetConfig(c.space, dict(c.channels), c.gate_thresholds, resolution) for c in samples]
    gate_images = synthetic_images(max(gated_inputs, batch_size), resolution, torch.Generator().manual_seed(seed + 1))
    batch = gate_images[:batch_size]
    timing = {"device": device, "runtime": table.runtime, "dtype": table.dtype,
              "threads": threads if device == "cpu" else None}

    def predict_and_measure(index: int) -> tuple[float, float]:
        cfg = samples[index]
        network = supernet.extract(cfg).eval()
        if not cfg.gated:
            predicted, inputs, warm = table.predict(cfg), [batch], warmup
        else:
            calibration = synthetic_images(32, resolution, torch.Generator().manual_seed(seed + 2 + index))
            recalibrate_bn(network, calibration, num_images=32, batch_size=32, seed=seed)
            if table.gathered:
                predicted = table.predict(cfg, kept_channels(network, gate_images[:gated_inputs]))
                network.set_gate_mode("gathered")
                inputs = [gate_images[i : i + 1] for i in range(gated_inputs)]
                warm = max(warmup, 2 * gated_inputs)
            else:
                predicted, inputs, warm = table.predict(cfg), [batch], warmup
        measured = measure_latency(network, inputs, warmup=warm, repeats=max(repeats, len(inputs)), **timing)
        return predicted, measured.seconds

    first = [predict_and_measure(index) for index in range(len(samples))]
    second = {index: predict_and_measure(index)[1] for index in reversed(range(len(samples)))}
    results = []
    for index, cfg in enumerate(samples):
        predicted, passes = first[index][0], (first[index][1], second[index])
        measured = statistics.fmean(passes)
        results.append(ConfigResult(cfg.gated, predicted * 1e3, measured * 1e3, (passes[0] * 1e3, passes[1] * 1e3),
                                    (predicted - measured) / measured, cfg.to_dict()))

    static = [r for r in results if not r.gated]
    gated_results = [r for r in results if r.gated]

    def median_abs(rows: list[ConfigResult]) -> float:
        return statistics.median(abs(r.relative_error) for r in rows)

    def tau(rows: list[ConfigResult]) -> float:
        return kendall_tau_b([r.predicted_ms for r in rows], [r.measured_ms for r in rows])

    error, kendall = median_abs(static), tau(static)
    return SpaceReport(
        space=space.name, resolution=resolution,
        entries=count_entries(space, batch_size=batch_size, gathered=table.gathered)["total"],
        table_build_seconds=build_seconds, table_device=table.device,
        table_recheck=data.get("recheck", {}).get("median_relative_change"), median_abs_error=error, kendall_tau=kendall,
        median_abs_error_all=median_abs(results), kendall_tau_all=tau(results),
        gated_median_abs_error=median_abs(gated_results) if gated_results else None,
        repeatability_tau=kendall_tau_b([r.passes_ms[0] for r in static], [r.passes_ms[1] for r in static]),
        repeatability_median_difference=statistics.median(abs(r.passes_ms[1] - r.passes_ms[0]) / r.passes_ms[0]
                                                          for r in static),
        passed=error <= TARGET_MEDIAN_ERROR and kendall >= TARGET_KENDALL_TAU, configs=results,
    )


def bench_latency_table(*, spaces: Sequence[str] = DEFAULT_SPACES, tables: dict[str, Path] | None = None,
                        save_tables: Path | None = None, configs: int = 50, gated: int = 5, gated_inputs: int = 8,
                        threads: int = 1, warmup: int = 5, repeats: int = 20, table_warmup: int = 3,
                        table_repeats: int = 10, seed: int = 0, device: str = "cpu", runtime: str = "auto",
                        dtype: str = "auto", batch_size: int = 1) -> Report:
    """Predicted vs measured latency per space (module docstring)."""
    runtime, dtype = table_runtime(device, runtime, dtype)
    tables = tables or {}
    reports = []
    for name in spaces:
        save = None if save_tables is None else save_tables / f"{name}-{device}-{runtime}-{dtype}-b{batch_size}.json"
        reports.append(bench_space(name, table_path=tables.get(name), save_table=save, configs=configs, gated=gated,
                                   gated_inputs=gated_inputs, threads=threads, warmup=warmup, repeats=repeats,
                                   table_warmup=table_warmup, table_repeats=table_repeats, seed=seed, device=device,
                                   runtime=runtime, dtype=dtype, batch_size=batch_size))
    return Report(
        benchmark="latency_table", device=device, runtime=runtime, dtype=dtype, batch_size=batch_size, threads=threads,
        warmup=warmup, repeats=repeats, table_warmup=table_warmup, table_repeats=table_repeats, seed=seed,
        targets=f"median |error| <= {TARGET_MEDIAN_ERROR:.0%} and Kendall tau >= {TARGET_KENDALL_TAU} (static configs)",
        spaces=reports, machine=machine_record(threads),
    )


def format_report(report: Report) -> str:
    lines = [f"latency table vs measured: {report.device} {report.runtime} {report.dtype}, {report.threads} thread(s), "
             f"batch {report.batch_size}; networks: warm-up {report.warmup}, "
             f"median of {report.repeats}; built tables: warm-up {report.table_warmup}, median of "
             f"{report.table_repeats}; seed {report.seed}"]
    header = (f"{'space':<20} {'entries':>7} {'build':>7} {'configs':>7} {'med |err|':>9} {'tau':>6} "
              f"{'gated':>5} {'gated med |err|':>15} {'all: med |err|':>14} {'tau':>6} {'pass 1 vs 2: diff':>17} "
              f"{'tau':>6}")
    lines.append(header)
    for space in report.spaces:
        static = sum(not r.gated for r in space.configs)
        build = "loaded" if space.table_build_seconds is None else f"{space.table_build_seconds:.0f} s"
        gated_error = "-" if space.gated_median_abs_error is None else f"{space.gated_median_abs_error:.1%}"
        lines.append(f"{space.space:<20} {space.entries:>7} {build:>7} {static:>7} {space.median_abs_error:>9.1%} "
                     f"{space.kendall_tau:>6.3f} {len(space.configs) - static:>5} {gated_error:>15} "
                     f"{space.median_abs_error_all:>14.1%} {space.kendall_tau_all:>6.3f} "
                     f"{space.repeatability_median_difference:>17.1%} {space.repeatability_tau:>6.3f}")
    for space in report.spaces:
        worst = max(space.configs, key=lambda r: abs(r.relative_error))
        lines.append(f"{space.space}: measured {min(r.measured_ms for r in space.configs):.2f} to "
                     f"{max(r.measured_ms for r in space.configs):.2f} ms; worst error {worst.relative_error:+.1%} "
                     f"({'gated' if worst.gated else 'static'}, measured {worst.measured_ms:.2f} ms); table entries "
                     f"timed again at the end of its build moved by {space.table_recheck or 0:.1%} (median)")
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(f"{verdict}: {report.targets}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=list(DEFAULT_SPACES), help="search spaces (at their default resolution)")
    parser.add_argument("--table", action="append", default=[], metavar="SPACE=PATH",
                        help="use this table for SPACE instead of building one (repeatable)")
    parser.add_argument("--save-tables", type=Path, default=None, metavar="DIR", help="write the built tables here")
    parser.add_argument("--configs", type=int, default=50, help="random static configs per space")
    parser.add_argument("--gated", type=int, default=5, help="random gated configs per space (0: none)")
    parser.add_argument("--gated-inputs", type=int, default=8, help="images a gated config is predicted and timed on")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, table and measurement alike")
    parser.add_argument("--warmup", type=int, default=5, help="measured networks: untimed forwards first")
    parser.add_argument("--repeats", type=int, default=20, help="measured networks: timed forwards; medians")
    parser.add_argument("--table-warmup", type=int, default=3, help="built tables: untimed forwards per entry")
    parser.add_argument("--table-repeats", type=int, default=10, help="built tables: timed forwards per entry")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the tables are built and timed")
    parser.add_argument("--runtime", default="auto", help="eager, graph (cuda) or onnxruntime (cpu); auto: graph on "
                        "cuda, eager on cpu")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16 or float16; auto: float16 on cuda")
    parser.add_argument("--batch-size", type=int, default=1, help="the tables' and the measured networks' batch")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the numbers here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.spaces if name not in list_spaces()]
    if unknown:
        parser.error(f"--spaces: unknown search space {unknown[0]!r}; valid: {', '.join(list_spaces())}")
    tables = {}
    for item in args.table:
        name, _, path = item.partition("=")
        if not path or name not in args.spaces:
            parser.error(f"--table: {item!r} is not SPACE=PATH for one of --spaces {args.spaces}")
        tables[name] = Path(path)
    args.tables = tables
    if (min(args.configs, args.threads, args.repeats, args.table_repeats, args.gated_inputs) < 1
            or min(args.gated, args.warmup, args.table_warmup) < 0):
        parser.error("--configs, --threads, --repeats, --table-repeats and --gated-inputs must be >= 1; "
                     "--gated, --warmup and --table-warmup >= 0")
    if args.configs < 2:
        parser.error("--configs: at least 2, for a rank correlation")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    report = bench_latency_table(spaces=args.spaces, tables=args.tables, save_tables=args.save_tables,
                                 configs=args.configs, gated=args.gated, gated_inputs=args.gated_inputs,
                                 threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                                 table_warmup=args.table_warmup, table_repeats=args.table_repeats, seed=args.seed,
                                 device=args.device, runtime=args.runtime, dtype=args.dtype, batch_size=args.batch_size)
    print(format_report(report))
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({**asdict(report), "passed": report.passed}, indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
