"""Where a result came from: package version, git commit, torch and Python versions."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


@lru_cache(maxsize=1)
def package_version() -> str:
    try:
        return metadata.version("slimnas")
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this code runs from (None outside a git checkout)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def provenance() -> dict[str, Any]:
    return {"package": "slimnas", "version": package_version(), "git_commit": git_commit(),
            "torch": torch.__version__, "python": platform.python_version()}


def cpu_name() -> str:
    """The processor's model name where the OS tells it, else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record(threads: int) -> dict[str, Any]:
    """What a CPU measurement ran on (DESIGN.md §4, Cost): device, threads, versions, commit."""
    return {"device": "cpu", "cpu": cpu_name(), "threads": threads, **provenance()}
