"""One GPU benchmark that fits a ten-minute lease (issue 16): throughput, the sandwich's cost, a CIFAR-10
run of the full recipe scored as lightly scores SSL on CIFAR-10, and the oracle's fidelity on it.

Stages, each printed as it ends and written to ``--out``/bench_gpu.json (rewritten after every stage):

(a) ``reference``: images/s of a plain-PyTorch BYOL step (torchvision ResNet-18 with the CIFAR stem,
    US3L's 3-layer 2048 projector and 2048 predictor, EMA teacher, fused SGD, bf16 autocast,
    channels-last, views already on the GPU as random tensors) vs our full-width-only step on the
    same network, batch and precision with real CIFAR-10 JPEGs and real augmentation (the views made
    on the GPU from the uint8 store, ``data.pipeline=device``), timed over the loop's own batches,
    health checks included. Target: ours >= 0.8 x the reference. With ``--compile`` both sides
    also run with ``compile=true`` (the teacher and the static student compiled).
(b) ``sandwich``: a step of the full recipe (sandwich of 3 and the gated pass) vs the sum of the same
    networks' standalone steps (each alone, its own teacher pass, optimizer step and EMA update; the
    network that hosts the gated pass with its gated pass). Target: <= 1.15.
(c) ``cifar_run``: ``recipe=gpu_10min`` on the CIFAR-10 training JPEGs for as many epochs as fit in
    ``--train-seconds`` (from the step time measured in (b)), then kNN as lightly's CIFAR-10 benchmark
    scores it: k = 200, T = 0.1, every training image in the bank, on a labeled split training never
    saw (``--test-root``, the official test split as an ImageFolder, when given; else 10,000 images
    held out of the training JPEGs, trained on the rest). Max / mid (0.5) / min (0.25) width and the
    gated full network at the threshold that keeps ~50 % of its FLOPs, each beside the same network
    at its initial weights (BN recalibrated the same way), and raw pixels. Targets (issue 16): max >=
    80 %, min >= 70 %, gated within 2 points of dense.
(d) ``fidelity``: ``benchmarks/bench_fidelity.py`` on that checkpoint, 10 configs, the same held-out
    images, on the GPU: Kendall tau between the search's kNN oracle (its 5,000-image bank, k = 20) and
    a linear probe on the same features (target >= 0.8).

    python benchmarks/bench_gpu.py --data-root /data/cifar10/train --out results/gpu
    python benchmarks/bench_gpu.py --data-root /tmp/c10/train --out /tmp/dry --dry-run   # CPU, tiny, a minute

Without CUDA it exits with one line (``--dry-run`` runs every stage on the CPU at toy sizes instead:
the ``tiny`` space, 64-image batches, seconds of training; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # run from a checkout that was never installed (the GPU machine)

from search_spaces import SubnetConfig  # noqa: E402
from supernet.data.datasets import label_of  # noqa: E402
from supernet.data.store import build_store, native_sizes, store_layout  # noqa: E402
from supernet.evaluation import ImageBank, knn_accuracy, untrained_network  # noqa: E402
from supernet.evaluation.data import EvalData  # noqa: E402
from supernet.io.files import atomic_write_text  # noqa: E402
from supernet.io.provenance import machine_record  # noqa: E402
from supernet.nn.bn import recalibrate_bn  # noqa: E402
from supernet.nn.flops import ShapeFlopCounter  # noqa: E402
from supernet.nn.models import SuperNet  # noqa: E402
from supernet.train import load_train_settings  # noqa: E402
from supernet.training.loop import BatchSource, check_health, train, train_step  # noqa: E402
from supernet.training.sandwich import plan_gated, plan_subnets  # noqa: E402
from supernet.training.setup import Run, build_run  # noqa: E402

KNN_K, KNN_TEMPERATURE = 200, 0.1  # lightly's CIFAR-10 benchmark
TARGETS = {"reference_ratio": 0.8, "sandwich_ratio": 1.15, "max_knn": 0.80, "min_knn": 0.70, "gated_gap": 0.02,
           "fidelity_tau": 0.8}


@dataclass
class Report:
    machine: dict[str, Any]
    args: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    def check(self, name: str, value: float, target: float, *, at_most: bool = False) -> None:
        passed = value <= target if at_most else value >= target
        line = f"{'PASS' if passed else 'FAIL'}: {name} {value:.3f} (target {'<=' if at_most else '>='} {target})"
        self.checks.append(line)
        print(line, flush=True)


# -- (a) the plain-PyTorch reference step ---------------------------------------------------------------
def _mlp(in_dim: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for index in range(layers - 1):
        blocks += [nn.Linear(in_dim if index == 0 else hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*blocks, nn.Linear(hidden, out))


def reference_images_per_second(*, batch_size: int, steps: int, warmup: int, device: torch.device, width: int,
                                compile_networks: bool) -> float:
    """A plain BYOL step on views already on the device: what a hand-written PyTorch loop reaches."""
    import torchvision

    torch.manual_seed(0)
    encoder = torchvision.models.resnet18(num_classes=10)
    encoder.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem: 3x3 stride 1, no max-pool
    encoder.maxpool, encoder.fc = nn.Identity(), nn.Identity()
    student = nn.Sequential(encoder, _mlp(512, 2048, 2048, 3)).to(device, memory_format=torch.channels_last)
    predictor = _mlp(2048, 2048, 2048, 2).to(device)
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

    return _images_per_second(step, batch_size=batch_size, steps=steps, warmup=warmup, device=device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(step: Callable[[], None], *, batch_size: int, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def ours_images_per_second(run: Run, *, steps: int, warmup: int) -> float:
    """Our loop's own batches (views made from the store) through ``train_step``, with its health checks."""
    source = BatchSource(run)
    batches = source.epoch(0)
    log_every = run.cfg.log_every_steps

    def step() -> None:
        terms = train_step(run, next(batches))
        run.step += 1
        if run.step % log_every == 0:
            check_health(run, terms)

    return _images_per_second(step, batch_size=run.cfg.batch_size, steps=steps, warmup=warmup, device=run.device)


# -- (b) sandwich vs standalone --------------------------------------------------------------------------
def sandwich_ratio(run: Run, views: list[torch.Tensor], *, repeats: int) -> dict[str, Any]:
    """Median over interleaved rounds of (sandwich + gated step) / (sum of the standalone steps)."""
    cfg = run.cfg
    step = run.total_steps - 1  # the last stage: the sandwich samples down to the smallest width
    plan = plan_subnets(run.space, seed=cfg.seed, step=step, total_steps=run.total_steps, num_subnets=cfg.sandwich.num_subnets,
                        stage_min_widths=list(cfg.sandwich.stage_min_widths), stage_ends=list(cfg.sandwich.stage_ends),
                        sampling=cfg.sandwich.sampling, fixed_widths=list(cfg.sandwich.fixed_widths))
    gates = cfg.gates
    host, _ = plan_gated(run.space, plan, seed=cfg.seed, step=step, threshold=gates.threshold,
                         sample_widths=gates.sample_widths, sample_thresholds=gates.sample_thresholds)
    gate_flops = run.gate_flops

    def timed(step_plan: list[tuple[str, SubnetConfig]], *, gated: bool) -> float:
        run.step, run.gate_flops = step, gate_flops if gated else None
        _synchronize(run.device)
        started = time.perf_counter()
        train_step(run, views, plan=step_plan)
        _synchronize(run.device)
        return time.perf_counter() - started

    def standalone() -> float:
        return sum(timed([("max", subnet)], gated=label == host) for label, subnet in plan)

    timed(plan, gated=True), standalone()  # warm-up: every shape once
    sandwich_times, sums = [], []
    for _ in range(repeats):
        sandwich_times.append(timed(plan, gated=True))
        sums.append(standalone())
    run.gate_flops = gate_flops
    ratios = [a / b for a, b in zip(sandwich_times, sums)]
    return {"networks": [label for label, _ in plan], "gated_host": host, "sandwich_s": statistics.median(sandwich_times),
            "standalone_sum_s": statistics.median(sums), "ratio": statistics.median(ratios)}


# -- (c) evaluation as lightly's CIFAR-10 benchmark ---------------------------------------------------------
def evaluation_data(run: Run, *, workers: int) -> EvalData:
    """Every training image as the bank, the held-out (or test) split as queries, uint8 on the run's device."""
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

    bank = pixels(data.train)
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


def score_run(checkpoint: Path, run: Run, data: EvalData) -> dict[str, Any]:
    from supernet.io.checkpoint import load_supernet

    device = run.device
    supernet, payload = load_supernet(checkpoint)
    supernet.to(device)
    seed, space = int(payload["config"]["seed"]), supernet.space
    widths = {"max": space.max_config(), "mid": space.uniform_config(0.5), "min": space.uniform_config(0.25)}
    rows: dict[str, dict[str, float]] = {}
    for label, cfg in widths.items():
        twin = untrained_network(cfg, seed=seed, with_gates=supernet.with_gates, gate_options=supernet.gate_options)
        rows[label] = {"knn": knn_of(supernet.extract(cfg), data, device), "untrained_knn": knn_of(twin, data, device)}
    if supernet.with_gates:
        threshold, ratio = half_flops_threshold(supernet, space.max_config(), data, device)
        gated_cfg = space.max_config().with_gates({block.name: threshold for block in space.gated_blocks})
        twin = untrained_network(gated_cfg, seed=seed, with_gates=True, gate_options=supernet.gate_options)
        rows["gated"] = {"knn": knn_of(supernet.extract(gated_cfg), data, device),
                         "untrained_knn": knn_of(twin, data, device), "threshold": threshold, "flops_ratio": ratio}
    return {"knn": rows, "raw_pixels": raw_pixels_knn(data, device), "k": KNN_K, "temperature": KNN_TEMPERATURE,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="ImageFolder of the CIFAR-10 training JPEGs")
    parser.add_argument("--test-root", type=Path, default=None, help="ImageFolder of the official test split, if you have it")
    parser.add_argument("--holdout", type=int, default=10_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-seconds", type=float, default=360.0)
    parser.add_argument("--stages", nargs="+", default=["reference", "sandwich", "cifar_run", "fidelity"])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time (a) with compile=true on both sides")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at toy sizes")
    parser.add_argument("--dry-images", type=int, default=1200)
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU machine, or pass --dry-run to try every stage on the CPU")
        return 2
    if not args.data_root.is_dir():
        print(f"bench_gpu: --data-root {args.data_root} is not a folder; expected an ImageFolder of CIFAR-10 training JPEGs")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        print("bench_gpu: DRY RUN on the CPU at toy sizes (the tiny space against a full ResNet-18 reference, "
              "seconds of training): it shows every stage runs; its numbers and PASS/FAIL lines mean nothing", flush=True)
    machine = {**machine_record(torch.get_num_threads()), "device": "cpu" if args.dry_run else "cuda",
               "gpu": None if args.dry_run else torch.cuda.get_device_name(), "cuda": torch.version.cuda}
    report = Report(machine=machine, args={k: str(v) for k, v in vars(args).items()})
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=args.out))
    scale = (3, 1, 2) if args.dry_run else (60, 15, 5)  # timed steps, warm-up steps, sandwich rounds
    started = time.perf_counter()

    def save() -> None:
        atomic_write_text(args.out / "bench_gpu.json", json.dumps(asdict(report), indent=2))

    def stage_done(name: str, result: dict[str, Any], began: float) -> None:
        result["seconds"] = round(time.perf_counter() - began, 1)
        report.stages[name] = result
        print(f"[{name} {result['seconds']:.0f} s, {time.perf_counter() - started:.0f} s in all] "
              f"{json.dumps({k: v for k, v in result.items() if k != 'seconds'})[:400]}", flush=True)
        save()

    step_seconds = None
    if "reference" in args.stages:
        began = time.perf_counter()
        run = build_run(load_train_settings(settings(args, work / "a", "sandwich.enabled=false", "gates.enabled=false",
                                                     "knn.enabled=false")))
        result: dict[str, Any] = {"batch_size": run.cfg.batch_size, "dtype": "bfloat16" if run.device.type == "cuda" else "float32"}
        for compiled in ([False, True] if args.compile else [False]):
            suffix = "_compiled" if compiled else ""
            if compiled:
                run = build_run(load_train_settings(settings(args, work / "a_compiled", "sandwich.enabled=false",
                                                             "gates.enabled=false", "knn.enabled=false", "compile=true")))
            reference = reference_images_per_second(batch_size=run.cfg.batch_size, steps=scale[0], warmup=scale[1],
                                                    device=run.device, width=run.cfg.data.resolution or 32,
                                                    compile_networks=compiled) if not args.dry_run or not compiled else math.nan
            ours = ours_images_per_second(run, steps=scale[0], warmup=scale[1])
            result.update({f"reference_images_per_s{suffix}": reference, f"ours_images_per_s{suffix}": ours,
                           f"ratio{suffix}": ours / reference})
        report.check("(a) ours / plain PyTorch images per second", result["ratio"], TARGETS["reference_ratio"])
        stage_done("reference", result, began)
    if "sandwich" in args.stages:
        began = time.perf_counter()
        run = build_run(load_train_settings(settings(args, work / "b", "knn.enabled=false")))
        views = next(BatchSource(run).epoch(0))
        result = sandwich_ratio(run, views, repeats=scale[2])
        step_seconds = result["sandwich_s"]
        report.check("(b) sandwich + gated step / sum of standalone steps", result["ratio"], TARGETS["sandwich_ratio"],
                     at_most=True)
        stage_done("sandwich", result, began)
    checkpoint = work / "c" / "checkpoint.pt"
    if "cifar_run" in args.stages:
        began = time.perf_counter()
        probe = build_run(load_train_settings(settings(args, work / "c_probe", "knn.enabled=false")))
        if step_seconds is None:
            views = next(BatchSource(probe).epoch(0))
            step_seconds = sandwich_ratio(probe, views, repeats=1)["sandwich_s"]
        epoch_seconds = probe.steps_per_epoch * step_seconds
        epochs = max(1, int(args.train_seconds * 0.9 // epoch_seconds))  # 10 % for the epoch-end checkpoints
        print(f"(c) a full step {step_seconds * 1000:.0f} ms, {probe.steps_per_epoch} steps an epoch: {epochs} epochs "
              f"in {args.train_seconds:.0f} s", flush=True)
        del probe
        train_began = time.perf_counter()
        cfg = load_train_settings(settings(args, work / "c", "knn.enabled=false", f"epochs={epochs}"))
        train(cfg)
        train_time = time.perf_counter() - train_began
        run = build_run(load_train_settings(settings(args, work / "c", "knn.enabled=false", f"epochs={epochs}", "resume=true")))
        data = evaluation_data(run, workers=args.workers)
        result = {"epochs": epochs, "train_seconds": round(train_time, 1), "step_seconds_estimate": step_seconds,
                  **score_run(checkpoint, run, data)}
        knn = result["knn"]
        report.check("(c) kNN at full width", knn["max"]["knn"], TARGETS["max_knn"])
        report.check("(c) kNN at width 0.25", knn["min"]["knn"], TARGETS["min_knn"])
        if "gated" in knn:
            report.check("(c) dense minus gated kNN", knn["max"]["knn"] - knn["gated"]["knn"], TARGETS["gated_gap"], at_most=True)
        stage_done("cifar_run", result, began)
    if "fidelity" in args.stages and checkpoint.exists():
        began = time.perf_counter()
        # The search's own oracle (its 5,000-image bank, k = 20) on the checkpoint's held-out (or test) images.
        command = [sys.executable, str(REPOSITORY / "benchmarks" / "bench_fidelity.py"), "--checkpoint", str(checkpoint),
                   "--configs", "10", "--pool", "200", "--device", "cpu" if args.dry_run else "cuda",
                   "--json", str(work / "fidelity.json")]
        finished = subprocess.run(command, capture_output=True, text=True)
        print(finished.stdout[-3000:], finished.stderr[-2000:], flush=True)
        result = json.loads((work / "fidelity.json").read_text()) if (work / "fidelity.json").exists() else \
            {"error": finished.stderr.strip().splitlines()[-1:] or ["no output"]}
        if "tau" in result:
            report.check("(d) Kendall tau, kNN oracle vs linear probe", result["tau"], TARGETS["fidelity_tau"])
        stage_done("fidelity", result, began)
    print(f"bench_gpu: {sum(c.startswith('PASS') for c in report.checks)} passed, "
          f"{sum(c.startswith('FAIL') for c in report.checks)} failed, {time.perf_counter() - started:.0f} s; "
          f"{args.out / 'bench_gpu.json'}")
    return 0 if all(c.startswith("PASS") for c in report.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
