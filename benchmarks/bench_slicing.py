"""Does a sliced sub-network's CPU time fall with its FLOPs? (DESIGN.md §6, first target.)

Builds the supernet of a space, extracts uniform-width sub-networks (``net.extract``) and times
their batched forward pass on CPU against the extracted full-width network, side by side in one
run: the candidates are timed round-robin (the starting candidate rotates every round), so machine
drift hits all of them alike. For every width it reports

* the FLOPs ratio to full width (fvcore, ``nas.cost.count_flops``, one multiply-add = one flop);
* the time ratio to full width: the median over rounds of (time of the width / time of full width
  in the same round);
* time ratio / FLOPs ratio, which the target bounds: <= 1.25 at every width;
* for information, the supernet itself sliced in place (``set_active(cfg)``: non-contiguous
  ``weight[:out, :in]`` views) against the extracted network of the same config.

Also, for information, the full-width network in the other memory format, so the reader sees
whether the chosen one (``--memory-format``) helps.

    python benchmarks/bench_slicing.py --repeats 15 --json slicing.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nas.cost import count_flops
from search_spaces import get_space, list_spaces
from supernet import build_supernet
from supernet.io.provenance import machine_record

TARGET_TIME_OVER_FLOPS = 1.25
DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.25)
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


@dataclass(frozen=True)
class Candidate:
    """One thing to time: ``prepare`` runs untimed before every timed ``run``."""

    name: str
    run: Callable[[], object]
    prepare: Callable[[], object] | None = None


@dataclass(frozen=True)
class WidthResult:
    width_multiplier: float
    flops: int  # per image
    flops_ratio: float
    time_ratio: float  # median over rounds of t(width) / t(full), same round
    time_ratio_q1: float
    time_ratio_q3: float
    time_over_flops: float
    supernet_over_extracted: float  # median over rounds of t(supernet at set_active) / t(extracted)
    median_ms: float
    supernet_median_ms: float
    passed: bool


def time_round_robin(candidates: Sequence[Candidate], *, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of every candidate, ``repeats`` rounds; round ``i`` starts at candidate ``i mod n``."""
    for _ in range(warmup):
        for candidate in candidates:
            if candidate.prepare is not None:
                candidate.prepare()
            candidate.run()
    samples: dict[str, list[float]] = {candidate.name: [] for candidate in candidates}
    for round_index in range(repeats):
        shift = round_index % len(candidates)
        for candidate in (*candidates[shift:], *candidates[:shift]):
            if candidate.prepare is not None:
                candidate.prepare()
            start = time.perf_counter()
            candidate.run()
            samples[candidate.name].append(time.perf_counter() - start)
    return samples


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios: each round's two times were taken moments apart, so drift cancels."""
    return [a / b for a, b in zip(numerator, denominator)]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@torch.inference_mode()
def bench_slicing(
    *,
    space_name: str = "resnet18_cifar",
    widths: Sequence[float] = DEFAULT_WIDTHS,
    batch_size: int = 64,
    resolution: int | None = None,
    threads: int = 2,
    repeats: int = 15,
    warmup: int = 2,
    memory_format: str = "channels_last",
    seed: int = 0,
) -> dict[str, object]:
    """Measure every width against full width; return the numbers (see the module docstring)."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format: {memory_format!r} is not valid; expected one of {sorted(MEMORY_FORMATS)}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    space = get_space(space_name)
    resolution = space.default_resolution if resolution is None else resolution
    widths = tuple(sorted(set(widths) | {1.0}, reverse=True))
    fmt = MEMORY_FORMATS[memory_format]
    other_format_name = "contiguous" if memory_format == "channels_last" else "channels_last"

    supernet = build_supernet(space).eval()
    configs = {width: space.uniform_config(width) for width in widths}
    extracted = {width: supernet.extract(cfg).eval() for width, cfg in configs.items()}
    flops = {width: count_flops(network, resolution) for width, network in extracted.items()}
    for network in (supernet, *extracted.values()):
        network.to(memory_format=fmt)
    full_other_format = supernet.extract(configs[1.0]).eval().to(memory_format=MEMORY_FORMATS[other_format_name])

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
    images_fmt = images.contiguous(memory_format=fmt)
    images_other = images.contiguous(memory_format=MEMORY_FORMATS[other_format_name])

    candidates: list[Candidate] = []
    for width in widths:
        network = extracted[width]
        candidates.append(Candidate(f"extracted@{width}", lambda network=network: network(images_fmt)))
        candidates.append(
            Candidate(
                f"supernet@{width}",
                lambda: supernet(images_fmt),
                prepare=lambda cfg=configs[width]: supernet.set_active(cfg),
            )
        )
    candidates.append(Candidate(f"extracted@1.0[{other_format_name}]", lambda: full_other_format(images_other)))

    samples = time_round_robin(candidates, repeats=repeats, warmup=warmup)

    full = samples["extracted@1.0"]
    results = []
    for width in widths:
        own, sliced = samples[f"extracted@{width}"], samples[f"supernet@{width}"]
        q1, time_ratio, q3 = quartiles(paired_ratios(own, full))
        flops_ratio = flops[width] / flops[1.0]
        results.append(
            WidthResult(
                width_multiplier=width,
                flops=flops[width],
                flops_ratio=flops_ratio,
                time_ratio=time_ratio,
                time_ratio_q1=q1,
                time_ratio_q3=q3,
                time_over_flops=time_ratio / flops_ratio,
                supernet_over_extracted=statistics.median(paired_ratios(sliced, own)),
                median_ms=1e3 * statistics.median(own),
                supernet_median_ms=1e3 * statistics.median(sliced),
                passed=time_ratio <= TARGET_TIME_OVER_FLOPS * flops_ratio,
            )
        )
    other_over_chosen = statistics.median(paired_ratios(samples[f"extracted@1.0[{other_format_name}]"], full))
    return {
        "benchmark": "slicing",
        "space": space_name,
        "batch_size": batch_size,
        "resolution": resolution,
        "memory_format": memory_format,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "target": f"time ratio <= {TARGET_TIME_OVER_FLOPS} x FLOPs ratio at every width",
        "passed": all(result.passed for result in results),
        "widths": [asdict(result) for result in results],
        "full_width_other_format": {"memory_format": other_format_name, "time_over_chosen": other_over_chosen},
        "machine": machine_record(threads),
    }


def format_report(report: dict[str, object]) -> str:
    lines = [
        (f"slicing: {report['space']}, CPU, {report['machine']['threads']} threads, batch {report['batch_size']}, "  # type: ignore[index]
            f"{report['resolution']} px, {report['memory_format']}, {report['repeats']} rounds (medians)"),
        (f"{'width':>6} {'FLOPs/img':>11} {'FLOPs ratio':>11} {'time ratio':>10} {'(q1-q3)':>13} "
            f"{'time/FLOPs':>10} {'supernet/extr':>13}  target"),
    ]
    for row in report["widths"]:  # type: ignore[union-attr]
        lines.append(
            f"{row['width_multiplier']:>6.2f} {row['flops'] / 1e6:>10.1f}M {row['flops_ratio']:>11.3f} "
            f"{row['time_ratio']:>10.3f} {row['time_ratio_q1']:>6.3f}-{row['time_ratio_q3']:<6.3f} "
            f"{row['time_over_flops']:>10.3f} {row['supernet_over_extracted']:>13.3f}  "
            f"{'ok' if row['passed'] else 'MISSED'}"
        )
    other = report["full_width_other_format"]
    lines.append("supernet/extr: the supernet sliced in place (set_active) vs the extracted copy, same config")
    lines.append(
        f"full width in {other['memory_format']}: {other['time_over_chosen']:.3f} x the time in "  # type: ignore[index]
        f"{report['memory_format']}"
    )
    worst = max(report["widths"], key=lambda row: row["time_over_flops"])  # type: ignore[arg-type]
    verdict = "PASS" if report["passed"] else "FAIL"
    lines.append(
        f"{verdict}: {report['target']} (worst: width {worst['width_multiplier']:g}, "
        f"time/FLOPs = {worst['time_over_flops']:.3f})"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="resnet18_cifar", help="search space (default: resnet18_cifar)")
    parser.add_argument("--widths", type=float, nargs="+", default=list(DEFAULT_WIDTHS), help="uniform width multipliers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=None, help="default: the space's (32 for CIFAR spaces)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=15, help="round-robin rounds; medians over them")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="channels_last")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the numbers here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or args.batch_size < 1:
        parser.error("--repeats, --threads and --batch-size must be >= 1 and --warmup >= 0")
    if args.space not in list_spaces():
        parser.error(f"--space: unknown search space {args.space!r}; valid: {', '.join(list_spaces())}")
    if any(not 0.0 < width <= 1.0 for width in args.widths):
        parser.error(f"--widths: {args.widths} has a value outside (0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = bench_slicing(
        space_name=args.space,
        widths=args.widths,
        batch_size=args.batch_size,
        resolution=args.resolution,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        memory_format=args.memory_format,
        seed=args.seed,
    )
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
