"""``python -m supernet.summary SPACE``: size of a search space and the cost of a few sub-networks.

FLOPs are fvcore's (one multiply-add = one flop), of the extracted static sub-network (gates off).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from search_spaces import SearchSpace, SubnetConfig, get_space, list_spaces
from supernet.cli import ArgumentParser, command
from supernet.nn.flops import FLOP_CONVENTION, count_flops, count_params
from supernet.nn.models import build_supernet
from supernet.settings import SettingsError

UNIFORM_MULTIPLIERS = (0.25, 0.5, 0.75, 1.0)


def summarize(space: SearchSpace, resolution: int) -> dict[str, Any]:
    """Space size, per-decision width choices, and FLOPs/params of min, max and uniform widths."""
    network = build_supernet(space, with_gates=False)

    def cost(cfg: SubnetConfig) -> dict[str, int]:
        subnet = network.extract(cfg)
        return {"flops": count_flops(subnet, resolution), "params": count_params(subnet)}

    gated_network = build_supernet(space, with_gates=True)
    return {
        "space": space.name,
        "family": space.family,
        "resolution": resolution,
        "flop_convention": FLOP_CONVENTION,
        "num_subnets": space.num_subnets,
        "num_layers": len(space.layers),
        "decisions": {key: {"layers": list(layers), "width_choices": list(space.layer(key).width_choices)}
                      for key, layers in space.decisions.items()},
        "gated_blocks": [block.name for block in space.gated_blocks],
        "gate_threshold_range": list(space.gate_threshold_range),
        "gate_params": count_params(gated_network) - count_params(network),
        "max": cost(space.max_config()),
        "min": cost(space.min_config()),
        "uniform": {str(m): cost(space.uniform_config(m)) for m in UNIFORM_MULTIPLIERS},
    }


def _format(summary: dict[str, Any]) -> str:
    lines = [
        f"search space {summary['space']} ({summary['family']}), {summary['resolution']} px",
        f"  sub-networks: {summary['num_subnets']:.4g} width configs over {summary['num_layers']} layers "
        f"({len(summary['decisions'])} independent decisions); gates on {len(summary['gated_blocks'])} blocks, "
        f"thresholds in {summary['gate_threshold_range']} ({summary['gate_params']:,} gate parameters)",
        "  width choices:",
    ]
    for key, decision in summary["decisions"].items():
        tied = f"  (tied: {', '.join(decision['layers'])})" if len(decision["layers"]) > 1 else ""
        lines.append(f"    {key:<28} {decision['width_choices']}{tied}")
    lines.append(f"  cost ({summary['flop_convention']}):")
    rows = [("max", summary["max"]), ("min", summary["min"])]
    rows += [(f"uniform x{m}", c) for m, c in summary["uniform"].items()]
    for label, c in rows:
        lines.append(f"    {label:<14} {c['flops'] / 1e6:>10.2f} MFLOPs {c['params'] / 1e6:>9.3f} M params")
    return "\n".join(lines)


@command()
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m supernet.summary",
        description=f"Size and cost of a search space. {FLOP_CONVENTION}.",
    )
    parser.add_argument("space", help=f"one of: {', '.join(list_spaces())}")
    parser.add_argument("--resolution", type=int, default=None, help="input size in pixels (default: the space's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        space = get_space(args.space)
    except KeyError as error:
        raise SettingsError(f"space: {error.args[0]}") from None
    resolution = args.resolution or space.default_resolution
    if resolution < 8:
        raise SettingsError(f"--resolution: {resolution} is too small; expected at least 8 pixels")
    summary = summarize(space, resolution)
    print(json.dumps(summary) if args.json else _format(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
