"""Does gathered gated inference at batch 1 save time in proportion to its FLOPs? (DESIGN.md §6, second target.)

One supernet, one width config, two extracted networks of it: dense (``gate_thresholds=null``) and
gated (one threshold for every block). The gates are untrained, so they are made to drop channels:
every gate's ``fc2`` weight is drawn from N(0, 1) (seeded) with bias 0, and the threshold is found by
bisection on a few calibration images until the mean effective-FLOPs ratio

    r = supernet.flops.effective_flops(gated) / count_flops(dense)

is within ``--tolerance`` of ``--target-ratio`` (0.5). Gate FLOPs count in r: the gates really run.
Then, on ``--num-inputs`` other images, batch 1, CPU, the three candidates are timed round-robin
(order rotated every round and input, so drift hits all alike): dense, gated in gathered mode
(``set_gate_mode("gathered")``: kept channels' weights are index-selected, with the BatchNorms on
the gated channels folded in, and a smaller conv runs) and gated in masked mode (full compute times a
0/1 mask, for contrast: it saves nothing). Gathered and masked run on two copies of the gated network,
so no mode switch (which refolds, and would leave the folded weights in cache) falls between calls,
and neither run finds the other's weights in cache. Reported:

* r: mean over the timed inputs of their effective FLOPs (``per_input_effective_flops``) / dense FLOPs;
* latency ratio: mean over inputs of the gathered median latency / mean of the dense median latency
  (medians over rounds per input; a mean over inputs, like r);
* latency ratio / r, which the target bounds: <= 1.4;
* the masked mode's latency ratio, and the gathered run's latency the first time an input is seen
  (its kept-channel counts give new conv shapes, for which oneDNN builds new primitives).

Before the gates are set, BatchNorm statistics are recalibrated on synthetic images at the dense
config (``--recalibrate-images``): an untrained supernet's running statistics (mean 0, variance 1)
normalise nothing, and activations that drift by orders of magnitude over depth would make gate
decisions degenerate and the timings unlike a trained network's.

Default space: ``resnet18`` at 224 px (1.82 GFLOPs, compute-bound at batch 1). Its basic blocks are
gated on conv1's outputs, which scale both convolutions of the block, so dropping about half the
channels gives r of about 0.5. In ``resnet50`` the gate covers conv1 and conv2's inputs only (not
conv2's outputs nor conv3), and with these untrained gates r does not fall below about 0.63 within the
allowed thresholds [0.1, 0.9]; ``--space resnet50`` then runs at the closest reachable r and says so.

    python benchmarks/bench_gated.py --repeats 10 --json gated.json   # --profile: torch.profiler tables too
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from nas.cost import count_flops
from search_spaces import get_space, list_spaces
from supernet import SuperNet, build_supernet, recalibrate_bn
from supernet.io.provenance import machine_record
from supernet.nn.flops import (
    effective_flops,
    folded_norm_flops,
    per_input_effective_flops,
)

TARGET_LATENCY_OVER_FLOPS = 1.4
MODES = ("dense", "gathered", "masked")


def synthetic_images(count: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, R, R) images with structure at different scales (2 to 32 cells), plus noise.

    Different inputs should give the gates different decisions; white noise alone would not.
    """
    images = []
    for index in range(count):
        cells = 2 ** (1 + index % 5)
        coarse = torch.randn(1, 3, cells, cells, generator=generator)
        image = F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)
        images.append(image + 0.25 * torch.randn(1, 3, resolution, resolution, generator=generator))
    return torch.cat(images)


def randomize_gates(network: SuperNet, generator: torch.Generator) -> None:
    """Untrained gates that decide something: fc2 weight ~ N(0, 1), bias 0, so p = sigmoid(logit) spreads over (0, 1)."""
    with torch.no_grad():
        for block in network.gated_blocks():
            assert block.gate is not None
            block.gate.fc2.weight.normal_(0.0, 1.0, generator=generator)
            block.gate.fc2.bias.zero_()


def find_threshold(
    gated: SuperNet,
    calibration: torch.Tensor,
    *,
    dense_flops: int,
    resolution: int,
    target_ratio: float,
    tolerance: float,
    max_steps: int = 12,
) -> tuple[float, float, list[tuple[float, float]]]:
    """Bisect one threshold for all blocks until effective FLOPs / dense FLOPs is near ``target_ratio``.

    The ratio falls as the threshold rises (a higher bar keeps fewer channels). Returns the threshold,
    its ratio and the (threshold, ratio) trace; at the ends of the allowed range when the target is
    out of reach.
    """
    trace: list[tuple[float, float]] = []

    def ratio_at(threshold: float) -> float:
        gated.set_active(gated.space.max_config(threshold))
        ratio = effective_flops(gated, [calibration], resolution=resolution) / dense_flops
        trace.append((threshold, ratio))
        return ratio

    low, high = gated.space.gate_threshold_range
    if ratio_at(high) >= target_ratio - tolerance:
        return high, trace[-1][1], trace
    if ratio_at(low) <= target_ratio + tolerance:
        return low, trace[-1][1], trace
    for _ in range(max_steps):
        middle = 0.5 * (low + high)
        ratio = ratio_at(middle)
        if abs(ratio - target_ratio) <= tolerance:
            break
        low, high = (middle, high) if ratio > target_ratio else (low, middle)
    threshold, ratio = min(trace, key=lambda item: abs(item[1] - target_ratio))
    gated.set_active(gated.space.max_config(threshold))
    return threshold, ratio, trace


def time_inputs_round_robin(
    runners: dict[str, Callable[[torch.Tensor], object]],
    images: torch.Tensor,
    *,
    repeats: int,
) -> dict[str, list[list[float]]]:
    """Seconds per call, [mode][input][round]; each (round, input) runs every mode, order rotated."""
    modes = list(runners)
    samples = {mode: [[] for _ in range(images.shape[0])] for mode in modes}
    for round_index in range(repeats):
        for index in range(images.shape[0]):
            image = images[index : index + 1]
            shift = (round_index + index) % len(modes)
            for mode in (*modes[shift:], *modes[:shift]):
                start = time.perf_counter()
                runners[mode](image)
                samples[mode][index].append(time.perf_counter() - start)
    return samples


def profile_modes(
    runners: dict[str, Callable[[torch.Tensor], object]],
    images: torch.Tensor,
    *,
    row_limit: int = 12,
) -> dict[str, str]:
    """torch.profiler tables (ops by self CPU time) of dense and gathered runs over ``images``, batch 1."""
    tables = {}
    for mode in ("dense", "gathered"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for index in range(images.shape[0]):
                runners[mode](images[index : index + 1])
        tables[mode] = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
    return tables


def bench_gated(
    *,
    space_name: str = "resnet18",
    width: float = 1.0,
    resolution: int | None = None,
    target_ratio: float = 0.5,
    tolerance: float = 0.01,
    num_inputs: int = 16,
    num_calibration: int = 8,
    recalibrate_images: int = 32,
    threads: int = 2,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
    check_fvcore: bool = True,
    profile: bool = False,
) -> dict[str, object]:
    """Measure gathered and masked gated inference against dense; return the numbers (module docstring)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    space = get_space(space_name)
    resolution = space.default_resolution if resolution is None else resolution
    generator = torch.Generator().manual_seed(seed)

    supernet = build_supernet(space).eval()
    dense_cfg = space.uniform_config(width)
    supernet.set_active(dense_cfg)
    if recalibrate_images > 0:
        recalibrate_bn(
            supernet, synthetic_images(recalibrate_images, resolution, generator), num_images=recalibrate_images,
            batch_size=16, seed=seed,
        )
    randomize_gates(supernet, generator)
    dense = supernet.extract(dense_cfg).eval()
    low_threshold = space.gate_threshold_range[0]
    gated = supernet.extract(space.uniform_config(width, gate_threshold=low_threshold)).eval()
    del supernet
    dense_flops = count_flops(dense, resolution)

    calibration = synthetic_images(num_calibration, resolution, generator)
    threshold, calibration_ratio, trace = find_threshold(
        gated, calibration, dense_flops=dense_flops, resolution=resolution,
        target_ratio=target_ratio, tolerance=tolerance,
    )
    reached = abs(calibration_ratio - target_ratio) <= tolerance

    images = synthetic_images(num_inputs, resolution, generator)
    input_flops = per_input_effective_flops(gated, images)
    input_ratios = (input_flops / dense_flops).tolist()
    r = statistics.fmean(input_ratios)

    gathered = copy.deepcopy(gated)
    gathered.set_gate_mode("gathered")  # folds the gated channels' BatchNorms; `gated` stays masked
    fvcore_check = None
    if check_fvcore:
        # DESIGN.md §4: effective FLOPs equal fvcore's count of the gathered batch-1 run plus the FLOPs of
        # the BatchNorms it folds into convolutions (effective FLOPs count the network as defined).
        counted = count_flops(gathered, inputs=images[:1])
        fvcore_check = {"fvcore_gathered": counted, "folded_norms": float(folded_norm_flops(gated, images[:1])[0]),
                        "effective": float(input_flops[0])}

    runners: dict[str, Callable[[torch.Tensor], object]] = {"dense": dense, "gathered": gathered, "masked": gated}
    with torch.inference_mode():
        for _ in range(warmup):
            for index in range(num_inputs):
                dense(images[index : index + 1])
        # Gathered latency the first time an input is seen (new kept-channel counts, new conv
        # shapes), over dense on the same input just before. Input 0 was seen by the fvcore check.
        first_seen = []
        for index in range(num_inputs):
            image = images[index : index + 1]
            start = time.perf_counter()
            dense(image)
            middle = time.perf_counter()
            gathered(image)
            first_seen.append((time.perf_counter() - middle) / (middle - start))
        time_inputs_round_robin(runners, images, repeats=warmup)
        samples = time_inputs_round_robin(runners, images, repeats=repeats)
        profiles = profile_modes(runners, images[: min(4, num_inputs)]) if profile else None

    medians = {mode: [statistics.median(times) for times in samples[mode]] for mode in MODES}
    mean_latency = {mode: statistics.fmean(medians[mode]) for mode in MODES}
    latency_ratio = mean_latency["gathered"] / mean_latency["dense"]
    masked_ratio = mean_latency["masked"] / mean_latency["dense"]
    per_input = [
        {
            "flops_ratio": input_ratios[index],
            "gathered_over_dense": statistics.median(
                g / d for g, d in zip(samples["gathered"][index], samples["dense"][index])
            ),
            "masked_over_dense": statistics.median(
                m / d for m, d in zip(samples["masked"][index], samples["dense"][index])
            ),
            "first_seen_gathered_over_dense": first_seen[index],
        }
        for index in range(num_inputs)
    ]
    return {
        "benchmark": "gated",
        "space": space_name,
        "width_multiplier": width,
        "resolution": resolution,
        "batch_size": 1,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "gate_init": "fc2 weight ~ N(0, 1), bias 0",
        "recalibrate_images": recalibrate_images,
        "dense_flops": dense_flops,
        "gate_threshold": threshold,
        "target_ratio": target_ratio,
        "target_ratio_reached": reached,
        "calibration_ratio": calibration_ratio,
        "threshold_search": [{"threshold": t, "flops_ratio": q} for t, q in trace],
        "effective_flops_ratio": r,
        "latency_ratio_gathered": latency_ratio,
        "latency_ratio_masked": masked_ratio,
        "latency_over_flops": latency_ratio / r,
        "first_seen_latency_ratio_gathered": statistics.median(row["first_seen_gathered_over_dense"] for row in per_input),
        "median_ms": {mode: 1e3 * statistics.median(medians[mode]) for mode in MODES},
        "per_input": per_input,
        "fvcore_check": fvcore_check,
        "profile": profiles,
        "target": f"gathered latency ratio <= {TARGET_LATENCY_OVER_FLOPS} x effective FLOPs ratio",
        "passed": latency_ratio <= TARGET_LATENCY_OVER_FLOPS * r,
        "machine": machine_record(threads),
    }


def format_report(report: dict[str, object]) -> str:
    lines = [
        (f"gated: {report['space']} at width {report['width_multiplier']:g}, CPU, "
            f"{report['machine']['threads']} threads, batch 1, {report['resolution']} px, "  # type: ignore[index]
            f"{len(report['per_input'])} inputs x {report['repeats']} rounds (medians)"),  # type: ignore[arg-type]
        (f"gates: {report['gate_init']}, one threshold {report['gate_threshold']:.4f} "
            f"(calibration r = {report['calibration_ratio']:.3f}, target {report['target_ratio']:g}"
            f"{'' if report['target_ratio_reached'] else ', NOT reached within the allowed thresholds'})"),
    ]
    check = report["fvcore_check"]
    if check is not None:
        lines.append(
            f"fvcore count of the gathered run, input 0: {check['fvcore_gathered'] / 1e6:.1f}M "  # type: ignore[index]
            f"+ its folded BatchNorms {check['folded_norms'] / 1e6:.1f}M; "  # type: ignore[index]
            f"effective FLOPs: {check['effective'] / 1e6:.1f}M"  # type: ignore[index]
        )
    lines.append(f"{'input':>5} {'FLOPs ratio':>11} {'gathered/dense':>14} {'masked/dense':>12} {'first seen':>10}")
    for index, row in enumerate(report["per_input"]):  # type: ignore[arg-type]
        lines.append(
            f"{index:>5} {row['flops_ratio']:>11.3f} {row['gathered_over_dense']:>14.3f} "
            f"{row['masked_over_dense']:>12.3f} {row['first_seen_gathered_over_dense']:>10.3f}"
        )
    r = report["effective_flops_ratio"]
    if report["profile"] is not None:
        for mode, table in report["profile"].items():  # type: ignore[union-attr]
            lines += [f"profile, {mode}, batch 1 (ops by self CPU time):", table]
    lines += [
        f"effective FLOPs ratio r (mean over inputs):  {r:.3f}",
        (f"latency ratio, gathered / dense:             {report['latency_ratio_gathered']:.3f}"
            f"   (/ r = {report['latency_over_flops']:.3f})"),
        (f"latency ratio, masked / dense:               {report['latency_ratio_masked']:.3f}"
            f"   (/ r = {report['latency_ratio_masked'] / r:.3f})"),  # type: ignore[operator]
        (f"latency ratio, gathered on first sight:      {report['first_seen_latency_ratio_gathered']:.3f}"
            "   (median over inputs; new conv shapes)"),
        (f"{'PASS' if report['passed'] else 'FAIL'}: {report['target']} "
            f"({report['latency_ratio_gathered']:.3f} vs {TARGET_LATENCY_OVER_FLOPS} x {r:.3f} = "
            f"{TARGET_LATENCY_OVER_FLOPS * r:.3f})"),  # type: ignore[operator]
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="resnet18", help="search space (default: resnet18)")
    parser.add_argument("--width", type=float, default=1.0, help="uniform width multiplier of both networks")
    parser.add_argument("--resolution", type=int, default=None, help="default: the space's (224 for ImageNet spaces)")
    parser.add_argument("--target-ratio", type=float, default=0.5, help="effective FLOPs ratio the threshold aims at")
    parser.add_argument("--tolerance", type=float, default=0.01, help="bisection stops within this of the target")
    parser.add_argument("--num-inputs", type=int, default=16, help="timed images, each run at batch 1")
    parser.add_argument("--num-calibration", type=int, default=8, help="images the threshold search uses")
    parser.add_argument("--recalibrate-images", type=int, default=32, help="BN recalibration images (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=10, help="round-robin rounds; medians over them")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fvcore-check", action="store_true", help="skip the fvcore count of one gathered run")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of dense and gathered runs")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the numbers here")
    args = parser.parse_args(argv)
    if args.space not in list_spaces():
        parser.error(f"--space: unknown search space {args.space!r}; valid: {', '.join(list_spaces())}")
    if not 0.0 < args.width <= 1.0:
        parser.error(f"--width: {args.width} is out of range; expected 0 < width <= 1")
    if not 0.0 < args.target_ratio < 1.0:
        parser.error(f"--target-ratio: {args.target_ratio} is out of range; expected 0 < ratio < 1")
    if min(args.repeats, args.num_inputs, args.num_calibration, args.threads) < 1 or args.warmup < 0:
        parser.error("--repeats, --num-inputs, --num-calibration and --threads must be >= 1, --warmup >= 0")
    if not get_space(args.space).gated_blocks:
        parser.error(f"--space: {args.space!r} has no gated blocks")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = bench_gated(
        space_name=args.space,
        width=args.width,
        resolution=args.resolution,
        target_ratio=args.target_ratio,
        tolerance=args.tolerance,
        num_inputs=args.num_inputs,
        num_calibration=args.num_calibration,
        recalibrate_images=args.recalibrate_images,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        check_fvcore=not args.no_fvcore_check,
        profile=args.profile,
    )
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
