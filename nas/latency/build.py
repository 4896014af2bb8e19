"""Building a latency table on the machine it describes (``python -m nas.latency_table``).

Every entry of :func:`nas.latency.entries.plan_entries` is timed alone, and 15 whole networks (the 7
uniform widths from min to max and 8 seeded random configs) are timed at evenly spaced points of the
build so that the overhead (:class:`nas.latency.table.Overhead`) can be fitted; a sample of entries is
timed again at the end to see whether the machine stayed steady.
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nas.latency.entries import (
    SECTIONS,
    Entry,
    build_entry_module,
    input_sizes,
    plan_entries,
)
from nas.latency.runtimes import gate_mode
from nas.latency.table import FORMAT, FORMAT_VERSION, LatencyTable, LatencyTableError, Overhead
from nas.latency.timers import make_timer
from search_spaces import SearchSpace, SubnetConfig, get_space
from supernet.io.provenance import git_commit, package_version
from supernet.nn.models import build_supernet

__all__ = ["KEPT_WIDTHS", "OVERHEAD_MULTIPLIERS", "OVERHEAD_RANDOM_CONFIGS", "RECHECK_ENTRIES", "UNSTEADY", "build_table",
           "overhead_networks"]

OVERHEAD_MULTIPLIERS = tuple(0.25 + i / 8 for i in range(7))  # uniform widths the overhead is measured at: min to max
OVERHEAD_RANDOM_CONFIGS = 8  # and this many seeded random configs
RECHECK_ENTRIES = 32  # entries timed again at the end of a build, to see whether the machine stayed steady
UNSTEADY = 0.05  # a median change of the rechecked entries above this is reported
KEPT_WIDTHS = ("gathered entries at kept = every multiple of 8 up to the gated layer's maximum; "
               "a kept count between two is looked up at the next one up")


def build_table(space_name: str, *, resolution: int, device: str, batch_size: int, threads: int | None, warmup: int,
                repeats: int, runtime: str = "auto", dtype: str = "auto", progress: bool = False,
                seed: int = 0) -> dict[str, Any]:
    """Time every entry of the space and the whole networks the overhead is fitted on, on this machine's
    ``device`` (cpu or cuda), ``runtime`` and ``dtype`` (``auto``: the search's defaults there,
    :func:`nas.latency.runtimes.resolve_runtime`).

    The whole networks are timed at evenly spaced points of the build, in random order, so a slow drift of
    the machine's speed reaches them as it reaches the entries; at the end a sample of entries is timed again
    (``recheck``): a large change says the machine was not quiet. Returns the table as a JSON-able dict.
    """
    try:
        space = get_space(space_name)
    except KeyError as error:
        raise LatencyTableError(f"--space: {error.args[0]}") from None
    timer = make_timer(device, runtime=runtime, dtype=dtype, warmup=warmup, repeats=repeats, threads=threads)
    gathered = gate_mode(timer.runtime, batch_size) == "gathered"
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    sizes = input_sizes(space, resolution)
    plan = plan_entries(space, batch_size=batch_size, gathered=gathered)
    networks = overhead_networks(space, resolution, rng)
    supernet = build_supernet(space, with_gates=False).eval()
    images = torch.randn(batch_size, 3, resolution, resolution)
    due = {int(i * len(plan) / len(networks)): i for i in rng.permutation(len(networks))}
    network_seconds: dict[int, float] = {}

    def time_network(index: int) -> None:
        network_seconds[index] = timer(supernet.extract(networks[index][1]).eval(), images)

    def time_entry(entry: Entry) -> float:
        module, shape = build_entry_module(space, entry, sizes, batch_size=batch_size, resolution=resolution)
        return timer(module, torch.randn(shape))

    entries: dict[str, dict[str, dict[str, float]]] = {section: {} for section in SECTIONS}
    for position, entry in enumerate(tqdm(plan, desc=f"{space.name} table", disable=not progress, file=sys.stdout)):
        if position in due:
            time_network(due[position])
        entries[entry.section].setdefault(entry.module, {})[entry.key] = time_entry(entry)
    for index in range(len(networks)):
        if index not in network_seconds:  # more networks than entries
            time_network(index)
    sample = [plan[i] for i in rng.choice(len(plan), size=min(RECHECK_ENTRIES, len(plan)), replace=False)]
    changes = [abs(time_entry(e) - entries[e.section][e.module][e.key]) / max(entries[e.section][e.module][e.key], 1e-9)
               for e in sample]
    partial = LatencyTable(space=space, resolution=resolution, batch_size=batch_size, runtime=timer.runtime,
                           dtype=timer.dtype, gathered=gathered, device=timer.device, repeats=repeats,
                           versions=timer.versions, entries=entries, overhead=Overhead())
    overhead = Overhead.fit([{"config": label, "network_seconds": network_seconds[index],
                              "entries_seconds": partial.predict(cfg)} for index, (label, cfg) in enumerate(networks)])
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "space": space.name, "resolution": resolution,
        "batch_size": batch_size, "runtime": timer.runtime, "dtype": timer.dtype, "gathered": gathered,
        "device": timer.device, "threads": timer.threads, "warmup": warmup, "repeats": repeats, "statistic": "median",
        "units": "seconds",
        "versions": {"slimnas": package_version(), "git_commit": git_commit(), **timer.versions},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 1),
        "kept_widths": KEPT_WIDTHS if gathered else None,
        "recheck": {"entries": len(changes), "median_relative_change": statistics.median(changes)},
        "overhead": overhead.to_dict(),
        "entries": entries,
    }


def overhead_networks(space: SearchSpace, resolution: int, rng: np.random.Generator) -> list[tuple[str, SubnetConfig]]:
    """The static networks the overhead is fitted on: every uniform width from min to max, and random ones."""
    configs = [(f"uniform {m:g}", space.uniform_config(m)) for m in OVERHEAD_MULTIPLIERS]
    configs += [(f"random {i}", space.sample(rng)) for i in range(OVERHEAD_RANDOM_CONFIGS)]
    return [(label, SubnetConfig(cfg.space, dict(cfg.channels), None, resolution)) for label, cfg in configs]
