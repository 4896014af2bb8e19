"""Where a command runs: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda[:N]``; how many worker processes
the machine's cores allow."""

from __future__ import annotations

import os

import torch

from supernet.settings import SettingsError

__all__ = ["MAX_DEFAULT_WORKERS", "data_workers", "resolve_device", "usable_cores"]

MAX_DEFAULT_WORKERS = 8


def resolve_device(name: str, *, key: str = "device") -> torch.device:
    """The device ``name`` names; a one-line :class:`SettingsError` (naming ``key``) otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise SettingsError(f"{key}: {name!r} is not valid; expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"{key}: {name} was asked for but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as DataLoader counts them), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def data_workers(requested: int | None) -> int:
    """``data.num_workers``: as given, or (null) one per usable core shared by the processes torchrun started on
    this machine, at most :data:`MAX_DEFAULT_WORKERS`: never more than the cores, which DataLoader warns about."""
    if requested is not None:
        return requested
    per_process = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, per_process))
