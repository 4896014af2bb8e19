"""CPU runtimes (issue 18): how much faster is what a CPU deploys than the eager network, and how repeatable is it?

Per space (``resnet18_cifar``, ``mobilenet_v2_cifar``, 32 px):

* ``ratios``: the full network and its uniform 0.5 and min widths at batch 1 and ``--batch`` (64), on
  ``eager``, ``compiled`` (``torch.compile``, Inductor) and ``onnxruntime`` (CPU provider, IO binding),
  float32, all timed side by side in one measurement (interleaved, order rotating every round), after
  each program was built (compiling and exporting are not timed); reported as runtime / eager;
* ``repeatability``: ``--configs`` random static configs timed twice at batch 1 on each of
  ``--repeat-runtimes`` (default eager and onnxruntime; compiled compiles every network twice), one network
  at a time as the search times its candidates, the second pass in reverse order with every program rebuilt:
  Kendall tau between the passes, plain (median of the repeats) and anchored (``latency.anchor``: each
  network relative to the space's reference network timed in the same rounds, scaled by the reference's
  figure measured once at the start, as a study does); target >= 0.9 for the anchored figures (issue 22), and
  between latency and fvcore FLOPs, for information.

Threads fixed (``--threads``, default 1), warm-up of 5 forwards and at least 0.2 s, median of
``--repeats``; the repeatability passes keep timing each network for at least ``--timed-seconds`` (the
search's ``latency.timed_seconds``, default 1 s), as the search does. Run on a quiet machine; the script prints the load average (``os.getloadavg``) at the
start and the end, and writes it into the JSON.

    python benchmarks/bench_runtimes.py --json runtimes.json
    python benchmarks/bench_runtimes.py --spaces tiny --configs 6 --repeats 5 --batch 8   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench_latency_table import kendall_tau_b, synthetic_images
from nas.cost import count_flops
from nas.latency.measure import measure_latencies, measure_variants
from nas.latency.plan import ANCHOR_EFFORT, space_anchor
from nas.settings import LatencySettings
from search_spaces import get_space, list_spaces
from supernet import build_supernet
from supernet.io.files import atomic_write_text
from supernet.io.provenance import machine_record

TARGET_REPEAT_TAU = 0.9
RUNTIMES = ("eager", "compiled", "onnxruntime")
WIDTHS = (("full", 1.0), ("uniform 0.5", 0.5), ("min", 0.0))


@dataclass
class RatioRow:
    space: str
    network: str
    batch_size: int
    eager_ms: float
    ms: dict[str, float]  # runtime -> median ms
    over_eager: dict[str, float]  # runtime -> ratio to eager, same round-robin measurement
    prepare_s: dict[str, float]  # runtime -> seconds to compile / export before timing


@dataclass
class RepeatRow:
    space: str
    runtime: str
    configs: int
    tau_pass1_pass2: float  # anchored, as the search times
    median_relative_difference: float
    tau_latency_flops: float
    passed: bool
    plain_tau_pass1_pass2: float = 0.0  # the median of the repeats, unanchored
    plain_median_relative_difference: float = 0.0
    # per network, in config order (pass 1 timed them in this order, pass 2 in reverse): what the verdicts read
    anchored_seconds: list[list[float]] = field(default_factory=list)  # [pass 1, pass 2]
    plain_seconds: list[list[float]] = field(default_factory=list)
    flops: list[int] = field(default_factory=list)


@dataclass
class Report:
    benchmark: str
    threads: int
    warmup: int
    warmup_seconds: float
    repeats: int
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ratios: list[RatioRow] = field(default_factory=list)
    repeatability: list[RepeatRow] = field(default_factory=list)
    machine: dict[str, object] = field(default_factory=dict)
    timed_seconds: float = 0.0  # of the repeatability passes

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.repeatability)


def bench_ratios(space_name: str, batches: Sequence[int], *, threads: int, warmup: int, warmup_seconds: float,
                 repeats: int) -> list[RatioRow]:
    space = get_space(space_name)
    torch.manual_seed(0)
    supernet = build_supernet(space, with_gates=False).eval()
    rows = []
    for label, multiplier in WIDTHS:
        cfg = space.min_config() if multiplier == 0.0 else space.uniform_config(multiplier)
        network = supernet.extract(cfg).eval()
        for batch in batches:
            images = synthetic_images(batch, space.default_resolution, torch.Generator().manual_seed(batch))
            measured = measure_variants([(network, runtime, "float32") for runtime in RUNTIMES], images, device="cpu",
                                        warmup=warmup, warmup_seconds=warmup_seconds, repeats=repeats, threads=threads)
            ms = {latency.runtime: latency.seconds * 1e3 for latency in measured}
            rows.append(RatioRow(space.name, label, batch, ms["eager"], ms,
                                 {runtime: value / ms["eager"] for runtime, value in ms.items()},
                                 {latency.runtime: latency.prepare_seconds for latency in measured}))
            print(f"  {space.name} {label:>11} batch {batch:>3}: " + ", ".join(
                f"{runtime} {value:.3f} ms ({value / ms['eager']:.2f}x)" for runtime, value in ms.items()), flush=True)
    return rows


def bench_repeatability(space_name: str, runtime: str, *, configs: int, threads: int, warmup: int,
                        warmup_seconds: float, repeats: int, timed_seconds: float = 0.0, seed: int = 0) -> RepeatRow:
    space = get_space(space_name)
    torch.manual_seed(seed)
    supernet = build_supernet(space, with_gates=False).eval()
    rng = np.random.default_rng(seed)
    samples = [space.sample(rng) for _ in range(configs)]
    image = synthetic_images(1, space.default_resolution, torch.Generator().manual_seed(seed))
    anchor = space_anchor(space, space.default_resolution)
    anchor.warmup_seconds, anchor.repeats = ANCHOR_EFFORT * warmup_seconds, ANCHOR_EFFORT * repeats
    anchor.timed_seconds = ANCHOR_EFFORT * timed_seconds
    anchor.seconds(1, runtime, "float32", threads=threads, device=torch.device("cpu"))  # once, before both passes
    timing = dict(device="cpu", warmup=warmup, warmup_seconds=warmup_seconds, repeats=repeats,
                  timed_seconds=timed_seconds, threads=threads,
                  runtime=runtime)
    flops, anchored, plain = {}, [{}, {}], [{}, {}]
    for pass_index, order in enumerate((range(configs), reversed(range(configs)))):
        for index in order:
            network = supernet.extract(samples[index]).eval()
            flops.setdefault(index, count_flops(network, space.default_resolution))
            anchored[pass_index][index] = measure_latencies([network], image, anchor=anchor, **timing)[0].seconds
            plain[pass_index][index] = measure_latencies([network], image, **timing)[0].seconds

    def agreement(passes: list[dict[int, float]]) -> tuple[float, float]:
        first, second = [passes[0][i] for i in range(configs)], [passes[1][i] for i in range(configs)]
        return kendall_tau_b(first, second), float(np.median([abs(b - a) / a for a, b in zip(first, second)]))

    tau, difference = agreement(anchored)
    plain_tau, plain_difference = agreement(plain)
    mean = [(anchored[0][i] + anchored[1][i]) / 2 for i in range(configs)]
    in_order = lambda passes: [[figures[i] for i in range(configs)] for figures in passes]  # noqa: E731
    return RepeatRow(space.name, runtime, configs, tau, difference, kendall_tau_b(mean, [flops[i] for i in range(configs)]),
                     tau >= TARGET_REPEAT_TAU, plain_tau, plain_difference, in_order(anchored), in_order(plain),
                     [flops[i] for i in range(configs)])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=["resnet18_cifar", "mobilenet_v2_cifar"])
    parser.add_argument("--batch", type=int, default=64, help="the larger batch of the ratios (besides 1)")
    parser.add_argument("--configs", type=int, default=50, help="random configs per space for repeatability")
    parser.add_argument("--repeat-runtimes", nargs="+", choices=RUNTIMES, default=["eager", "onnxruntime"])
    parser.add_argument("--skip-ratios", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--warmup-seconds", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--timed-seconds", type=float, default=LatencySettings.timed_seconds,
                        help="repeatability: time each network for at least this long (latency.timed_seconds)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    unknown = [name for name in args.spaces if name not in list_spaces()]
    if unknown:
        parser.error(f"--spaces: unknown search space {unknown[0]!r}; valid: {', '.join(list_spaces())}")
    if args.configs < 2 or min(args.batch, args.threads, args.repeats) < 1 or min(args.warmup, args.timed_seconds) < 0:
        parser.error("--configs >= 2; --batch, --threads, --repeats >= 1; --warmup, --timed-seconds >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    report = Report("runtimes", args.threads, args.warmup, args.warmup_seconds, args.repeats, os.getloadavg(),
                    machine=machine_record(args.threads), timed_seconds=args.timed_seconds)
    print(f"CPU runtimes, {args.threads} thread(s), float32; load average at start {os.getloadavg()[0]:.2f}")
    timing = {"threads": args.threads, "warmup": args.warmup, "warmup_seconds": args.warmup_seconds,
              "repeats": args.repeats}
    for space in args.spaces:
        if not args.skip_ratios:
            report.ratios += bench_ratios(space, sorted({1, args.batch}), **timing)
        for runtime in args.repeat_runtimes:
            row = bench_repeatability(space, runtime, configs=args.configs, timed_seconds=args.timed_seconds, **timing)
            report.repeatability.append(row)
            print(f"{'PASS' if row.passed else 'FAIL'}: {space} {runtime} batch 1, {row.configs} networks timed twice: "
                  f"Kendall tau pass 1 vs pass 2 anchored {row.tau_pass1_pass2:.3f} (target >= {TARGET_REPEAT_TAU}), median "
                  f"difference {row.median_relative_difference:.1%}; plain {row.plain_tau_pass1_pass2:.3f} "
                  f"({row.plain_median_relative_difference:.1%}); tau latency vs FLOPs {row.tau_latency_flops:.3f}",
                  flush=True)
    report.load_average_end = os.getloadavg()
    print(f"load average at the end {report.load_average_end[0]:.2f}; {time.perf_counter() - started:.0f} s in all")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({**asdict(report), "passed": report.passed}, indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
