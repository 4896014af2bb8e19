"""Where a command runs: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda[:N]``."""

from __future__ import annotations

import torch

from supernet.settings import SettingsError

__all__ = ["resolve_device"]


def resolve_device(name: str, *, key: str = "device") -> torch.device:
    """The device ``name`` names; a one-line :class:`SettingsError` (naming ``key``) otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise SettingsError(f"{key}: {name!r} is not valid; expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"{key}: {name} was asked for but no CUDA device is available; use cpu or auto")
    return torch.device(name)
