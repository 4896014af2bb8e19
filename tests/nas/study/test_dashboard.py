"""optuna-dashboard reads a search's study from its journal file, as the README tells users to."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from nas.study.pareto import objective_value
from nas.study.run import search
from nas.study.storage import journal_storage

dashboard = pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install slimnas[dashboard])")


def _get(app: Any, path: str, query: str = "") -> Any:
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET",
                               "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda code, headers, *rest: status.append(code)))
    assert status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)


def test_dashboard_lists_the_study_and_its_trials(tiny_checkpoint: Path, make_request, tmp_path: Path):
    summary = search(make_request(tiny_checkpoint, tmp_path / "run", trials=3))
    app = dashboard.wsgi(journal_storage(tmp_path / "run" / "study.journal"))

    studies = _get(app, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [summary.study]
    assert studies[0]["directions"] == ["maximize", "minimize"]

    detail = _get(app, f"/api/studies/{studies[0]['study_id']}", "after=0")
    assert len(detail["trials"]) == len(summary.records) == 3
    shown = {trial["number"]: trial["values"] for trial in detail["trials"]}
    for record in summary.records:  # the dashboard shows the values the search wrote
        value, cost = shown[record["trial"]]
        # the search ranks by the oracle's score; an over-budget candidate is never scored and reports -inf
        assert float(value) == (pytest.approx(objective_value(record)) if record["accuracy"] is not None else float("-inf"))
        assert cost == pytest.approx(record["effective_flops"])
