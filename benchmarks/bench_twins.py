"""Stand-alone twins (issue 23): train each of N given sub-networks from scratch, alone, with the supernet's
method and data, for the same epochs, one after another, so that ``bench_fidelity.py --twins`` can ask
whether shared weights mislead the oracle's order.

Each config (a SubnetConfig JSON, or a record holding one under ``"config"``: nas.search's best.json,
``bench_fidelity.py --write-configs``' files) trains as ``python -m supernet.train model.subnet=<file>
sandwich.enabled=false gates.enabled=false`` would (:func:`supernet.training.setup.training_space`),
into ``--out/<file stem>``. ``--like CHECKPOINT`` starts from the settings that checkpoint's supernet
was trained with (same method, views, data, batch, epochs, seed); ``key=value`` overrides follow (e.g.
``epochs=20``: the same for every twin). Resumable: a finished run is skipped, an interrupted one
continues from its checkpoint. Writes ``--out/twins.json``.

    python benchmarks/bench_fidelity.py --checkpoint runs/c10/checkpoint.pt --write-configs /tmp/fidelity/configs ...
    python benchmarks/bench_twins.py --configs /tmp/fidelity/configs --like runs/c10/checkpoint.pt \\
        --out /tmp/twins --limit 6 epochs=20
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from search_spaces import UserError
from supernet.cli import command
from supernet.io.checkpoint import CHECKPOINT_NAME, load_checkpoint
from supernet.io.files import atomic_write_text
from supernet.settings import settings_from_saved
from supernet.train import load_train_settings
from supernet.training import TrainConfig, train
from supernet.training.setup import load_subnet

# what makes a run the twin of one sub-network rather than a supernet; overrides on the command line follow
TWIN_SETTINGS = ["sandwich.enabled=false", "gates.enabled=false", "routing.enabled=false", "knn.enabled=false",
                 "resume=true", "progress=false"]


@dataclass
class TwinRun:
    name: str
    config_file: str
    out_dir: str
    status: str  # trained | resumed | finished before
    steps: int
    total_steps: int
    seconds: float  # of this invocation's training


@dataclass
class TwinsReport:
    like: str | None
    overrides: list[str]
    epochs: int
    runs: list[TwinRun] = field(default_factory=list)


def config_files(paths: list[Path]) -> list[Path]:
    """The JSON files named, and those in the folders named (sorted), each once."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UserError(f"--configs: {path} does not exist; expected config JSON files or folders of them")
        found = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not found:
            raise UserError(f"--configs: {path} holds no .json config files")
        files.extend(found)
    for path in files:  # every file read before anything trains
        load_subnet(path)
    return list(dict.fromkeys(files))


def twin_settings(config_file: Path, out_dir: Path, *, like: Path | None, overrides: list[str]) -> TrainConfig:
    """The training settings of one twin: the supernet's (``like``) or configs/train.yaml's, then the twin's own."""
    twin = [*TWIN_SETTINGS, f"model.subnet={config_file}", f"out_dir={out_dir}"]
    if like is None:
        return load_train_settings([*twin, *overrides])
    saved = load_checkpoint(like)["config"]
    saved = {**saved, "model": {**saved["model"], "space": load_subnet(config_file).space}}
    return settings_from_saved(saved, [*twin, *overrides], TrainConfig)


def finished(out_dir: Path, cfg: TrainConfig) -> tuple[int, int] | None:
    """(steps, total steps) of a run that trained as far as ``cfg`` asks (its end, or ``max_steps``), else None."""
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    payload = load_checkpoint(path)
    step, total = int(payload["step"]), int(payload["total_steps"])
    return (step, total) if step >= min(cfg.max_steps or total, total) else None


def train_twins(files: list[Path], out: Path, *, like: Path | None, overrides: list[str]) -> TwinsReport:
    """Train (or resume, or skip) the twin of each config file, in order; the report is rewritten after each."""
    names = [path.stem for path in files]
    if len(set(names)) != len(names):
        names = [f"{index:02d}_{name}" for index, name in enumerate(names)]
    settings = [twin_settings(path, out / name, like=like, overrides=overrides) for path, name in zip(files, names)]
    report = TwinsReport(str(like) if like else None, overrides, settings[0].epochs)
    for path, name, cfg in zip(files, names, settings):
        run_dir = out / name
        done = finished(run_dir, cfg)
        started = time.perf_counter()
        status = "finished before"
        if done is None:
            status = "resumed" if (run_dir / CHECKPOINT_NAME).is_file() else "trained"
            print(f"{name}: training ({status}) into {run_dir}", flush=True)
            train(cfg)
            done = finished(run_dir, cfg)
            assert done is not None, f"{run_dir}: training returned before its last step"
        report.runs.append(TwinRun(name, str(path), str(run_dir), status, done[0], done[1], time.perf_counter() - started))
        print(f"{name}: {status}, step {done[0]}/{done[1]}, {report.runs[-1].seconds:.0f} s", flush=True)
        atomic_write_text(out / "twins.json", json.dumps(asdict(report), indent=2))
    return report


@command(interrupted="interrupted: run the same command again to continue (finished twins are kept)")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=Path, nargs="+", required=True, help="config JSON files or folders of them")
    parser.add_argument("--out", type=Path, required=True, help="one run directory per config below this")
    parser.add_argument("--like", type=Path, default=None, help="a supernet checkpoint: train as it was trained")
    parser.add_argument("--limit", type=int, default=None, help="train only the first N configs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training settings for every twin")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = config_files(args.configs)[: args.limit]
    report = train_twins(files, args.out, like=args.like, overrides=args.overrides)
    print(f"{len(report.runs)} twins, {report.epochs} epochs each: {args.out / 'twins.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
