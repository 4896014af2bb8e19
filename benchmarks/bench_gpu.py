"""One GPU benchmark that fits a ten-minute lease (issue 16): throughput, the sandwich's cost, a CIFAR-10
run of the full recipe scored as lightly scores SSL on CIFAR-10, and the oracle's fidelity on it.

Stages, each printed as it ends and written to ``--out``/bench_gpu.json (rewritten after every stage); the
runs' folders and checkpoints live in a work folder under /tmp (``--work``), never under ``--out``:

(0) ``data`` (always): the host work every run repeats, timed at full size: listing the tree, reading every
    training image's header (read once per process from here on), decoding them into the uint8 store
    (shared by (a), (b) and (c)'s scoring), reading a checkpoint-sized file back. The GPU session's time
    plan (``benchmarks/gpu_session/plan.py``) prices the session from what a dry run records here.
(a) ``reference``: images/s of a plain-PyTorch BYOL step (torchvision ResNet-18 with the CIFAR stem, the
    run's own heads: projector and predictor of the recipe's ``ssl.*`` sizes, EMA teacher, fused SGD,
    bf16 autocast, channels-last, views already on the GPU as random tensors) vs our full-width-only
    step on the same network, batch and precision with real CIFAR-10 JPEGs and real augmentation (the
    views made on the GPU from the uint8 store, ``data.pipeline=device``), timed over the loop's own
    batches, health checks included. Target: ours >= 0.8 x the reference. With ``--compile`` both sides
    also run with ``compile=true``. Held to ``--reference-seconds``.
(b) ``sandwich``: a step of the full recipe (sandwich of 3 and the gated pass) vs the same networks each
    trained alone (the network that hosts the gated pass with its gated pass), like with like: every
    step pays one teacher forward and one EMA update, so the standalone sum counts them once, as the
    sandwich does (timed on their own: sum of standalone steps - (N - 1) x (teacher + EMA)).
    Target: <= 1.15. Then the loop's whole step over its own batches (views made) and one checkpoint
    write, timed: what (c) sizes its epochs with. Held to ``--sandwich-seconds``.
(c) ``cifar_run``: ``recipe=gpu_10min`` on the CIFAR-10 training JPEGs for as many epochs as fit in
    ``--train-seconds`` (from (b)'s loop step and checkpoint times), then kNN as lightly's CIFAR-10
    benchmark scores it: k = 200, T = 0.1, every training image in the bank, on a labeled split training
    never saw (``--test-root``, the official test split as an ImageFolder, when given; else 10,000 images
    held out of the training JPEGs, trained on the rest). Max / mid (0.5) / min (0.25) width and the
    gated full network at the threshold that keeps ~50 % of its FLOPs, each beside the same network at
    its initial weights (BN recalibrated the same way), and raw pixels. Targets (issue 16): max >= 80 %,
    min >= 70 %, gated within 2 points of dense. Scoring is held to ``--score-seconds``: a row it leaves
    out fails.
(d) ``fidelity``: ``benchmarks/bench_fidelity.py`` on that checkpoint, ``--fidelity-configs`` configs, the
    same held-out images, on the GPU: Kendall tau between the search's kNN oracle (its 5,000-image bank,
    k = 20) and a linear probe on the same features (target >= 0.8); killed after ``--fidelity-seconds``.

Every requested stage ends with a verdict; one that raised, was skipped or left a check without a verdict
(the gated row, say) FAILS, and the exit code is 1 when anything failed.

    python benchmarks/bench_gpu.py --data-root /data/cifar10/train --out results/gpu
    python benchmarks/bench_gpu.py --data-root /tmp/c10/train --out /tmp/dry --dry-run   # CPU, toy sizes

Without CUDA it exits with one line (``--dry-run`` runs every stage on the CPU at toy sizes instead:
the ``tiny`` space, 64-image batches, seconds of training; its target checks mean nothing and are not
judged, only whether each stage ran; stage (0) still measures the whole tree).
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.perf_counter()  # before torch is imported: the start-up the session plan prices

import argparse  # noqa: E402
import copy  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # run from a checkout that was never installed (the GPU machine)

from gpu_session.plan import BOUNDS  # noqa: E402  (benchmarks/ is this script's folder)
from search_spaces import SubnetConfig  # noqa: E402
from supernet.data.datasets import ImageData, label_of, load_image_data  # noqa: E402
from supernet.data.store import ImageStore, build_store, native_sizes, store_layout  # noqa: E402
from supernet.devices import data_workers  # noqa: E402
from supernet.evaluation import ImageBank, knn_accuracy, untrained_network  # noqa: E402
from supernet.evaluation.data import EvalData  # noqa: E402
from supernet.io.files import atomic_save, atomic_write_text  # noqa: E402
from supernet.io.provenance import machine_record  # noqa: E402
from supernet.nn.bn import recalibrate_bn  # noqa: E402
from supernet.nn.flops import ShapeFlopCounter  # noqa: E402
from supernet.nn.models import SuperNet  # noqa: E402
from supernet.train import load_train_settings  # noqa: E402
from supernet.training.loop import BatchSource, check_health, train, train_step  # noqa: E402
from supernet.training.sandwich import plan_gated, plan_subnets, step_generator  # noqa: E402
from supernet.training.setup import Run, build_run, save_checkpoint  # noqa: E402

KNN_K, KNN_TEMPERATURE = 200, 0.1  # lightly's CIFAR-10 benchmark
TARGETS = {"reference_ratio": 0.8, "sandwich_ratio": 1.15, "max_knn": 0.80, "min_knn": 0.70, "gated_gap": 0.02,
           "fidelity_tau": 0.8}
STAGES = ("reference", "sandwich", "cifar_run", "fidelity")
LETTERS = {"data": "(0)", "reference": "(a)", "sandwich": "(b)", "cifar_run": "(c)", "fidelity": "(d)"}
# The checks each stage owes a verdict on; one without a verdict fails (issue 21 item 5).
EXPECTED = {"data": ("(0) measured",), "reference": ("(a) ratio",), "sandwich": ("(b) ratio",),
            "cifar_run": ("(c) max", "(c) min", "(c) gated"), "fidelity": ("(d) tau",)}


@dataclass(frozen=True)
class Check:
    stage: str
    key: str  # one of EXPECTED[stage]
    passed: bool
    line: str
    judged: bool = True  # a dry run's target checks are printed, not judged


@dataclass
class Report:
    machine: dict[str, Any]
    args: dict[str, Any]
    dry_run: bool = False
    costs: dict[str, Any] = field(default_factory=dict)  # host work, for benchmarks/gpu_session/plan.py
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def check(self, stage: str, key: str, name: str, value: float, target: float, *, at_most: bool = False) -> None:
        passed = value <= target if at_most else value >= target
        line = f"{'PASS' if passed else 'FAIL'}: {name} {value:.3f} (target {'<=' if at_most else '>='} {target})"
        if self.dry_run:
            line = f"dry run, not judged: {line}"
        self.checks.append(Check(stage, key, passed, line, judged=not self.dry_run))
        print(line, flush=True)

    def ran(self, stage: str, key: str, what: str) -> None:
        """A stage whose verdict is that it ran (a measurement without a target)."""
        line = f"RAN: {key}: {what}"
        self.checks.append(Check(stage, key, True, line))
        print(line, flush=True)

    def fail(self, stage: str, key: str, why: str) -> None:
        """A verdict owed and not reached: always a FAIL, dry run or not."""
        line = f"FAIL: {key}: {why}"
        self.checks.append(Check(stage, key, False, line))
        print(line, flush=True)

    def close(self, requested: list[str], *, gated: bool) -> None:
        """Fail every requested stage that raised, and every check a stage owes and did not reach."""
        for stage in requested:
            error = self.stages.get(stage, {}).get("error")
            if error is not None:
                self.fail(stage, f"{LETTERS[stage]} {stage}", f"raised {error}")
            have = {check.key for check in self.checks if check.stage == stage}
            for key in EXPECTED[stage]:
                if key == "(c) gated" and not gated:
                    continue
                if key not in have:
                    self.fail(stage, key, f"no verdict (stage {stage} {self.stage_state(stage)})")

    def stage_state(self, stage: str) -> str:
        result = self.stages.get(stage)
        if result is None:
            return "did not run"
        return f"raised {result['error']}" if "error" in result else "left it out"

    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed and check.judged]

    def verdicts(self, requested: list[str]) -> list[str]:
        """One line per requested stage: PASS, FAIL (with the first failing check) or, in a dry run, RAN."""
        lines = []
        for stage in requested:
            mine = [check for check in self.checks if check.stage == stage]
            failing = [check for check in mine if not check.passed and check.judged]
            ran = all(check.line.startswith("RAN") for check in mine)
            verdict = "FAIL" if failing else "RAN" if ran else (
                "RAN (dry run: targets not judged)" if self.dry_run else "PASS")
            seconds = self.stages.get(stage, {}).get("seconds")
            took = f" in {seconds:.0f} s" if seconds is not None else ""
            lines.append(f"  {LETTERS[stage]} {stage}: {verdict}{took}" + (f" -- {failing[0].line}" if failing else ""))
        return lines


class Deadline:
    """``passed()`` once ``seconds`` have gone by since it was made (``clock``: injectable for tests)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock, self.end = clock, clock() + seconds

    def passed(self) -> bool:
        return self.clock() > self.end

    def left(self) -> float:
        return self.end - self.clock()


# -- (0) the host work of every stage -----------------------------------------------------------------------
def measure_data(args: argparse.Namespace, work: Path, device: torch.device) -> tuple[dict[str, Any], ImageData, ImageStore]:
    """List the whole tree, read every training image's header, decode the store, read a checkpoint-sized file."""
    began = time.perf_counter()
    data = load_image_data("imagefolder", root=str(args.data_root), max_images=None,
                           holdout_size=0 if args.test_root else args.holdout, download=False, seed=0,
                           test_root=str(args.test_root) if args.test_root else None)
    walked = time.perf_counter()
    sizes = native_sizes(data.train)
    headed = time.perf_counter()
    layout = store_layout(sizes, resolution=32, store_side=None)
    store = build_store(data.train, sizes=sizes, layout=layout, device=device, num_workers=args.workers)
    _synchronize(device)
    stored = time.perf_counter()
    probe = work / "read_probe.pt"  # a checkpoint's worth of bytes, written then read back as a resume reads it
    atomic_save({"weights": torch.zeros(args.probe_megabytes * 2**18)}, probe)
    read_began = time.perf_counter()
    torch.load(probe, map_location="cpu", weights_only=True)
    read = time.perf_counter() - read_began
    size = probe.stat().st_size
    probe.unlink()
    files = len(data.train) + len(data.holdout)
    return ({"files": files, "images": len(data.train), "walk_s": walked - began, "headers_s": headed - walked,
             "store_s": stored - headed, "checkpoint_read_bytes_per_s": size / max(read, 1e-6), "workers": args.workers},
            data, store)


def _store_key(run: Run) -> tuple[Any, ...]:
    train = run.data.train
    return (str(run.cfg.data.root), tuple(getattr(train, "indices", range(len(train)))), run.pipeline.layout)


class Stores:
    """Decoded training stores by (root, images, layout): every run of this process on one data set shares one."""

    def __init__(self) -> None:
        self.held: dict[tuple[Any, ...], ImageStore] = {}

    def add(self, root: Path, data: ImageData, store: ImageStore) -> None:
        self.held[(str(root), tuple(getattr(data.train, "indices", range(len(data.train)))), store.layout)] = store

    def source(self, run: Run) -> BatchSource:
        key = _store_key(run)
        source = BatchSource(run, store=self.held.get(key))
        if source.device_batches is not None:
            self.held[key] = source.device_batches.store
        return source

    def pixels(self, run: Run) -> torch.Tensor | None:
        store = self.held.get(_store_key(run))
        return None if store is None else store.pixels


# -- (a) the plain-PyTorch reference step ---------------------------------------------------------------
def _mlp(in_dim: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for index in range(layers - 1):
        blocks += [nn.Linear(in_dim if index == 0 else hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*blocks, nn.Linear(hidden, out))


@dataclass(frozen=True)
class HeadSizes:
    """The run's heads (``ssl.*``): projector in -> hidden -> out over ``layers`` linears, predictor out -> hidden -> out."""

    proj_hidden: int
    proj_dim: int
    proj_layers: int
    pred_hidden: int

    @classmethod
    def of(cls, ssl: Any) -> HeadSizes:
        """From a run's ``ssl`` settings."""
        return cls(proj_hidden=ssl.proj_hidden_dim, proj_dim=ssl.proj_dim, proj_layers=ssl.proj_layers,
                   pred_hidden=ssl.pred_hidden_dim)


def reference_networks(heads: HeadSizes) -> tuple[nn.Module, nn.Module]:
    """(student: torchvision ResNet-18 with the CIFAR stem and the run's projector, the run's predictor)."""
    import torchvision

    encoder = torchvision.models.resnet18(num_classes=10)
    encoder.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem: 3x3 stride 1, no max-pool
    encoder.maxpool, encoder.fc = nn.Identity(), nn.Identity()
    student = nn.Sequential(encoder, _mlp(512, heads.proj_hidden, heads.proj_dim, heads.proj_layers))
    return student, _mlp(heads.proj_dim, heads.pred_hidden, heads.proj_dim, 2)


def reference_images_per_second(*, heads: HeadSizes, batch_size: int, steps: int, warmup: int, device: torch.device,
                                width: int, compile_networks: bool, deadline: Deadline) -> float:
    """A plain BYOL step on views already on the device: what a hand-written PyTorch loop reaches."""
    torch.manual_seed(0)
    student, predictor = reference_networks(heads)
    student, predictor = student.to(device, memory_format=torch.channels_last), predictor.to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    parameters = [*student.parameters(), *predictor.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=5e-4,
                                fused=device.type == "cuda" or None)
    if compile_networks:
        student.compile(), teacher.compile()
    views = [torch.randn(batch_size, 3, width, width, device=device).contiguous(memory_format=torch.channels_last)
             for _ in range(2)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            with torch.no_grad():
                targets = [teacher(v) for v in views]
            predictions = [predictor(student(v)) for v in views]
            loss = -(F.cosine_similarity(predictions[0], targets[1]).mean() + F.cosine_similarity(predictions[1], targets[0]).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 0.01)

    return _images_per_second(step, batch_size=batch_size, steps=steps, warmup=warmup, device=device, deadline=deadline)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(step: Callable[[], None], *, batch_size: int, steps: int, warmup: int, device: torch.device,
                       deadline: Deadline) -> float:
    """Warm up, then time up to ``steps`` steps; both stop early at ``deadline`` (two timed steps at least)."""
    for _ in range(warmup):
        step()
        if deadline.passed():
            break
    _synchronize(device)
    started, done = time.perf_counter(), 0
    while done < steps and (done < 2 or not deadline.passed()):
        step()
        done += 1
    _synchronize(device)
    return done * batch_size / (time.perf_counter() - started)


def _batches(source: BatchSource) -> Iterator[list[torch.Tensor]]:
    """The loop's batches, epoch after epoch, for as many steps as a measurement takes."""
    for epoch in itertools.count():
        yield from source.epoch(epoch)


def ours_images_per_second(run: Run, source: BatchSource, *, steps: int, warmup: int, deadline: Deadline) -> float:
    """Our loop's own batches (views made from the store) through ``train_step``, with its health checks."""
    batches = _batches(source)
    log_every = run.cfg.log_every_steps

    def step() -> None:
        terms = train_step(run, next(batches))
        run.step += 1
        if run.step % log_every == 0:
            check_health(run, terms)

    return _images_per_second(step, batch_size=run.cfg.batch_size, steps=steps, warmup=warmup, device=run.device,
                              deadline=deadline)


# -- (b) sandwich vs standalone --------------------------------------------------------------------------
def sandwich_ratio(run: Run, views: list[torch.Tensor], *, rounds: int, deadline: Deadline,
                   clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Median over interleaved rounds of (sandwich + gated step) / (the same networks' standalone steps).

    Like with like: a step of ours always pays the full-width teacher's forward and the EMA update, so N
    standalone steps pay them N times where the sandwich pays once. The teacher's forward and the EMA update
    are timed on their own in every round, and the standalone sum counts them once:
    ``sum(standalone) - (N - 1) * (teacher + EMA)``. Rounds stop at ``deadline`` (one at least).
    """
    cfg = run.cfg
    step = run.total_steps - 1  # the last stage: the sandwich samples down to the smallest width
    plan = plan_subnets(run.space, seed=cfg.seed, step=step, total_steps=run.total_steps, num_subnets=cfg.sandwich.num_subnets,
                        stage_min_widths=list(cfg.sandwich.stage_min_widths), stage_ends=list(cfg.sandwich.stage_ends),
                        sampling=cfg.sandwich.sampling, fixed_widths=list(cfg.sandwich.fixed_widths))
    gates = cfg.gates
    host, _ = plan_gated(run.space, plan, seed=cfg.seed, step=step, threshold=gates.threshold,
                         sample_widths=gates.sample_widths, sample_thresholds=gates.sample_thresholds)
    gate_flops = run.gate_flops

    def timed(work: Callable[[], Any]) -> float:
        _synchronize(run.device)
        started = clock()
        work()
        _synchronize(run.device)
        return clock() - started

    def network_step(step_plan: list[tuple[str, SubnetConfig]], *, gated: bool) -> float:
        run.step, run.gate_flops = step, gate_flops if gated else None
        return timed(lambda: train_step(run, views, plan=step_plan))

    def teacher() -> float:
        with run.autocast:
            return timed(lambda: run.method.teacher_targets(views, generator=step_generator(cfg.seed, step, stream=2)))

    def ema() -> float:
        return timed(lambda: run.method.update_teacher(cfg.ssl.base_momentum))

    def standalone() -> list[float]:
        return [network_step([("max", subnet)], gated=label == host) for label, subnet in plan]

    network_step(plan, gated=True), standalone(), teacher(), ema()  # warm-up: every shape once
    sandwiches, singles, teachers, emas = [], [], [], []
    for _ in range(rounds):
        sandwiches.append(network_step(plan, gated=True))
        singles.append(standalone())
        teachers.append(teacher())
        emas.append(ema())
        if deadline.passed():
            break
    run.gate_flops = gate_flops
    shared = [(len(plan) - 1) * (t + e) for t, e in zip(teachers, emas)]
    sums = [sum(times) - extra for times, extra in zip(singles, shared)]
    ratios = [a / b for a, b in zip(sandwiches, sums)]
    return {"networks": [label for label, _ in plan], "gated_host": host, "rounds": len(ratios),
            "sandwich_s": statistics.median(sandwiches),
            "standalone_s": {label: statistics.median(t[i] for t in singles) for i, (label, _) in enumerate(plan)},
            "teacher_s": statistics.median(teachers), "ema_s": statistics.median(emas),
            "standalone_sum_s": statistics.median(sums), "ratio": statistics.median(ratios)}


def loop_costs(run: Run, source: BatchSource, *, deadline: Deadline) -> dict[str, float]:
    """What (c)'s epochs cost beyond the bare step: the loop's whole step over its own batches (views made, health
    checks at log steps) and one checkpoint of this run, both timed here on the training device."""
    run.step = 0  # after (b)'s rounds at the last step: the loop's own schedule from its start
    images_per_s = ours_images_per_second(run, source, steps=20, warmup=2, deadline=deadline)
    began = time.perf_counter()
    save_checkpoint(run)
    return {"loop_step_s": run.cfg.batch_size / images_per_s, "checkpoint_s": time.perf_counter() - began,
            "checkpoint_bytes": (run.out_dir / "checkpoint.pt").stat().st_size}


def epochs_that_fit(train_seconds: float, *, steps_per_epoch: int, loop_step_s: float, checkpoint_s: float) -> int:
    """Whole epochs of the loop (its steps, views made, and the checkpoint each epoch ends with) in ``train_seconds``."""
    return max(1, int(train_seconds // (steps_per_epoch * loop_step_s + checkpoint_s)))


# -- (c) evaluation as lightly's CIFAR-10 benchmark ---------------------------------------------------------
def evaluation_data(run: Run, *, workers: int, bank: torch.Tensor | None = None) -> EvalData:
    """Every training image as the bank, the held-out (or test) split as queries, uint8 on the run's device
    (``bank``: the training store when this process has it already)."""
    data, resolution = run.data, run.cfg.data.resolution
    assert resolution is not None
    val_split = data.test if data.test is not None else data.holdout

    def pixels(dataset: Any) -> torch.Tensor:
        sizes = native_sizes(dataset)
        layout = store_layout(sizes, resolution=resolution, store_side=None)
        if layout.squeezed or layout.height != resolution:
            raise SystemExit(f"--data-root: images of {layout.height}x{layout.width} px; this benchmark scores "
                             f"{resolution}-px CIFAR-10 images as stored")
        return build_store(dataset, sizes=sizes, layout=layout, device=run.device, num_workers=workers).pixels

    def labels(dataset: Any) -> torch.Tensor:
        return torch.tensor([label_of(dataset, i) for i in range(len(dataset))], dtype=torch.long)

    bank = pixels(data.train) if bank is None else bank.to(run.device)
    order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:2000].to(bank.device)
    return EvalData(calibration=ImageBank(bank.index_select(0, order)), bank=ImageBank(bank), bank_labels=labels(data.train),
                    val=ImageBank(pixels(val_split)), val_labels=labels(val_split), num_classes=data.num_classes,
                    resolution=resolution, val_source="test" if data.test is not None else "holdout")


@torch.no_grad()
def _features(network: nn.Module, images: ImageBank, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    network.eval()
    return torch.cat([network(images[s : s + batch_size].to(device)).float() for s in range(0, len(images), batch_size)])


def knn_of(network: nn.Module, data: EvalData, device: torch.device) -> float:
    network = recalibrate_bn(network.to(device), data.calibration, len(data.calibration), batch_size=500, device=device)
    return knn_accuracy(_features(network, data.bank, device), data.bank_labels, _features(network, data.val, device),
                        data.val_labels, num_classes=data.num_classes, k=KNN_K, temperature=KNN_TEMPERATURE)


def raw_pixels_knn(data: EvalData, device: torch.device) -> float:
    bank = torch.cat([images.flatten(1).to(device) for images in data.bank.split(4096)])
    val = torch.cat([images.flatten(1).to(device) for images in data.val.split(4096)])
    return knn_accuracy(bank, data.bank_labels, val, data.val_labels, num_classes=data.num_classes, k=KNN_K,
                        temperature=KNN_TEMPERATURE)


def half_flops_threshold(network: SuperNet, cfg: SubnetConfig, data: EvalData, device: torch.device) -> tuple[float, float]:
    """The gate threshold (one for all blocks) at which the gated network keeps ~50 % of the dense FLOPs
    on the calibration images, by bisection; returns (threshold, effective FLOPs / dense FLOPs).

    Effective FLOPs as :func:`supernet.nn.flops.effective_flops` counts them: the network with every gated
    channel kept, less what each input's gates skipped; counted from shapes (no trace per threshold).
    """
    counter = ShapeFlopCounter(network, data.resolution)
    dense = counter(cfg)
    images = data.calibration[:512].to(device)
    low, high, ratio, threshold = 0.0, 1.0, 1.0, 0.5
    for _ in range(12):
        threshold = (low + high) / 2
        gated_cfg = cfg.with_gates({block.name: threshold for block in network.space.gated_blocks})
        gated = recalibrate_bn(network.extract(gated_cfg).to(device), data.calibration, len(data.calibration), batch_size=500,
                               device=device)
        gated.set_gate_mode("masked")
        with torch.no_grad():
            gated(images)
        saved = gated.gate_flops_saved()
        ratio = (counter(gated_cfg) - float(saved.double().mean())) / dense if saved is not None else 1.0
        if abs(ratio - 0.5) < 0.01:
            break
        low, high = (threshold, high) if ratio > 0.5 else (low, threshold)
    return threshold, ratio


def score_run(checkpoint: Path, run: Run, data: EvalData, *, deadline: Deadline) -> dict[str, Any]:
    """kNN rows (max, mid, min, gated) while ``deadline`` allows; ``skipped`` names the rows it left out."""
    from supernet.io.checkpoint import load_supernet

    device = run.device
    supernet, payload = load_supernet(checkpoint)
    supernet.to(device)
    seed, space = int(payload["config"]["seed"]), supernet.space
    widths = {"max": space.max_config(), "mid": space.uniform_config(0.5), "min": space.uniform_config(0.25)}
    rows: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    result: dict[str, Any] = {"raw_pixels": raw_pixels_knn(data, device)}
    for label, cfg in widths.items():
        if deadline.passed():
            skipped.append(label)
            continue
        twin = untrained_network(cfg, seed=seed, with_gates=supernet.with_gates, gate_options=supernet.gate_options)
        rows[label] = {"knn": knn_of(supernet.extract(cfg), data, device), "untrained_knn": knn_of(twin, data, device)}
    if supernet.with_gates and deadline.passed():
        skipped.append("gated")
    elif supernet.with_gates:
        threshold, ratio = half_flops_threshold(supernet, space.max_config(), data, device)
        gated_cfg = space.max_config().with_gates({block.name: threshold for block in space.gated_blocks})
        twin = untrained_network(gated_cfg, seed=seed, with_gates=True, gate_options=supernet.gate_options)
        rows["gated"] = {"knn": knn_of(supernet.extract(gated_cfg), data, device),
                         "untrained_knn": knn_of(twin, data, device), "threshold": threshold, "flops_ratio": ratio}
    return {"knn": rows, "skipped": skipped, **result, "k": KNN_K, "temperature": KNN_TEMPERATURE,
            "bank_images": len(data.bank), "val_images": len(data.val), "val_source": data.val_source}


# -- the command ------------------------------------------------------------------------------------------
def settings(args: argparse.Namespace, out_dir: Path, *extra: str) -> list[str]:
    """The gpu_10min recipe on the data at ``--data-root`` (10,000 held out unless a test split is given)."""
    held_out = ["data.holdout_size=0", f"data.test_root={args.test_root}"] if args.test_root else \
        [f"data.holdout_size={args.holdout}"]
    overrides = ["recipe=gpu_10min", "data=imagefolder", f"data.root={args.data_root}", *held_out, "data.pipeline=device",
                 f"data.num_workers={args.workers}", "progress=false", f"out_dir={out_dir}"]
    if args.dry_run:
        overrides += ["model=tiny", "batch_size=64", f"data.max_images={args.dry_images}", "device=cpu",
                      "ssl.proj_hidden_dim=256", "ssl.proj_dim=256", "ssl.pred_hidden_dim=256"]
    return overrides + list(extra)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="ImageFolder of the CIFAR-10 training JPEGs")
    parser.add_argument("--test-root", type=Path, default=None, help="ImageFolder of the official test split, if you have it")
    parser.add_argument("--holdout", type=int, default=10_000)
    parser.add_argument("--out", type=Path, required=True, help="bench_gpu.json goes here (and nothing big)")
    parser.add_argument("--work", type=Path, default=None,
                        help="the runs' folders and checkpoints (default: a fresh folder under /tmp, removed at the end)")
    parser.add_argument("--train-seconds", type=float, default=360.0)
    parser.add_argument("--reference-seconds", type=float, default=BOUNDS["reference"], help="(a)'s deadline")
    parser.add_argument("--sandwich-seconds", type=float, default=BOUNDS["sandwich"], help="(b)'s deadline")
    parser.add_argument("--score-seconds", type=float, default=BOUNDS["score"], help="(c)'s scoring deadline")
    parser.add_argument("--fidelity-seconds", type=float, default=BOUNDS["fidelity"], help="(d)'s timeout")
    parser.add_argument("--fidelity-configs", type=int, default=10)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: one per core, at most 8)")
    parser.add_argument("--probe-megabytes", type=int, default=64, help="(0): the file read back to time checkpoint loads")
    parser.add_argument("--compile", action="store_true", help="also time (a) with compile=true on both sides")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at toy sizes")
    parser.add_argument("--dry-images", type=int, default=1200)
    args = parser.parse_args(argv)
    args.workers = data_workers(args.workers)
    return args


def main(argv: list[str] | None = None) -> int:
    python_start = time.perf_counter() - PROCESS_STARTED
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU machine, or pass --dry-run to try every stage on the CPU")
        return 2
    if not args.data_root.is_dir():
        print(f"bench_gpu: --data-root {args.data_root} is not a folder; expected an ImageFolder of CIFAR-10 training JPEGs")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        print("bench_gpu: DRY RUN on the CPU at toy sizes (the tiny space against a full ResNet-18 reference, "
              "seconds of training): it shows every stage runs; its target checks are printed, not judged", flush=True)
        torch.set_num_threads(1)  # small networks on a shared CPU: OpenMP threads would spin-wait for each other
    device = torch.device("cpu" if args.dry_run else "cuda")
    began = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=device)
    cuda_start = time.perf_counter() - began
    machine = {**machine_record(torch.get_num_threads()), "device": device.type,
               "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "cuda": torch.version.cuda,
               "load_average": [round(x, 2) for x in os.getloadavg()]}
    report = Report(machine=machine, args={k: str(v) for k, v in vars(args).items()}, dry_run=args.dry_run)
    report.costs = {"python_start_s": python_start, "cuda_start_s": cuda_start}
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-")) if temporary else args.work
    work.mkdir(parents=True, exist_ok=True)
    scale = (3, 1, 2) if args.dry_run else (60, 15, 5)  # timed steps, warm-up steps, sandwich rounds
    started = time.perf_counter()
    stores = Stores()
    carried: dict[str, Any] = {}  # what a stage hands the next: (b)'s loop costs, (c)'s checkpoint

    def save() -> None:
        atomic_write_text(args.out / "bench_gpu.json", json.dumps(asdict(report), indent=2, default=str))

    def run_stage(name: str, body: Callable[[], dict[str, Any]]) -> None:
        """Run a stage; whatever it raises is recorded as its error (and its verdicts will be missing: FAIL)."""
        stage_began = time.perf_counter()
        try:
            result = body()
        except Exception as error:  # noqa: BLE001 - one stage failing must not lose the others' results
            message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            result = {"error": f"{type(error).__name__}: {message}"}
            print(f"{LETTERS[name]} {name} raised {result['error']}", flush=True)
        result["seconds"] = round(time.perf_counter() - stage_began, 1)
        report.stages[name] = result
        print(f"[{LETTERS[name]} {name} {result['seconds']:.0f} s, {time.perf_counter() - started:.0f} s in all] "
              f"{json.dumps({k: v for k, v in result.items() if k != 'seconds'}, default=str)[:400]}", flush=True)
        save()

    def data_stage() -> dict[str, Any]:
        costs, data, store = measure_data(args, work, device)
        stores.add(args.data_root, data, store)
        report.ran("data", "(0) measured", f"{costs['files']:,} files listed in {costs['walk_s']:.1f} s, "
                   f"{costs['images']:,} headers in {costs['headers_s']:.1f} s, decoded in {costs['store_s']:.1f} s")
        report.costs.update(costs, measured_on=f"{machine['cpu']}, {os.cpu_count()} cores, load average "
                                                f"{' '.join(str(x) for x in machine['load_average'])}")
        return costs

    def reference_stage() -> dict[str, Any]:
        run = build_run(load_train_settings(settings(args, work / "a", "sandwich.enabled=false", "gates.enabled=false",
                                                     "knn.enabled=false")))
        heads = HeadSizes.of(run.cfg.ssl)
        result: dict[str, Any] = {"batch_size": run.cfg.batch_size, "heads": asdict(heads),
                                  "dtype": "bfloat16" if run.device.type == "cuda" else "float32"}
        for compiled in ([False, True] if args.compile else [False]):
            suffix = "_compiled" if compiled else ""
            if compiled:
                run = build_run(load_train_settings(settings(args, work / "a_compiled", "sandwich.enabled=false",
                                                             "gates.enabled=false", "knn.enabled=false", "compile=true")))
            share = args.reference_seconds / (4 if args.compile else 2)
            reference = reference_images_per_second(
                heads=heads, batch_size=run.cfg.batch_size, steps=scale[0], warmup=scale[1], device=run.device,
                width=run.cfg.data.resolution or 32, compile_networks=compiled, deadline=Deadline(share),
            ) if not args.dry_run or not compiled else math.nan
            ours = ours_images_per_second(run, stores.source(run), steps=scale[0], warmup=scale[1], deadline=Deadline(share))
            result.update({f"reference_images_per_s{suffix}": reference, f"ours_images_per_s{suffix}": ours,
                           f"ratio{suffix}": ours / reference})
        report.check("reference", "(a) ratio", "(a) ours / plain PyTorch images per second", result["ratio"],
                     TARGETS["reference_ratio"])
        return result

    def sandwich_stage() -> dict[str, Any]:
        deadline = Deadline(args.sandwich_seconds)
        run = build_run(load_train_settings(settings(args, work / "b", "knn.enabled=false")))
        source = stores.source(run)
        views = next(source.epoch(0))
        result = sandwich_ratio(run, views, rounds=scale[2], deadline=Deadline(0.6 * deadline.left()))
        report.check("sandwich", "(b) ratio", "(b) sandwich + gated step / standalone steps (one teacher + EMA each side)",
                     result["ratio"], TARGETS["sandwich_ratio"], at_most=True)
        loop = loop_costs(run, source, deadline=Deadline(0.9 * deadline.left()))
        carried.update(loop, steps_per_epoch=run.steps_per_epoch)
        return {**result, **loop}

    def cifar_stage() -> dict[str, Any]:
        if "loop_step_s" not in carried:  # (b) did not run: measure the loop here
            probe = build_run(load_train_settings(settings(args, work / "c_probe", "knn.enabled=false")))
            carried.update(loop_costs(probe, stores.source(probe), deadline=Deadline(args.sandwich_seconds)),
                           steps_per_epoch=probe.steps_per_epoch)
        epochs = epochs_that_fit(args.train_seconds, steps_per_epoch=carried["steps_per_epoch"],
                                 loop_step_s=carried["loop_step_s"], checkpoint_s=carried["checkpoint_s"])
        print(f"(c) the loop's step {carried['loop_step_s'] * 1000:.0f} ms (views made), a checkpoint "
              f"{carried['checkpoint_s']:.1f} s, {carried['steps_per_epoch']} steps an epoch: {epochs} epochs in "
              f"{args.train_seconds:.0f} s", flush=True)
        train_began = time.perf_counter()
        train(load_train_settings(settings(args, work / "c", "knn.enabled=false", f"epochs={epochs}")))
        train_time = time.perf_counter() - train_began
        carried["checkpoint"] = work / "c" / "checkpoint.pt"
        scoring = Deadline(args.score_seconds)
        run = build_run(load_train_settings(settings(args, work / "c", "knn.enabled=false", f"epochs={epochs}", "resume=true")))
        data = evaluation_data(run, workers=args.workers, bank=stores.pixels(run))
        result = {"epochs": epochs, "train_seconds": round(train_time, 1), "train_seconds_planned": args.train_seconds,
                  **{k: v for k, v in carried.items() if k != "checkpoint"},
                  **score_run(carried["checkpoint"], run, data, deadline=scoring)}
        knn = result["knn"]
        for row in result["skipped"]:
            report.fail("cifar_run", f"(c) {row}", f"not scored within --score-seconds {args.score_seconds:g}")
        if "max" in knn:
            report.check("cifar_run", "(c) max", "(c) kNN at full width", knn["max"]["knn"], TARGETS["max_knn"])
        if "min" in knn:
            report.check("cifar_run", "(c) min", "(c) kNN at width 0.25", knn["min"]["knn"], TARGETS["min_knn"])
        if "gated" in knn and "max" in knn:
            report.check("cifar_run", "(c) gated", "(c) dense minus gated kNN", knn["max"]["knn"] - knn["gated"]["knn"],
                         TARGETS["gated_gap"], at_most=True)
        return result

    def fidelity_stage() -> dict[str, Any]:
        checkpoint = carried.get("checkpoint")
        if checkpoint is None or not Path(checkpoint).exists():
            raise RuntimeError("no checkpoint from (c) to score")
        # The search's own oracle (its 5,000-image bank, k = 20) on the checkpoint's held-out (or test) images.
        command = [sys.executable, str(REPOSITORY / "benchmarks" / "bench_fidelity.py"), "--checkpoint", str(checkpoint),
                   "--configs", str(args.fidelity_configs), "--pool", "200", "--device", device.type,
                   "--json", str(work / "fidelity.json"), *(["--threads", "1"] if args.dry_run else [])]
        try:
            finished = subprocess.run(command, capture_output=True, text=True, timeout=args.fidelity_seconds)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"bench_fidelity.py did not finish within --fidelity-seconds {args.fidelity_seconds:g}") from None
        print(finished.stdout[-3000:], finished.stderr[-2000:], flush=True)
        if not (work / "fidelity.json").exists():
            raise RuntimeError(f"bench_fidelity.py exit {finished.returncode}: "
                               f"{(finished.stderr.strip().splitlines() or ['no output'])[-1]}")
        result = json.loads((work / "fidelity.json").read_text())
        report.check("fidelity", "(d) tau", "(d) Kendall tau, kNN oracle vs linear probe", result["tau"],
                     TARGETS["fidelity_tau"])
        return result

    bodies = {"reference": reference_stage, "sandwich": sandwich_stage, "cifar_run": cifar_stage,
              "fidelity": fidelity_stage}
    try:
        run_stage("data", data_stage)
        for name in args.stages:
            run_stage(name, bodies[name])
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    requested = ["data", *args.stages]
    report.close(requested, gated=True)  # gpu_10min trains the gates
    save()
    failed = report.failed()
    print("verdicts:\n" + "\n".join(report.verdicts(requested)))
    print(f"bench_gpu: {sum(c.passed for c in report.checks)} checks passed, {len(failed)} failed"
          f"{' (dry run: targets not judged)' if args.dry_run else ''}, {time.perf_counter() - started:.0f} s; "
          f"{args.out / 'bench_gpu.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
