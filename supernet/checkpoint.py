"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and finding the newest one.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` reads it without unpickling code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from supernet.models import SuperNet

CHECKPOINT_FORMAT = "slimnas-supernet/1"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not a supernet checkpoint of this tool."""


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (mkstemp's is owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def previous_path(path: str | Path) -> Path:
    """Where :func:`atomic_save` keeps the checkpoint it replaced (``checkpoint.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def atomic_save(payload: dict[str, Any], path: str | Path, *, keep_previous: bool = False) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the complete new one.

    The new file is written and fsynced beside the target, then renamed over it. With
    ``keep_previous`` the file it replaces is first renamed to :func:`previous_path`, so one good
    checkpoint survives even if the newest is later damaged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, new_file_mode())
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "expected a file written by supernet.train"
        if previous_path(path).is_file():
            hint = f"the previous checkpoint {previous_path(path)} is intact: rename it to {path.name} to resume from it"
        raise CheckpointError(f"checkpoint: {path} is not a readable supernet checkpoint ({reason[:160]}); {hint}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return payload


def find_latest_checkpoint(root: str | Path = ".") -> Path | None:
    """The most recently written ``checkpoint.pt`` below ``root`` (None if there is none)."""
    candidates = [p for p in Path(root).rglob(CHECKPOINT_NAME) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def load_supernet(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[SuperNet, dict[str, Any]]:
    """The trained supernet (student encoder) of a training checkpoint, and the checkpoint itself."""
    from search_spaces import get_space
    from supernet.models import build_supernet

    payload = load_checkpoint(path, map_location=map_location)
    try:
        space = get_space(str(payload.get("space")))
    except KeyError as error:
        raise CheckpointError(f"checkpoint: {path} names {error.args[0]}") from None
    network = build_supernet(space, with_gates=bool(payload.get("with_gates", True)))
    prefix = "encoder."
    state = {name[len(prefix):]: tensor for name, tensor in payload.get("method", {}).items() if name.startswith(prefix)}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint: {path} does not hold a {space.name} supernet ({first[:160]}); "
            "expected a checkpoint written by supernet.train for this search space"
        ) from None
    return network, payload
