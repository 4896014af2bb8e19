"""Where the sub-network to export comes from: a search result, a config file, or a study's trial."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from nas.study.storage import journal_storage
from search_spaces import ConfigError, SubnetConfig, UserError, first_line
from supernet.nn.models import SuperNet

__all__ = ["ExportError", "ExportSource", "check_fits", "load_study", "read_json", "source_from_best",
           "source_from_config", "source_from_trial"]


class ExportError(UserError):
    """An export input the user can fix (a missing file, an unknown trial); one line naming it."""


@dataclass(frozen=True)
class ExportSource:
    """A config to export, the checkpoint its source names (if any), and where it came from."""

    config: SubnetConfig
    checkpoint: Path | None
    origin: dict[str, Any]


def source_from_best(path: Path) -> ExportSource:
    """A search output (``best.json``, or any record with ``config`` and ``checkpoint``)."""
    record = read_json(path, "--from", expected="a best.json written by nas.search")
    if not isinstance(record, dict) or "config" not in record:
        raise ExportError(f"--from: {path} has no \"config\"; expected a best.json written by nas.search")
    cfg = config_from(record["config"], str(path))
    checkpoint = record.get("checkpoint")
    return ExportSource(cfg, Path(checkpoint) if checkpoint else None, {"kind": "search_result", "path": str(path)})


def source_from_config(path: Path) -> ExportSource:
    """A :class:`SubnetConfig` JSON file, or a record holding one under ``"config"`` (``nas.search``'s
    ``best.json``); the checkpoint comes from elsewhere."""
    data = SubnetConfig.unwrap(read_json(path, "--config", expected="a SubnetConfig JSON file"))
    return ExportSource(config_from(data, str(path)), None, {"kind": "config", "path": str(path)})


def source_from_trial(number: int, storage: str, study_name: str | None) -> ExportSource:
    """Trial ``number`` of a search study (journal file or database URL)."""
    study = load_study(storage, study_name)
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        numbers = [t.number for t in study.get_trials(deepcopy=False)]
        held = f"its trials are {min(numbers)}..{max(numbers)}" if numbers else "it has no trials"
        raise ExportError(f"--trial: study {study.study_name!r} has no trial {number}; {held}")
    result = trial.user_attrs.get("result")
    if not isinstance(result, dict) or "config" not in result:
        raise ExportError(f"--trial: trial {number} of study {study.study_name!r} is {trial.state.name} and has no "
                          "result; pick a COMPLETE trial (see pareto.csv)")
    checkpoint = (study.user_attrs.get("identity") or {}).get("checkpoint")
    origin = {"kind": "trial", "number": number, "study": study.study_name, "storage": storage}
    return ExportSource(config_from(result["config"], f"trial {number}"), Path(checkpoint) if checkpoint else None, origin)


def load_study(storage: str, study_name: str | None) -> optuna.Study:
    """A search study from a URL (``postgresql://...``, ``sqlite:///...``) or a journal file path."""
    if "://" in storage:
        backend: Any = storage
    elif Path(storage).is_file():
        backend = journal_storage(Path(storage))
    else:
        raise ExportError(f"--storage: {storage} does not exist; expected the study.journal of a search run or a "
                          "database URL")
    try:
        names = optuna.get_all_study_names(storage=backend)
    except Exception as error:  # noqa: BLE001 - a database that refuses, a file that is not a journal
        raise ExportError(f"--storage: cannot read studies from {storage} ({first_line(error, limit=160)})") from None
    if study_name is None:
        if len(names) != 1:
            raise ExportError(f"--study-name: {storage} holds {len(names)} studies; name one of: {', '.join(names) or '-'}")
        study_name = names[0]
    if study_name not in names:
        raise ExportError(f"--study-name: no study {study_name!r} in {storage}; it holds: {', '.join(names) or '-'}")
    return optuna.load_study(study_name=study_name, storage=backend)


def read_json(path: Path, option: str, *, expected: str) -> Any:
    if not path.is_file():
        raise ExportError(f"{option}: {path} does not exist; expected {expected}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{option}: {path} is not valid JSON ({error}); expected {expected}") from None


def config_from(data: Any, where: str) -> SubnetConfig:
    try:
        return SubnetConfig.from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def check_fits(cfg: SubnetConfig, supernet: SuperNet, *, where: str, checkpoint: Path) -> None:
    """Refuse a config that is not a sub-network of ``supernet`` (``where`` names its source)."""
    try:
        supernet.space.validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    if cfg.gated and not supernet.with_gates:
        raise ConfigError(f"{where}: gate_thresholds: the supernet in {checkpoint} was trained without gates; "
                          "use gate_thresholds null")
