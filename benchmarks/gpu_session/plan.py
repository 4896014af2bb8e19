"""The GPU session's time plan: every stage of ``run.sh`` priced before the lease, from costs the dry run measured.

A lease gives one call of about 8 minutes (:data:`SESSION_SECONDS`). The plan fills at most 80 % of it
(:data:`MARGIN`: 20 % stays unplanned), each row priced one of three ways:

* ``measured``: host work the dry run timed on this machine at the real session's sizes (Python start-up,
  listing the tree, reading 30,000 JPEG headers, decoding them into the store, extracting the archive,
  counting FLOPs), scaled by image or config counts. This machine (2 cores shared with a training run) is
  slower than the GPU machine's 16 cores, so these are upper bounds there;
* ``bound``: GPU work whose speed a CPU cannot measure, held to a deadline the benchmarks enforce (a timed
  loop that stops, a scoring row skipped and failed, a subprocess timeout);
* ``estimate``: what neither the dry run nor a deadline covers (installing the wheels, CUDA's start-up).

Training (stage (c)) gets what is left: ``train_seconds``, from which ``bench_gpu.py`` picks the epochs with
the step time and checkpoint time it measures on the GPU in stage (b). A plan that leaves less than
:data:`MIN_TRAIN_SECONDS` does not fit.

    python benchmarks/gpu_session/plan.py --costs benchmarks/gpu_session/measured_costs.json            # the table
    python benchmarks/gpu_session/plan.py --costs benchmarks/gpu_session/measured_costs.json --shell    # for run.sh
    python benchmarks/gpu_session/plan.py --from-dry-run /tmp/gpu_dry --write-costs FILE                 # after a dry run
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SESSION_SECONDS = 480.0  # one call of the device tool: 8 minutes
MARGIN = 0.2  # of the session, never planned
MIN_TRAIN_SECONDS = 60.0
# The real session's sizes: 40,000 CIFAR-10 training JPEGs, 10,000 of them held out for scoring.
FILES, TRAIN_IMAGES, VAL_IMAGES = 40_000, 30_000, 10_000
CHECKPOINT_BYTES = 160e6  # recipe gpu_10min: the student, its EMA teacher, heads, SGD momentum (~150 MB)
FLOP_WORKERS = 15  # bench_gpu_latency counts FLOPs in cores - 1 processes of the GPU machine's 16

# Deadlines the benchmarks enforce, in seconds (bench_gpu.py --*-seconds, bench_gpu_latency.py --budget).
BOUNDS: dict[str, float] = {
    "reference": 15.0,  # (a): both sides' warm-up and timed steps stop at it
    "sandwich": 15.0,  # (b): rounds stop at it (one at least); also measures the loop's step and a checkpoint
    "score": 25.0,  # (c): kNN rows after it are skipped (and fail)
    "fidelity": 30.0,  # (d): the subprocess's timeout
    # bench_gpu_latency's stage budgets (flops_order's per space: its configs stop there)
    "cold_start": 8.0, "flops_order": 25.0, "full_batch1": 10.0, "gated_batch1": 20.0,
}
LATENCY_STAGES = ("cold_start", "flops_order", "full_batch1", "gated_batch1")
COMMANDS = ("bench_gpu", "bench_gpu_latency")
KILL_GRACE_SECONDS = 15  # run.sh: timeout -k, between SIGTERM (a training step finishes, a checkpoint) and SIGKILL
LATENCY_CONFIGS = 24  # random configs per space in flops_order (two spaces, two passes)
ESTIMATES: dict[str, float] = {
    "wheels": 10.0,  # pip install of the 13 wheels into /tmp/site, no compile
    "nvidia_smi": 2.0,
    "cuda_start": 5.0,  # CUDA context and first kernels, per process
}


@dataclass(frozen=True)
class HostCosts:
    """Host work the dry run timed (seconds; per image or per config where it scales)."""

    python_start_s: float  # interpreter, torch and the benchmark's imports
    walk_per_file_s: float  # listing an ImageFolder tree (every build of a run)
    header_per_image_s: float  # reading a JPEG header the first time (later reads are cached)
    decode_per_image_s: float  # decoding a JPEG into the uint8 store, with the run's workers
    checkpoint_read_bytes_per_s: float  # torch.load of a checkpoint
    tar_s: float  # extracting the CIFAR-10 JPEG archive
    flops_per_config_s: float  # fvcore count of one resnet18_cifar / mobilenet_v2_cifar config, one core
    flops_pool_start_s: float  # starting the FLOP-counting worker processes
    measured_on: str = ""  # the machine and its load when measured

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostCosts:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Row:
    stage: str
    seconds: float
    basis: str  # measured / bound / estimate / remainder, and how it was priced
    command: str  # what run.sh runs it in: setup, bench_gpu or bench_gpu_latency


@dataclass
class SessionPlan:
    rows: list[Row]
    train_seconds: float
    session_seconds: float = SESSION_SECONDS
    margin: float = MARGIN
    bounds: dict[str, float] = field(default_factory=lambda: dict(BOUNDS))
    latency_configs: int = LATENCY_CONFIGS

    @property
    def planned_seconds(self) -> float:
        return sum(row.seconds for row in self.rows)

    @property
    def fits(self) -> bool:
        return (self.train_seconds >= MIN_TRAIN_SECONDS
                and self.planned_seconds <= (1 - self.margin) * self.session_seconds + 1e-9)

    @property
    def timeouts(self) -> dict[str, int]:
        """run.sh's per-command timeouts: each command's rows plus a share of the unplanned time (less the grace
        ``timeout -k`` gives each before SIGKILL), so that the setup, both commands and their graces end within
        the session whatever happens."""
        planned = {command: sum(row.seconds for row in self.rows if row.command == command) for command in COMMANDS}
        slack = self.session_seconds - self.planned_seconds - len(COMMANDS) * KILL_GRACE_SECONDS
        total = sum(planned.values())
        return {command: int(seconds + slack * seconds / total) for command, seconds in planned.items()}

    def table(self) -> str:
        unplanned = self.session_seconds - self.planned_seconds
        lines = [f"GPU session plan: {self.planned_seconds:.0f} s planned of {self.session_seconds:.0f} s "
                 f"({unplanned:.0f} s = {unplanned / self.session_seconds:.0%} unplanned; at least "
                 f"{self.margin:.0%} required): {'FITS' if self.fits else 'DOES NOT FIT'}"]
        width = max(len(row.stage) for row in self.rows)
        lines += [f"  {row.stage:<{width}}  {row.seconds:6.1f} s  {row.basis}" for row in self.rows]
        lines.append(f"  {'total':<{width}}  {self.planned_seconds:6.1f} s")
        lines.append(f"  training (c) gets {self.train_seconds:.0f} s (at least {MIN_TRAIN_SECONDS:.0f} s); "
                     f"timeouts: bench_gpu {self.timeouts['bench_gpu']} s, "
                     f"bench_gpu_latency {self.timeouts['bench_gpu_latency']} s, each then {KILL_GRACE_SECONDS} s to "
                     "stop before SIGKILL")
        return "\n".join(lines)

    def shell(self) -> str:
        """``name=value`` lines for run.sh."""
        budgets = " ".join(f"{name}={self.bounds[name]:g}" for name in LATENCY_STAGES)
        values = {"train_seconds": f"{self.train_seconds:.0f}", "kill_grace": KILL_GRACE_SECONDS,
                  "bench_gpu_timeout": self.timeouts["bench_gpu"],
                  "latency_timeout": self.timeouts["bench_gpu_latency"], "latency_configs": self.latency_configs,
                  "latency_budgets": f"'{budgets}'",
                  **{f"bound_{name}": f"{seconds:g}" for name, seconds in self.bounds.items() if name not in LATENCY_STAGES}}
        return "\n".join(f"{name}={value}" for name, value in values.items())


def plan_session(costs: HostCosts, *, bounds: dict[str, float] | None = None, estimates: dict[str, float] | None = None,
                 session_seconds: float = SESSION_SECONDS, margin: float = MARGIN,
                 latency_configs: int = LATENCY_CONFIGS) -> SessionPlan:
    """Price every stage of the real session from ``costs``; training gets the rest of the planned share."""
    bound = {**BOUNDS, **(bounds or {})}
    guess = {**ESTIMATES, **(estimates or {})}
    walk = costs.walk_per_file_s * FILES
    headers, decode = costs.header_per_image_s, costs.decode_per_image_s
    checkpoint_load = CHECKPOINT_BYTES / costs.checkpoint_read_bytes_per_s
    flop_count = costs.flops_pool_start_s + 2 * latency_configs * costs.flops_per_config_s / FLOP_WORKERS
    latency_stages = bound["cold_start"] + 2 * bound["flops_order"] + bound["full_batch1"] + bound["gated_batch1"]
    start = costs.python_start_s + guess["cuda_start"]
    rows = [
        Row("setup: wheels, nvidia-smi, archive, versions", guess["wheels"] + guess["nvidia_smi"] + costs.tar_s + start,
            f"estimate {guess['wheels'] + guess['nvidia_smi']:.0f} s + measured tar {costs.tar_s:.1f} s + one start-up",
            "setup"),
        Row("bench_gpu start-up", start, f"measured imports {costs.python_start_s:.1f} s + estimate CUDA "
            f"{guess['cuda_start']:.0f} s", "bench_gpu"),
        Row("(0) data: list, headers, store", walk + TRAIN_IMAGES * (headers + decode),
            f"measured: {FILES:,} files listed, {TRAIN_IMAGES:,} x ({headers * 1e6:.0f} + {decode * 1e6:.0f}) us",
            "bench_gpu"),
        Row("(a) reference vs ours", walk + bound["reference"], f"bound {bound['reference']:.0f} s + listing", "bench_gpu"),
        Row("(b) sandwich, loop step, checkpoint", walk + bound["sandwich"], f"bound {bound['sandwich']:.0f} s + listing",
            "bench_gpu"),
        Row("(c) run built, store decoded", walk + TRAIN_IMAGES * decode, f"measured: {TRAIN_IMAGES:,} decodes", "bench_gpu"),
        Row("(c) training", 0.0, "remainder -> train_seconds", "bench_gpu"),
        Row("(c) scoring: resume, held-out images, kNN", walk + VAL_IMAGES * (headers + decode) + checkpoint_load
            + bound["score"], f"bound {bound['score']:.0f} s + measured: {VAL_IMAGES:,} images, a checkpoint read",
            "bench_gpu"),
        Row("(d) fidelity (subprocess)", bound["fidelity"], f"bound {bound['fidelity']:.0f} s (its timeout)", "bench_gpu"),
        Row("latency: start-up", start, "as bench_gpu's", "bench_gpu_latency"),
        Row("latency: FLOP counting", flop_count, f"measured: pool start + {2 * latency_configs} configs x "
            f"{costs.flops_per_config_s:.2f} s / {FLOP_WORKERS} processes", "bench_gpu_latency"),
        Row("latency: stages", latency_stages, f"bounds {bound['cold_start']:.0f} + 2 x {bound['flops_order']:.0f} + "
            f"{bound['full_batch1']:.0f} + {bound['gated_batch1']:.0f} s", "bench_gpu_latency"),
    ]
    fixed = sum(row.seconds for row in rows)
    train_seconds = max(0.0, (1 - margin) * session_seconds - fixed)
    rows = [Row(r.stage, train_seconds, r.basis, r.command) if r.stage == "(c) training" else r for r in rows]
    return SessionPlan(rows=rows, train_seconds=train_seconds, session_seconds=session_seconds, margin=margin,
                       bounds=bound, latency_configs=latency_configs)


def costs_from_dry_run(folder: Path) -> HostCosts:
    """The host costs a dry run of run.sh recorded: ``bench_gpu.json``'s ``costs`` and ``gpu_latency.json``'s."""
    gpu = json.loads((folder / "bench_gpu.json").read_text())["costs"]
    latency = json.loads((folder / "gpu_latency.json").read_text())["setup"]
    session = json.loads((folder / "session_costs.json").read_text()) if (folder / "session_costs.json").exists() else {}
    return HostCosts(
        python_start_s=gpu["python_start_s"], walk_per_file_s=gpu["walk_s"] / gpu["files"],
        header_per_image_s=gpu["headers_s"] / gpu["images"], decode_per_image_s=gpu["store_s"] / gpu["images"],
        checkpoint_read_bytes_per_s=gpu["checkpoint_read_bytes_per_s"], tar_s=float(session.get("tar_s", 10.0)),
        flops_per_config_s=latency["flops_per_config_seconds"], flops_pool_start_s=latency["flops_pool_start_seconds"],
        measured_on=gpu.get("measured_on", ""),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--costs", type=Path, help="measured host costs (JSON, as --write-costs writes them)")
    source.add_argument("--from-dry-run", type=Path, help="a dry run's output folder ($OUT of DRY_RUN=1 run.sh)")
    parser.add_argument("--write-costs", type=Path, default=None, help="save the measured costs here")
    parser.add_argument("--shell", action="store_true", help="print name=value lines for run.sh instead of the table")
    args = parser.parse_args(argv)
    costs = (HostCosts.from_dict(json.loads(args.costs.read_text())) if args.costs
             else costs_from_dry_run(args.from_dry_run))
    if args.write_costs:
        args.write_costs.write_text(json.dumps(asdict(costs), indent=2) + "\n")
    plan = plan_session(costs)
    print(plan.shell() if args.shell else plan.table())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
