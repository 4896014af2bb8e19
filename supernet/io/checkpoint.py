"""Supernet checkpoints: safe loads (``weights_only=True``), the trained encoder, the newest one.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` reads it without unpickling code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from search_spaces import UserError, first_line
from supernet.io.files import previous_path

if TYPE_CHECKING:
    from supernet.nn.models import SuperNet

CHECKPOINT_FORMAT = "slimnas-supernet/1"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or not a supernet checkpoint of this tool."""


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a supernet checkpoint; raises :class:`CheckpointError` with one clear line."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if previous_path(path).is_file():
            hint = f" (the previous checkpoint {previous_path(path)} is intact: rename it to {path.name} to resume from it)"
        raise CheckpointError(
            f"checkpoint: {path} does not exist; expected a {CHECKPOINT_NAME} written by supernet.train{hint}"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, corrupt, or carrying pickled code: all refused the same way
        reason = first_line(error, limit=160)
        hint = "expected a file written by supernet.train"
        if previous_path(path).is_file():
            hint = f"the previous checkpoint {previous_path(path)} is intact: rename it to {path.name} to resume from it"
        raise CheckpointError(f"checkpoint: {path} is not a readable supernet checkpoint ({reason}); {hint}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return payload


def find_latest_checkpoint(root: str | Path = ".") -> Path | None:
    """The most recently written ``checkpoint.pt`` below ``root`` (None if there is none)."""
    candidates = [p for p in Path(root).rglob(CHECKPOINT_NAME) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def load_supernet(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[SuperNet, dict[str, Any]]:
    """The trained supernet (student encoder) of a training checkpoint, and the checkpoint itself; for a run
    of one sub-network (``model.subnet``), the supernet of that sub-network's space alone."""
    from search_spaces import ConfigError, SubnetConfig, get_space, subnet_space
    from supernet.nn.gates import GateOptions
    from supernet.nn.models import build_supernet

    payload = load_checkpoint(path, map_location=map_location)
    try:  # a stand-alone sub-network (model.subnet) stores its widths: its space's name cannot rebuild it
        space = (get_space(str(payload.get("space"))) if payload.get("subnet") is None
                 else subnet_space(SubnetConfig.from_dict(payload["subnet"])))
    except KeyError as error:
        raise CheckpointError(f"checkpoint: {path} names {error.args[0]}") from None
    except ConfigError as error:
        raise CheckpointError(f"checkpoint: {path} holds a sub-network that does not fit its space ({error})") from None
    network = build_supernet(space, with_gates=bool(payload.get("with_gates", True)),
                             gate_options=GateOptions(**payload.get("gate_options", {})))
    prefix = "encoder."
    state = {name[len(prefix):]: tensor for name, tensor in payload.get("method", {}).items() if name.startswith(prefix)}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint: {path} does not hold a {space.name} supernet ({first_line(error, limit=160)}); "
            "expected a checkpoint written by supernet.train for this search space"
        ) from None
    return network, payload
