"""Pareto front of accuracy (up) vs cost (down), and the search's output files.

Outputs (atomic writes): ``pareto.json`` and ``pareto.csv`` (front members with config, accuracy,
FLOPs, effective FLOPs, parameters, latency with device, runtime, precision and batch size, at batch 1
too, and for gated configs the same widths without gates: :func:`gate_speed_note`), ``pareto.png``
(every trial, the front, the budget line when it falls among them), ``best.json`` (the feasible config the
search's score ranks first, ``oracle.score``: :func:`best_record`).

Candidates are static, channel-gated or width-routed (:func:`kind_of`); every file says which, and
``pareto.png`` marks each kind and draws the kNN of raw pixels and of the untrained full network
(``meta["references"]``) as reference lines, so a point below them shows as such.

Latency at the batch you serve: every scored candidate is timed at batch 1 and at
``latency.batch_size``, and a latency objective has a front at each (:func:`fronts_by_batch`):
``pareto.json`` lists both, ``pareto.csv`` says at which batches a row is on the front, and
``pareto.png`` draws one panel per batch (the budget applies at ``latency.batch_size``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nas.budget import format_cost
from supernet.io.files import atomic_write, atomic_write_text
from supernet.nn.flops import FLOP_CONVENTION


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, cost): ``a`` is no worse in both and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def objective_value(record: dict[str, Any]) -> float:
    """What the search maximises for a record: the oracle's score (``oracle.score``) where recorded, else its kNN
    top-1 (records of studies from before the setting)."""
    score = record.get("score")
    return float(record["accuracy"] if score is None else score)


def score_label(records: Sequence[dict[str, Any]]) -> str:
    """The y axis of the fronts: the score kind the records were ranked by."""
    kind = next((r.get("score_kind") for r in records if r.get("score_kind")), None)
    return "kNN top-1 (%)" if kind in (None, "knn_top1") else f"oracle score: {kind}"


def pareto_front(records: Sequence[dict[str, Any]], objective: str, *, batch: str | None = None) -> list[dict[str, Any]]:
    """Feasible, evaluated records that no other such record dominates (by :func:`objective_value` and cost), by
    ascending cost.

    ``batch``: with a latency objective, the latency at that batch (``latency_by_batch``) is the cost; records
    not timed at it are left out. None: the objective's own latency.
    """
    points = [(r, (objective_value(r), cost_of(r, objective, batch=batch))) for r in records
              if is_candidate(r) and (batch is None or latency_at(r, batch) is not None)]
    front = [r for r, p in points if not any(dominates(q, p) for _, q in points)]
    unique: dict[str, dict[str, Any]] = {}
    for record in sorted(front, key=lambda r: (cost_of(r, objective, batch=batch), -objective_value(r), r["trial"])):
        unique.setdefault(json.dumps(record["config"], sort_keys=True), record)  # a config found twice counts once
    return list(unique.values())


KINDS = ("static", "gated", "routed")
KIND_MARKERS = {"static": "o", "gated": "^", "routed": "s"}


def kind_of(record: dict[str, Any]) -> str:
    """``"static"``, ``"gated"`` or ``"routed"``: what kind of sub-network a record's config is."""
    config = record["config"]
    return "gated" if config.get("gate_thresholds") else "routed" if config.get("route_thresholds") else "static"


def is_candidate(record: dict[str, Any]) -> bool:
    return record.get("accuracy") is not None and all(v <= 0 for v in record.get("violations", {}).values())


def latency_at(record: dict[str, Any], batch: str) -> float | None:
    """Seconds of ``record`` at batch ``batch`` ("1", "256"), or None if it was not timed there."""
    entry = (record.get("latency_by_batch") or {}).get(batch)
    if entry is None and record.get("latency") and str(record["latency"].get("batch_size")) == batch:
        entry = record["latency"]
    return None if entry is None else float(entry["seconds"])


def cost_of(record: dict[str, Any], objective: str, *, batch: str | None = None) -> float:
    if objective != "latency":
        return float(record["effective_flops"])
    if batch is None:
        return float(record["latency"]["seconds"])
    seconds = latency_at(record, batch)
    return float("inf") if seconds is None else seconds


def batch_sizes(records: Sequence[dict[str, Any]]) -> list[str]:
    """The batches the scored records were timed at, ascending ("1", "256")."""
    return sorted({size for r in records if is_candidate(r) for size in (r.get("latency_by_batch") or {})}, key=int)


def fronts_by_batch(records: Sequence[dict[str, Any]], objective: str) -> dict[str, list[dict[str, Any]]]:
    """With a latency objective and records timed at several batches: the front at each, else ``{}``."""
    sizes = batch_sizes(records)
    if objective != "latency" or len(sizes) < 2:
        return {}
    return {size: pareto_front(records, objective, batch=size) for size in sizes}


def best_record(records: Sequence[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    """The best-scoring feasible record (:func:`objective_value`; ties: the cheaper)."""
    candidates = [r for r in records if is_candidate(r)]
    return min(candidates, key=lambda r: (-objective_value(r), cost_of(r, objective)), default=None)


def write_outputs(
    out_dir: Path,
    records: Sequence[dict[str, Any]],
    *,
    objective: str,
    budgets: dict[str, float],
    meta: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Write pareto.json/.csv/.png and best.json; return the front and the best record."""
    front = pareto_front(records, objective)
    best = best_record(records, objective)
    by_batch = fronts_by_batch(records, objective)
    header = {**meta, "objective": objective, "budgets": budgets, "flop_convention": FLOP_CONVENTION}
    notes = [note for note in map(gate_speed_note, front) if note]
    batches = {"latency_batch_sizes": [int(size) for size in batch_sizes(records)],
               "fronts_by_batch": {size: [{"trial": r["trial"], "accuracy": r["accuracy"], "score": objective_value(r),
                                           "latency_s": latency_at(r, size)} for r in members]
                                   for size, members in by_batch.items()}}
    atomic_write_text(out_dir / "pareto.json", json.dumps({**header, **batches, "gate_latency_notes": notes,
                                                           "front": front}, indent=2))
    atomic_write_text(out_dir / "pareto.csv", _csv(front, by_batch))
    if best is not None:
        atomic_write_text(out_dir / "best.json", json.dumps({**header, **best}, indent=2))
    _plot(out_dir / "pareto.png", records, front, objective=objective, budgets=budgets, title=str(meta.get("study", "")),
          batch_fronts=by_batch, references=meta.get("references") or {})
    return front, best


def gate_speed_note(record: dict[str, Any], *, label: str | None = None) -> str | None:
    """What the gates (or routers) of a scored record did to its latency at each batch measured, or None.

    Gated networks run gathered only eager at batch 1 (only the kept channels are computed); on every
    other runtime and batch they run masked (every channel computed, then zeroed), so a gated candidate
    can only be as fast as its widths without gates. It is scored at its measured latency, never at what
    its effective FLOPs promise; a batch where it is no faster than the same widths without gates is
    called out. A routed network is set beside its widest route, the static network of its widths.
    """
    timed, static = record.get("latency_by_batch"), record.get("static_latency_by_batch")
    if not timed or not static:
        return None
    routed = bool((record.get("config") or {}).get("route_thresholds"))
    parts, slower = [], []
    for size in sorted(timed, key=int):
        if size not in static:
            continue
        measured, without = timed[size]["seconds"], static[size]["seconds"]
        runtime = timed[size].get("runtime")
        mode = "" if routed else ", " + (timed[size].get("gate_mode") or ("gathered" if size == "1" else "masked"))
        parts.append(f"batch {size} ({runtime or 'eager'}{mode}) {measured * 1e3:.3f} ms vs {without * 1e3:.3f} ms "
                     f"{'at its widest route' if routed else 'without gates'} ({measured / without:.2f}x)")
        if measured >= without:
            slower.append(size)
    what = "routed" if routed else "gates on"
    note = f"{label or 'trial ' + str(record.get('trial', '?'))}, {what}: " + "; ".join(parts)
    if slower and routed:
        note += (f" -- no faster than its widest route at batch {', '.join(slower)}: its inputs took wide routes, or "
                 "the routers cost more than the narrow routes save; scored at its measured latency")
    elif slower:
        note += (f" -- no faster than static width at batch {', '.join(slower)}; scored at its measured latency. Gates "
                 "can save time only gathered (eager, batch 1: each gated block then pays a weight gather and a host "
                 "sync); masked, every channel is computed")
    return note


def _seconds(by_batch: dict[str, Any] | None, size: str) -> Any:
    entry = (by_batch or {}).get(size)
    return entry["seconds"] if entry else ""


def _csv(front: Sequence[dict[str, Any]], by_batch: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """One row per member of the front, and of the front at each other batch (``on_front_at_batch`` says which)."""
    by_batch = by_batch or {}
    rows: dict[int, dict[str, Any]] = {r["trial"]: r for r in front}
    for members in by_batch.values():
        for r in members:
            rows.setdefault(r["trial"], r)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "accuracy", "flops", "effective_flops", "params", "latency_s", "latency_device",
                     "latency_runtime", "latency_dtype", "latency_batch_size", "latency_batch1_s", "static_latency_s",
                     "static_latency_batch1_s", "gated", "on_front_at_batch", "kind", "config"])
    on_front = {trial: [size for size, members in by_batch.items() if any(m["trial"] == trial for m in members)]
                for trial in rows}
    for r in sorted(rows.values(), key=lambda r: (r not in front, r["trial"])):
        latency = r.get("latency") or {}
        size = str(latency.get("batch_size", ""))
        writer.writerow([r["trial"], f"{r['accuracy']:.6f}", r["flops"], f"{r['effective_flops']:.0f}", r["params"],
                         latency.get("seconds", ""), latency.get("device", ""), latency.get("runtime", ""),
                         latency.get("dtype", ""), latency.get("batch_size", ""),
                         _seconds(r.get("latency_by_batch"), "1"), _seconds(r.get("static_latency_by_batch"), size),
                         _seconds(r.get("static_latency_by_batch"), "1"),
                         r["config"]["gate_thresholds"] is not None, " ".join(on_front[r["trial"]]), kind_of(r),
                         json.dumps(r["config"], sort_keys=True)])
    return buffer.getvalue()


LOG_SPAN = 30.0  # points spanning more than this factor in cost get a log x axis
MARGIN = 0.06  # of the data's span (linear) or of its log-span (log), either side


@dataclass(frozen=True)
class CostAxis:
    """How the cost axis of ``pareto.png`` is drawn: from the data, not from the budget.

    ``limits`` are in the plotted unit; ``budget_shown`` says whether the budget line falls inside
    them (else ``note`` says where it lies, for the title).
    """

    log: bool
    limits: tuple[float, float]
    budget_shown: bool
    note: str | None


def cost_axis(costs: Sequence[float], budget: float | None, *, budget_text: str = "") -> CostAxis:
    """The x axis for points at ``costs`` (> 0, plotted unit) and an optional ``budget`` (same unit).

    The axis covers the points with a margin; it is logarithmic when they span more than
    :data:`LOG_SPAN` x. A budget inside that range is drawn; one outside is only named in the title,
    so a 1 GFLOP budget cannot squeeze points below 35 MFLOPs into the left edge.
    """
    positive = [c for c in costs if c > 0 and math.isfinite(c)]
    if not positive:
        low = high = budget if budget is not None else 1.0
    else:
        low, high = min(positive), max(positive)
    log = high / low > LOG_SPAN
    if log:
        pad = (math.log10(high) - math.log10(low)) * MARGIN or 0.05
        limits = (10 ** (math.log10(low) - pad), 10 ** (math.log10(high) + pad))
    else:
        pad = (high - low) * MARGIN or high * 0.05
        limits = (max(low - pad, 0.0), high + pad)
    shown = budget is not None and limits[0] <= budget <= limits[1]
    note = None
    if budget is not None and not shown:
        where = "above" if budget > limits[1] else "below"
        note = f"budget {budget_text or budget} lies {where} every point"
    return CostAxis(log=log, limits=limits, budget_shown=shown, note=note)


def _plot(path: Path, records: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], *, objective: str,
          budgets: dict[str, float], title: str, batch_fronts: dict[str, list[dict[str, Any]]] | None = None,
          references: dict[str, float] | None = None) -> CostAxis:
    """``pareto.png``: one panel, or with ``batch_fronts`` one per batch (accuracy vs latency at that batch, its
    own front; the budget drawn at the objective's batch). Returns the objective's panel's cost axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objective_batch = next((str(r["latency"]["batch_size"]) for r in front if r.get("latency")), None)
    panels: list[tuple[str | None, Sequence[dict[str, Any]]]] = (
        list(batch_fronts.items()) if batch_fronts else [(None, front)])
    figure, grid = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    drawn: dict[str | None, CostAxis] = {}
    try:
        for axes, (batch, members) in zip(grid[0], panels):
            here = batch is None or batch == objective_batch
            drawn[batch] = _panel(axes, records, members, objective=objective, batch=batch,
                                  budgets=budgets if here else {}, references=references or {},
                                  title=title if batch is None else f"{title} -- batch {batch}")
        figure.tight_layout()
        atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=120))
    finally:
        plt.close(figure)
    return drawn.get(None) or drawn.get(objective_batch) or next(iter(drawn.values()))


REFERENCE_LINES = {"raw_pixels": ("raw pixels", ":"), "untrained_full": ("untrained full network", "-.")}


def _panel(axes: Any, records: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], *, objective: str,
           batch: str | None, budgets: dict[str, float], title: str, references: dict[str, float]) -> CostAxis:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    scale, unit = (1e3, "latency (ms)") if objective == "latency" else (1e-6, "FLOPs (M, fvcore: 1 multiply-add = 1 flop)")
    if batch is not None:
        unit = f"latency at batch {batch} (ms)"
    cost = lambda r: cost_of(r, objective, batch=batch) * scale  # noqa: E731
    evaluated = [r for r in records if r.get("accuracy") is not None and math.isfinite(cost(r))]
    infeasible = [r for r in records if r.get("accuracy") is None and (r.get("latency") or objective == "flops")
                  and (batch is None or latency_at(r, batch) is not None)]
    budget = budgets.get(objective)
    budget_text = format_cost(objective, budget) if budget is not None else ""  # type: ignore[arg-type]
    axis = cost_axis([cost(r) for r in (*evaluated, *infeasible)], budget * scale if budget is not None else None,
                     budget_text=budget_text)
    for kind in KINDS:
        members = [r for r in evaluated if kind_of(r) == kind]
        if members:
            axes.scatter([cost(r) for r in members], [r["accuracy"] * 100 for r in members], s=16, alpha=0.6,
                         marker=KIND_MARKERS[kind], c={"static": "tab:blue", "gated": "tab:orange", "routed": "tab:green"}[kind],
                         label=f"{kind} ({len(members)})")
    if infeasible:
        # over budget, never scored: drawn at the bottom of the accuracy range
        floor = min((r["accuracy"] * 100 for r in evaluated), default=0.0)
        axes.scatter([cost(r) for r in infeasible], [floor] * len(infeasible), marker="x",
                     s=14, c="tab:gray", label="over budget (not scored)")
    ranked_by = score_label(evaluated)
    if front:
        by_top1 = ranked_by.startswith("kNN top-1")
        axes.plot([cost(r) for r in front], [r["accuracy"] * 100 for r in front], "-", c="tab:red",
                  label="Pareto front" if by_top1 else f"Pareto front by {ranked_by[14:]}",
                  drawstyle="steps-post" if by_top1 else "default")
        for kind in KINDS:
            on_front = [r for r in front if kind_of(r) == kind]
            if on_front:
                axes.scatter([cost(r) for r in on_front], [r["accuracy"] * 100 for r in on_front], s=40, zorder=3,
                             marker=KIND_MARKERS[kind], facecolors="none", edgecolors="tab:red")
    for key, (label, style) in REFERENCE_LINES.items():
        if key in references:
            axes.axhline(references[key] * 100, ls=style, c="dimgray", lw=1,
                         label=f"{label} {references[key]:.1%}")
    if axis.budget_shown:
        axes.axvline(budget * scale, ls="--", c="black", label=f"budget {budget_text}")  # type: ignore[operator]
    if axis.log:
        axes.set_xscale("log")
        # plain numbers at 1, 2, 5 x 10^k; unlabelled minor ticks (matplotlib's defaults print "3x10^0" on both)
        axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlim(*axis.limits)
    axes.set_xlabel(unit + (", log scale" if axis.log else ""))
    axes.set_ylabel("kNN top-1 (%)")
    axes.set_title(title if axis.note is None else f"{title}\n({axis.note})", fontsize=10)
    axes.grid(alpha=0.3, which="both" if axis.log else "major")
    axes.legend(loc="best", fontsize=8)
    return axis
