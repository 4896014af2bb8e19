"""``python -m supernet.route --checkpoint runs/train/checkpoint.pt``: give a trained supernet its width routers.

The routers' stage of ``supernet.train`` (``routing.enabled=true``; DS-Net's stage II, without labels:
:mod:`supernet.training.routing`) run on a supernet that was trained without it: the run is continued from
its checkpoint with the settings it was trained with (data, views, method), ``routing.*`` from the command
line, and the checkpoint is rewritten (atomically, the previous one kept) with the routers in it. The
supernet's weights and statistics are not changed (a checkpoint written before its training ended finishes
that training first, and says so).
"""

from __future__ import annotations

import sys
from pathlib import Path

from supernet.cli import ArgumentParser, command
from supernet.io.checkpoint import CheckpointError, load_checkpoint
from supernet.settings import SettingsError, settings_from_saved
from supernet.training import TrainConfig, train


def routing_settings(checkpoint: Path, overrides: list[str]) -> TrainConfig:
    """The checkpoint's training settings, resumed in place, with routing on and ``routing.*`` overrides."""
    foreign = [item for item in overrides if not item.startswith("routing.")]
    if foreign:
        raise SettingsError(f"override {foreign[0]!r}: only routing.* settings can change here (the supernet "
                            "is trained already); e.g. routing.epochs=2 routing.levels=[0.25,0.5,1.0]")
    payload = load_checkpoint(checkpoint)
    if payload["step"] < payload["total_steps"]:
        print(f"{checkpoint}: the supernet's training stopped at step {payload['step']}/{payload['total_steps']}; "
              "it finishes first, then the routers train", file=sys.stderr)
    return settings_from_saved(payload["config"], [*overrides, "routing.enabled=true", "resume=true",
                                                   f"out_dir={checkpoint.parent}"], TrainConfig)


@command(interrupted="interrupted: the checkpoint is unchanged; run the command again")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m supernet.route", description=__doc__.split("\n\n")[0],
                            epilog="Extra key=value arguments set routing.* (levels, hidden_channels, epochs, lr).")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint.pt written by supernet.train")
    parser.add_argument("overrides", nargs="*", metavar="routing.key=value")
    args = parser.parse_intermixed_args(argv)
    if args.checkpoint.name != "checkpoint.pt":
        raise CheckpointError(f"--checkpoint: {args.checkpoint} is not a run's checkpoint.pt; pass "
                              "<run directory>/checkpoint.pt")
    out_dir = train(routing_settings(args.checkpoint, args.overrides))
    print(f"done: {out_dir}/checkpoint.pt holds the routers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
