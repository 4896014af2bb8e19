"""Every self-supervised method at equal steps (issue 10): one supernet per method, all else equal.

For each method (default: byol moco simclr_momentum simclr simsiam dino vicreg swav mocov3) this trains the
``--space`` supernet with ``python -m supernet.train recipe=quickstart ssl=<method>``, one
subprocess per method, on the same ImageFolder images (``--data-root``, capped at
``--train-images``), for the same ``--steps`` at the same batch size, seed, resolution and views
(two_crop), with the quickstart recipe's sandwich of 4 and its three-stage dynamic sampling, gates
on (``--no-gates``: off). The schedules (learning rate, dynamic sampling, group regularisation)
span ``ceil(steps / steps_per_epoch)`` epochs and the run stops at ``--steps``, so every method
ends at (nearly) the end of the same schedule.

Scoring is the run's own kNN monitor, read from its ``metrics.jsonl``: BN recalibrated on 2,000
training images, weighted kNN (k = 20, T = 0.07) of the labeled training images against the
disjoint labeled test split (``--test-root``, through ``data.test_root``), at the max, mid (uniform
0.5) and min widths, after every epoch and at the last step. Beside it, the step-0 ``baseline``
record of the same run: the same widths at their initial weights (identical for every method: the
encoder is built under the same seed before the method's heads) and raw pixels.

Each method keeps the settings of its ``configs/ssl/<method>.yaml`` under the quickstart recipe
(heads 512 wide; SimCLR, SimSiam, VICReg and SwAV have no momentum encoder: base_momentum 0) and the
recipe's SGD at lr 0.05 per 256 images; the only method-specific changes are in
:data:`METHOD_OVERRIDES` (DINO's head). ``--set METHOD:key=value`` adds one for one method;
``-- key=value ...`` applies to every method.

A method whose run fails (``features collapsed``, a non-finite loss: exit 1) is reported as failed
with its error line, and the others still run. Wall time is the whole subprocess (start-up, data,
kNN evaluations, checkpoints); train time is the training loop alone (from the logged throughput).

Cost on the idle 2-core development CPU (3-step runs, 2026-11-29): a step of 128 images takes
~1.3 s while only the full network trains (the first tenth), ~1.5-2.0 s with the sandwich and gates
(~1.2 s with ``--no-gates``; VICReg the slowest); one kNN evaluation of the ``small`` space
(2,000 + 5,000 + 2,000 images at three widths) ~12 s, run five times (step 0, the ends of epochs
1-3 at steps 39, 78 and 117, and step 150). So ~5 minutes per method at the defaults, ~35 for the
first seven (swav and mocov3 came later and are not timed here); ``--batch-size 64`` (~0.85 s per
step, 2 epochs, 3 evaluations) brings a method to ~3 minutes.

    python benchmarks/bench_ssl_methods.py --data-root /tmp/data/c10_train5k --test-root /tmp/data/c10_test2k \\
        --steps 150 --out runs/bench_ssl_methods --json ssl_methods.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from search_spaces import UserError
from supernet.cli import ArgumentParser, command
from supernet.data.datasets import load_image_data
from supernet.io.files import atomic_write_text
from supernet.io.provenance import machine_record
from supernet.settings import SettingsError
from supernet.ssl import METHODS
from supernet.train import load_train_settings

DEFAULT_METHODS = ("byol", "moco", "simclr_momentum", "simclr", "simsiam", "dino", "vicreg", "swav", "mocov3")
WIDTHS = ("max", "mid", "min")
REPO_ROOT = Path(__file__).resolve().parents[1]

# What a method needs, beyond its configs/ssl/<name>.yaml, to be sane in a short CPU run.
METHOD_OVERRIDES: dict[str, tuple[str, ...]] = {
    # DINO's 65,536 prototypes exceed the 5,000 training images (US3L's and SSLight's CNN recipes use
    # 4,096) and put a 65,536-wide matmul and softmax on every view, teacher and center update: too
    # big for a 2-core CPU. 1,024 keeps the head's cost near the others'. BN in the head (SSLight's
    # CNN setting): without it the bottleneck's norm at DINO's initialisation is ~1e-3 and L2
    # normalising it multiplies the first gradients a thousandfold (tests/supernet/ssl/test_training.py).
    "dino": ("ssl.num_prototypes=1024", "ssl.head_batch_norm=true"),
}


@dataclass
class MethodResult:
    """One method's run: its kNN after the last step and the step-0 baselines of the same run."""

    method: str
    failed: bool
    error: str | None  # the run's error line when it failed
    steps: int  # optimizer steps taken (the last logged step)
    wall_seconds: float
    train_seconds: float | None  # the training loop alone, from the logged throughput
    knn: dict[str, float] | None  # max / mid / min after the last step
    untrained: dict[str, float] | None  # max / mid / min at step 0
    raw_pixels: float | None
    val_images: int | None
    final_loss: float | None
    knn_per_epoch: list[dict[str, Any]] = field(default_factory=list)  # {"step", "epoch", "knn"}
    overrides: list[str] = field(default_factory=list)
    out_dir: str = ""

    @property
    def gain_at_max(self) -> float | None:
        """kNN points gained over the untrained network at full width."""
        if self.knn is None or self.untrained is None:
            return None
        return 100 * (self.knn["max"] - self.untrained["max"])


@dataclass
class Report:
    benchmark: str
    space: str
    steps: int
    steps_per_epoch: int
    schedule_epochs: int
    batch_size: int
    train_images: int
    resolution: int
    seed: int
    gates: bool
    threads: int
    common_overrides: list[str]
    results: list[MethodResult]
    machine: dict[str, Any]

    def as_json(self) -> str:
        payload = asdict(self)
        for row, result in zip(payload["results"], self.results):
            row["gain_at_max_points"] = result.gain_at_max
        return json.dumps(payload, indent=2) + "\n"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_seconds(steps: list[dict[str, Any]], batch_size: int) -> float | None:
    """Loop time from the step records (one per step): each epoch's steps over its last logged throughput.

    ``images_per_s`` of a record is the images since its epoch began over the time since then.
    """
    per_epoch: dict[int, list[dict[str, Any]]] = {}
    for record in steps:
        per_epoch.setdefault(record["epoch"], []).append(record)
    if not per_epoch:
        return None
    return sum(len(records) * batch_size / records[-1]["images_per_s"] for records in per_epoch.values())


def error_line(lines: list[str], returncode: int) -> str:
    """The run's ``error: ...`` line (supernet.cli), else the last line of its traceback."""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    for line in reversed(lines):
        if line.strip():
            return f"exit {returncode}: {line.strip()}"
    return f"exit {returncode} with no output"


def run_method(method: str, overrides: list[str], out_dir: Path, *, batch_size: int, threads: int) -> MethodResult:
    """Train one method in its own process, its output echoed and kept in ``out_dir/train.log``."""
    out_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    started = time.perf_counter()
    with (out_dir / "train.log").open("w") as log, subprocess.Popen(
        [sys.executable, "-m", "supernet.train", *overrides], cwd=REPO_ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            lines.append(line.rstrip("\n"))
            print(f"  [{method}] {line}", end="", flush=True)
        returncode = process.wait()
    wall = time.perf_counter() - started

    records = read_metrics(out_dir / "metrics.jsonl")
    baseline = next((r for r in records if r["kind"] == "baseline"), None)
    epochs = [r for r in records if r["kind"] == "epoch" and "knn" in r]
    steps = [r for r in records if r["kind"] == "step"]
    return MethodResult(
        method=method, failed=returncode != 0, error=error_line(lines, returncode) if returncode else None,
        steps=steps[-1]["step"] if steps else 0, wall_seconds=wall, train_seconds=training_seconds(steps, batch_size),
        knn=epochs[-1]["knn"] if epochs and not returncode else None,
        untrained=baseline["knn"] if baseline else None, raw_pixels=baseline["raw_pixels"] if baseline else None,
        val_images=baseline["val_images"] if baseline else None, final_loss=steps[-1]["loss"] if steps else None,
        knn_per_epoch=[{"step": r["step"], "epoch": r["epoch"], "knn": r["knn"]} for r in epochs],
        overrides=overrides, out_dir=str(out_dir),
    )


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def print_table(report: Report) -> None:
    print(f"\nkNN top-1 (%) on the test split, {report.space} supernet, {report.steps} steps of {report.batch_size} "
          f"({report.train_images} training images, {report.resolution} px, seed {report.seed}, "
          f"gates {'on' if report.gates else 'off'}, {report.threads} threads)")
    header = (f"{'method':<16} {'steps':>5} {'wall s':>7} {'train s':>7} | {'kNN max':>7} {'mid':>6} {'min':>6} | "
              f"{'untrained max':>13} {'mid':>6} {'min':>6} | {'raw px':>6} | {'gain@max':>9}")
    print(header)
    print("-" * len(header))
    for r in report.results:
        train = "-" if r.train_seconds is None else f"{r.train_seconds:.0f}"
        untrained = r.untrained or {}
        knn_cells = (f"{percent(r.knn['max']):>7} {percent(r.knn['mid']):>6} {percent(r.knn['min']):>6}" if r.knn
                     else f"{'FAILED':>7} {'-':>6} {'-':>6}")
        gain = "-" if r.gain_at_max is None else f"{r.gain_at_max:+.2f} pt"
        print(f"{r.method:<16} {r.steps:>5} {r.wall_seconds:>7.0f} {train:>7} | {knn_cells} | "
              f"{percent(untrained.get('max')):>13} {percent(untrained.get('mid')):>6} {percent(untrained.get('min')):>6} | "
              f"{percent(r.raw_pixels):>6} | {gain:>9}")
    for r in report.results:
        if r.failed:
            print(f"{r.method} failed: {r.error}")
    baselines = {json.dumps(r.untrained, sort_keys=True) for r in report.results if r.untrained}
    if len(baselines) > 1:  # same seed, same initial encoder: the step-0 scores should agree
        print("note: the untrained baselines differ between methods; their runs did not start from the same encoder")
    val = next((r.val_images for r in report.results if r.val_images), None)
    print(f"{val or '?'} test images; one point = {val / 100 if val else '?'} images. "
          f"gain@max: kNN at full width minus the untrained full network, in points.")


def parse_method_overrides(items: list[str], methods: list[str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {method: [] for method in methods}
    for item in items:
        method, separator, override = item.partition(":")
        if not separator or "=" not in override:
            raise SettingsError(f"--set {item!r}: expected METHOD:key=value, e.g. --set vicreg:optim.lr=0.02")
        if method not in extra:
            raise SettingsError(f"--set {item!r}: {method!r} is not among --methods ({', '.join(methods)})")
        extra[method].append(override)
    return extra


@command()
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="ImageFolder tree of training images (CIFAR-10 JPEGs)")
    parser.add_argument("--test-root", type=Path, required=True, help="ImageFolder tree of disjoint labeled test images")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                        help=f"SSL methods to compare (default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--space", default="small")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per method")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=5000, help="at most this many training images")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gates", action="store_true", help="train without Krishna et al.'s gates")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each training process")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (data.num_workers)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--set", dest="method_overrides", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="a setting for one method, e.g. --set vicreg:optim.lr=0.02 (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_ssl_methods"), help="one run folder per method")
    parser.add_argument("--overwrite", action="store_true", help="replace the methods' run folders under --out")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every number here")
    parser.add_argument("overrides", nargs="*", help="key=value settings for every method, after --")
    args = parser.parse_args(argv)

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SettingsError(f"--methods: {unknown[0]!r} is not a method; valid: {', '.join(METHODS)}")
    if args.steps < 1 or args.batch_size < 2 or args.train_images < 1:
        raise SettingsError("--steps, --batch-size and --train-images: expected >= 1, >= 2 and >= 1")
    method_overrides = parse_method_overrides(args.method_overrides, args.methods)
    torch.set_num_threads(args.threads)

    # The schedules span whole epochs; the run stops after --steps, inside the last one.
    data = load_image_data("imagefolder", root=str(args.data_root), max_images=args.train_images, holdout_size=0,
                           download=False, seed=args.seed, test_root=str(args.test_root))
    train_images = len(data.train)
    steps_per_epoch = train_images // args.batch_size
    if steps_per_epoch == 0:
        raise SettingsError(f"--batch-size: {args.batch_size} exceeds the {train_images} training images")
    epochs = math.ceil(args.steps / steps_per_epoch)

    common = [
        "recipe=quickstart", f"model.space={args.space}", "views=two_crop", "data=imagefolder",
        f"data.root={args.data_root.resolve()}", f"data.test_root={args.test_root.resolve()}", "data.holdout_size=0",
        f"data.max_images={args.train_images}", f"data.resolution={args.resolution}", f"data.num_workers={args.workers}",
        f"epochs={epochs}", f"max_steps={args.steps}", f"batch_size={args.batch_size}", f"seed={args.seed}",
        f"gates.enabled={str(not args.no_gates).lower()}", "knn.enabled=true", "log_every_steps=1", "progress=false",
        f"device={args.device}",
    ]
    plans: dict[str, tuple[list[str], Path]] = {}
    for method in args.methods:
        out_dir = (args.out / method).resolve()
        overrides = [*common, f"ssl={method}", *METHOD_OVERRIDES.get(method, ()), *args.overrides,
                     *method_overrides[method], f"out_dir={out_dir}"]
        load_train_settings(overrides)  # a bad setting stops here, before any method has trained
        if out_dir.exists() and any(out_dir.iterdir()) and not args.overwrite:
            raise UserError(f"--out: {out_dir} already holds a run; pass --overwrite to replace it or a new --out")
        plans[method] = (overrides, out_dir)

    print(f"{len(plans)} methods x {args.steps} steps ({steps_per_epoch} steps per epoch of {train_images} images, "
          f"schedules over {epochs} epoch(s)); kNN at step 0, after every epoch and at the last step", flush=True)
    report = Report(
        benchmark="bench_ssl_methods", space=args.space, steps=args.steps, steps_per_epoch=steps_per_epoch,
        schedule_epochs=epochs, batch_size=args.batch_size, train_images=train_images, resolution=args.resolution,
        seed=args.seed, gates=not args.no_gates, threads=args.threads, common_overrides=common, results=[],
        machine=machine_record(args.threads),
    )
    for method, (overrides, out_dir) in plans.items():
        if out_dir.exists():
            shutil.rmtree(out_dir)
        print(f"\n== {method}: python -m supernet.train {' '.join(o for o in overrides if o not in common)}", flush=True)
        result = run_method(method, overrides, out_dir, batch_size=args.batch_size, threads=args.threads)
        status = f"FAILED ({result.error})" if result.failed else "done"
        print(f"== {method}: {status} in {result.wall_seconds:.0f} s", flush=True)
        report.results.append(result)
        if args.json is not None:  # rewritten after every method, so a long comparison keeps what it measured
            atomic_write_text(args.json, report.as_json())
    print_table(report)
    return 1 if any(result.failed for result in report.results) else 0


if __name__ == "__main__":
    sys.exit(main())
