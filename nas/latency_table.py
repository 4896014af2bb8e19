"""``python -m nas.latency_table``: time every part of a search space on this machine, for searches elsewhere.

Build the table once on the target device; search anywhere with it::

    python -m nas.latency_table --space resnet18_cifar --resolution 32 --device cpu --batch-size 1 --out cpu1.json
    python -m nas.latency_table --space resnet18_cifar --device cuda --runtime graph --batch-size 256 --out h200.json
    python -m nas.search --latency-table cpu1.json --latency-budget 3ms

What a table holds and how it predicts: :mod:`nas.latency.table`; how it is built: :mod:`nas.latency.build`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nas.latency.build import UNSTEADY, build_table
from nas.latency.entries import SECTIONS, count_entries
from nas.latency.runtimes import DTYPES, gate_mode
from nas.latency.timers import TABLE_RUNTIMES, table_runtime
from search_spaces import get_space, list_spaces
from supernet.cli import ArgumentParser, command
from supernet.io.files import atomic_write_text

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas.latency_table",
        description="Time every block of a search space at every width combination on this machine, for "
        "python -m nas.search --latency-table to predict latencies from anywhere.",
    )
    parser.add_argument("--space", required=True, help=f"search space: {', '.join(list_spaces())}")
    parser.add_argument("--resolution", type=int, default=None, help="input size in pixels (default: the space's)")
    parser.add_argument("--device", default="cpu", help="where to time: cpu (perf_counter, fixed threads) or cuda "
                        "(CUDA events)")
    parser.add_argument("--runtime", choices=("auto", *TABLE_RUNTIMES), default="auto",
                        help="what each part runs as: eager, graph (CUDA graphs, cuda) or onnxruntime (cpu); auto: graph on "
                        "cuda, eager on cpu, as the search times")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="precision; auto: float16 on cuda, float32 on cpu")
    parser.add_argument("--batch-size", type=int, default=1, help="must equal the search's latency.batch_size")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch or onnxruntime intra-op); default 1")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards before each entry (default 3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forwards per entry; the median is kept (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the table (JSON)")
    parser.add_argument("--count", action="store_true", help="print how many entries the table has, build nothing")
    parser.add_argument("--no-progress", action="store_true")
    return parser


@command(interrupted="interrupted: no table was written")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.space.partition("@")[0] not in list_spaces():
        parser.error(f"--space: {args.space!r} is not a search space; valid: {', '.join(list_spaces())}")
    for name in ("resolution", "batch_size", "threads", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: {value} must be >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup: {args.warmup} must be >= 0")
    space = get_space(args.space)
    resolution = args.resolution or space.default_resolution
    runtime, dtype = table_runtime(args.device, args.runtime, args.dtype)
    counts = count_entries(space, batch_size=args.batch_size, gathered=gate_mode(runtime, args.batch_size) == "gathered")
    if args.count:
        print(f"{space.name} at batch {args.batch_size} on {runtime} {dtype}: {counts['total']} entries "
              f"({', '.join(f'{counts[s]} {s}' for s in SECTIONS)})")
        return 0
    if args.out is None:
        parser.error("--out: required (where to write the table), unless --count")
    table = build_table(space.name, resolution=resolution, device=args.device, runtime=runtime, dtype=dtype,
                        batch_size=args.batch_size, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                        progress=not args.no_progress)
    atomic_write_text(args.out, json.dumps(table, indent=1) + "\n")
    overhead, change = table["overhead"], table["recheck"]["median_relative_change"]
    if change > UNSTEADY:
        print(f"warning: entries timed again at the end of the build changed by {change:.0%} (median); the machine "
              "was not quiet, so the table is noisy; rebuild it on an idle machine", file=sys.stderr)
    print(f"{args.out}: {counts['total']} entries of {space.name} at {resolution} px, batch {args.batch_size}, "
          f"{runtime} {dtype} on {table['device']}; built in {table['build_seconds']:.0f} s; overhead {overhead['fixed_seconds'] * 1e3:.3f} ms "
          f"+ {overhead['proportional']:.1%} of the entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
